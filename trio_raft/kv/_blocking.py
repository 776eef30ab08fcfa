"""A blocking client for programs that do not run trio: scripts, web frameworks, notebooks.

It runs a :class:`KVClient` on a trio event loop in a daemon thread of its own and forwards each
call to it with :func:`trio.from_thread.run`, so the caller's thread simply blocks until the
answer. One client may be used from several threads at once (calls then run concurrently on
its loop, as they would on a :class:`KVClient`). Do not call it from inside a trio task: that
would block the task's event loop; use :func:`open_client` there.
"""

from __future__ import annotations

import builtins
import threading
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any, Literal, TypeVar, final

import trio

from ._client import USE_CLIENT_DEFAULT, KVClient, Timeout, open_client
from ._protocol import ClientClosedError, Consistency

T = TypeVar("T")

STOP_TIMEOUT_S = 5.0
"""How long :meth:`BlockingKVClient.close` waits for the client's thread to finish."""


@final
class BlockingKVClient:
    """The methods of :class:`KVClient`, blocking. Create one with :func:`open_blocking_client`."""

    def __init__(self, urls: Sequence[str], options: dict[str, Any]) -> None:
        self._urls = urls
        self._options = options
        self._started = threading.Event()
        self._failure: BaseException | None = None
        self._client: KVClient | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._thread = threading.Thread(
            target=self._thread_main, name="trio-raft blocking client", daemon=True
        )

    def _start(self) -> None:
        self._thread.start()
        self._started.wait()
        if self._failure is not None:
            raise self._failure

    def _thread_main(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as exc:  # reported to the caller of _start, or lost at exit
            self._failure = exc
        finally:
            self._client = None
            self._started.set()

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._stop = trio.Event()
        async with open_client(self._urls, **self._options) as client:
            self._client = client
            self._started.set()
            await self._stop.wait()

    def run(self, fn: Callable[[KVClient], Awaitable[T]]) -> T:
        """Run ``fn(client)`` on the client's event loop and return its result: for the
        methods of :class:`KVClient` that have no blocking twin here, e.g.
        ``kv.run(lambda c: c.promote("n4"))``.

        Raises:
            ClientClosedError: the client was closed.
            Exception: whatever ``fn`` raised.
        """
        client, token = self._client, self._token
        if client is None or token is None:
            raise ClientClosedError("this blocking client is closed; open a new one")

        async def call() -> T:
            return await fn(client)

        try:
            return trio.from_thread.run(call, trio_token=token)
        except trio.RunFinishedError:
            raise ClientClosedError("this blocking client is closed; open a new one") from None

    def get(
        self,
        key: str,
        *,
        consistency: Literal["linearizable", "stale"] = "linearizable",
        timeout_s: Timeout = USE_CLIENT_DEFAULT,
    ) -> bytes | None:
        """:meth:`KVClient.get`, blocking."""
        return self.run(lambda c: c.get(key, consistency=consistency, timeout_s=timeout_s))

    def list(
        self,
        prefix: str = "",
        *,
        limit: int = 100,
        start_after: str | None = None,
        consistency: Literal["linearizable", "stale"] = "linearizable",
        timeout_s: Timeout = USE_CLIENT_DEFAULT,
    ) -> builtins.list[str]:
        """:meth:`KVClient.list`, blocking."""
        return self.run(
            lambda c: c.list(
                prefix, limit=limit, start_after=start_after, consistency=consistency,
                timeout_s=timeout_s,
            )
        )  # fmt: skip

    def put(self, key: str, value: bytes | str, *, timeout_s: Timeout = USE_CLIENT_DEFAULT) -> None:
        """:meth:`KVClient.put`, blocking."""
        return self.run(lambda c: c.put(key, value, timeout_s=timeout_s))

    def delete(self, key: str, *, timeout_s: Timeout = USE_CLIENT_DEFAULT) -> bool:
        """:meth:`KVClient.delete`, blocking."""
        return self.run(lambda c: c.delete(key, timeout_s=timeout_s))

    def cas(
        self,
        key: str,
        expected: bytes | str | None,
        new: bytes | str | None,
        *,
        timeout_s: Timeout = USE_CLIENT_DEFAULT,
    ) -> bool:
        """:meth:`KVClient.cas`, blocking."""
        return self.run(lambda c: c.cas(key, expected, new, timeout_s=timeout_s))

    def call(self, command: object, *, timeout_s: Timeout = USE_CLIENT_DEFAULT) -> object:
        """:meth:`KVClient.call`, blocking."""
        return self.run(lambda c: c.call(command, timeout_s=timeout_s))

    def query(
        self,
        query: object,
        *,
        consistency: Consistency = "linearizable",
        timeout_s: Timeout = USE_CLIENT_DEFAULT,
    ) -> object:
        """:meth:`KVClient.query`, blocking."""
        return self.run(lambda c: c.query(query, consistency=consistency, timeout_s=timeout_s))

    def status(self, *, timeout_s: Timeout = USE_CLIENT_DEFAULT) -> dict[str, object]:
        """:meth:`KVClient.status`, blocking."""
        return self.run(lambda c: c.status(timeout_s=timeout_s))

    def members(self, *, timeout_s: Timeout = USE_CLIENT_DEFAULT) -> dict[str, object]:
        """:meth:`KVClient.members`, blocking."""
        return self.run(lambda c: c.members(timeout_s=timeout_s))

    def close(self) -> None:
        """Close the connection and stop the client's thread (idempotent). Calls still
        running in other threads fail with :exc:`ClientClosedError`."""
        stop, token = self._stop, self._token
        if stop is not None and token is not None and self._thread.is_alive():
            with suppress(trio.RunFinishedError):
                trio.from_thread.run_sync(stop.set, trio_token=token)
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(STOP_TIMEOUT_S)

    def __enter__(self) -> BlockingKVClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@contextmanager
def open_blocking_client(urls: Sequence[str], **options: Any) -> Iterator[BlockingKVClient]:
    """Open a :class:`BlockingKVClient` of the cluster at ``urls``, for the ``with`` block;
    ``options`` are those of :func:`open_client` (``token``, ``timeout_s``, ...)::

        with open_blocking_client(["ws://10.0.0.1:8001/kv"], token=TOKEN) as kv:
            kv.put("greeting", "hello")
            print(kv.get("greeting"))

    Raises:
        ValueError: as :func:`open_client` (a bad URL, a bound < 1).
    """
    urls = [urls] if isinstance(urls, str) else list(urls)
    client = BlockingKVClient(urls, options)
    client._start()
    try:
        yield client
    finally:
        client.close()
