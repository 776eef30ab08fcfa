"""The Python client of the KV service: :func:`open_client` and :class:`KVClient`.

A client keeps one WebSocket connection (a *link*), to the leader once it has found it::

    open_client ─ nursery
      └── link task: TCP (+TLS) ─ WebSocket ─ hello ─ route responses to callers by id
    (calls run in the caller's tasks: send a request, wait for its response)

A call retries until it gets an answer or its timeout expires: on ``not_leader`` it follows
the hint (or tries the next URL); on a lost connection, ``outcome_unknown``, ``dropped`` or
``unavailable`` it backs off (exponentially, with jitter from the client's
:class:`random.Random`). A write keeps its session and sequence number through its retries, so
the state machine applies it at most once however often it is sent.

The client follows the cluster's membership: whenever it opens a connection, unless it learned
the membership less than :data:`REFRESH_INTERVAL_S` ago, it asks that node for ``members`` in
the background (one try, no redirect: a follower's refusal leaves it to the next connection)
and from then on dials the members' client URLs first, the URLs it was opened with last.
Every membership result it receives (``members``, ``add_learner`` ...) updates the list.
"""

from __future__ import annotations

import builtins
import enum
import hashlib
import math
import random
import ssl
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from types import NoneType
from typing import Final, Literal, TypeVar, final

import attrs
import trio
from trio_websocket import ConnectionClosed, HandshakeError, WebSocketConnection

from .._sync import Waiter
from .._util import unwrap_single_exception_group
from .._ws import wrap_client_stream_fast
from . import _protocol as p
from ._strict import describe

DEFAULT_TIMEOUT_S: Final = 5.0
"""Default time limit of one call, retries included (enough to ride out a leader election)."""
DEFAULT_CONNECT_TIMEOUT_S: Final = 2.0
"""Default time limit of one connection attempt (TCP, TLS, WebSocket handshake and hello)."""
DEFAULT_MAX_CONCURRENT_REQUESTS: Final = 64
"""Requests a client has in flight at once (the server's default per-connection bound)."""
BACKOFF_S_MIN: Final = 0.02
"""First pause between retries; it doubles on each failure, up to ``BACKOFF_S_MAX``."""
BACKOFF_S_MAX: Final = 1.0
"""Longest pause between retries."""
ELECTION_PAUSE_S: Final = 0.05
"""Longest pause between retries while a live node says there is no leader it can point to
(an election is running, or its hint is the leader that just failed): the cluster is up and
will have a leader within about an election timeout, so the client polls at a steady pace
rather than backing off exponentially, and a write lands soon after the election ends."""
FREE_HOPS: Final = 3
"""Leader hints a call follows at once; past that it backs off between hops (a hint loop)."""
CLOSE_TIMEOUT_S: Final = 1.0
"""How long closing a connection waits for the server's closing handshake."""
MAX_FAILED_URLS: Final = 64
"""URLs remembered as unreachable (their last connection attempt failed): a leader hint
pointing at one is ignored in favour of the other members."""
REFRESH_INTERVAL_S: Final = 10.0
"""Least time between two background refreshes of the members' URLs (each new connection
triggers one once this has passed since the last)."""

T = TypeVar("T")


@final
class UseClientDefault(enum.Enum):
    """The type of :data:`USE_CLIENT_DEFAULT` (a single-member enum, so it types well)."""

    USE_CLIENT_DEFAULT = "the client's timeout_s"


USE_CLIENT_DEFAULT: Final = UseClientDefault.USE_CLIENT_DEFAULT
"""A call's ``timeout_s=USE_CLIENT_DEFAULT`` (its default) means: the ``timeout_s`` given to
:func:`open_client`. Pass a number of seconds to override it, or ``None`` to disable it."""

Timeout = float | UseClientDefault | None


class _LinkLost(Exception):
    def __init__(self, reason: str, *, sent: bool) -> None:
        super().__init__(reason)
        self.sent = sent  # the request may have reached the server


class _ConnectFailed(Exception):
    pass


class _Link:
    """One connection: requests out, responses routed back to their callers by id."""

    def __init__(self, ws: WebSocketConnection, url: str) -> None:
        self.ws, self.url = ws, url
        self.dead = False
        self.closing = trio.Event()
        self._reason = "closed"
        self._pending: dict[int, Waiter[p.Response]] = {}

    async def request(self, request_id: int, request: p.Request) -> p.Response:
        if self.dead:
            raise _LinkLost(self._reason, sent=False)
        waiter: Waiter[p.Response] = Waiter()
        self._pending[request_id] = waiter
        try:
            try:
                await self.ws.send_message(p.encode_request(request_id, request))
            except ConnectionClosed as exc:
                self.die(f"connection closed ({exc.reason})")
                raise _LinkLost(self._reason, sent=True) from None
            return await waiter.wait()
        finally:
            self._pending.pop(request_id, None)

    async def read_loop(self) -> None:
        while True:
            try:
                response = p.decode_response(await self.ws.get_message())
            except ConnectionClosed as exc:
                return self.die(f"connection closed ({exc.reason})")
            except p.FrameError as exc:
                return self.die(f"invalid response: {exc}")
            waiter = self._pending.pop(response.id, None)
            if waiter is not None:  # else its caller gave up (was cancelled) meanwhile
                waiter.set(response)

    def die(self, reason: str) -> None:
        if not self.dead:
            self.dead, self._reason = True, reason
        for waiter in self._pending.values():
            waiter.fail(_LinkLost(self._reason, sent=True))
        self._pending.clear()
        self.closing.set()


@attrs.define
class _Attempts:
    """What one call has been through, for its backoff and its error messages."""

    what: str
    failures: int = 0
    hops: int = 0
    misses: int = 0
    last_error: str = "no answer yet"
    uncertain: bool = False  # a write attempt may have been applied
    in_flight: bool = False
    membership: bool = False  # a membership op: an old server does not know it
    at_most_once: bool = False  # a call: never resent once it may have been appended
    electing: bool = False  # a live node knew no leader to point to: pause briefly
    links_lost: int = 0  # connections lost under this call


@final
class KVClient:
    """A client of a KV cluster; create it with :func:`open_client`.

    Calls may run concurrently from many tasks. Reads proceed in parallel; writes go one at a
    time, since exactly-once needs at most one write in flight per session (for parallel
    writes, open several clients). Keys are :class:`str`, values :class:`bytes` (a
    :class:`str` value is encoded as UTF-8).

    Every call takes ``timeout_s``: seconds for the whole call, retries included; ``None``
    disables it (the call then retries until it succeeds or is cancelled); the default is the
    client's. Cancelling a call abandons it: a write may still be applied (at most once).

    Every call may raise :exc:`KVTimeoutError` (no answer in time; for a write, the outcome is
    unknown), :exc:`KVRequestError` (invalid arguments; nothing happened),
    :exc:`KVAuthError` (token refused), :exc:`KVServerError` (a server bug) and
    :exc:`ClientClosedError`; writes also :exc:`SessionExpiredError`.
    """

    def __init__(
        self,
        urls: Sequence[str],
        *,
        nursery: trio.Nursery,
        token: str | None,
        timeout_s: float | None,
        connect_timeout_s: float,
        rng: random.Random,
        ssl_context: ssl.SSLContext | None,
        max_concurrent_requests: int,
    ) -> None:
        self._urls, self._nursery, self._token = tuple(urls), nursery, token
        self._learned: tuple[str, ...] = ()  # members' client URLs, from the last membership
        self._refresh_at = -math.inf  # when a new connection may refresh them
        self._refreshing = False
        self._timeout_s, self._connect_timeout_s = timeout_s, connect_timeout_s
        self._rng, self._ssl_context = rng, ssl_context
        self._slots = trio.Semaphore(max_concurrent_requests)
        self._link: _Link | None = None
        self._hint: str | None = None
        self._failed_urls: dict[str, None] = {}
        """URLs whose last connection failed or was lost, oldest first (a set with order)."""
        self._next_url = self._next_id = 0
        self._connect_lock, self._write_lock = trio.Lock(), trio.Lock()
        self._closed = False
        self._session, self._seq, self._session_open = b"", 0, False
        self._new_session()

    @property
    def session_id(self) -> bytes:
        """The current session's id (16 random bytes from the client's rng)."""
        return self._session

    @property
    def url(self) -> str | None:
        """The URL of the node the client is connected to, if any (the leader, usually)."""
        link = self._link
        return None if link is None or link.dead else link.url

    async def get(
        self,
        key: str,
        *,
        consistency: Literal["linearizable", "stale"] = "linearizable",
        timeout_s: Timeout = USE_CLIENT_DEFAULT,
    ) -> bytes | None:
        """Read the value of ``key``.

        Args:
            key: The key.
            consistency: ``"linearizable"`` (the default) reflects every write acknowledged
                before the call began (the leader confirms its leadership first).
                ``"stale"`` answers from the connected node's state at once, which may lag.
            timeout_s: See the class documentation.

        Returns:
            The value, or ``None`` if the key is absent.
        """
        with _invalid_arguments():
            request = p.Get(key=key, consistency=consistency)
        result = await self._read(request, f"get {key!r}", timeout_s)
        return _expect(result, (bytes, NoneType), "get")

    async def list(
        self,
        prefix: str = "",
        *,
        limit: int = p.DEFAULT_LIST_LIMIT,
        start_after: str | None = None,
        consistency: Literal["linearizable", "stale"] = "linearizable",
        timeout_s: Timeout = USE_CLIENT_DEFAULT,
    ) -> builtins.list[str]:
        """List the keys that start with ``prefix``, in order (by code point).

        Page through many keys by passing the last key of a page as the next ``start_after``.

        Args:
            prefix: Only keys starting with it ("" for every key).
            limit: At most this many keys, 1 to :data:`MAX_LIST_LIMIT`.
            start_after: Only keys greater than this one.
            consistency: As for :meth:`get`.
            timeout_s: See the class documentation.

        Returns:
            At most ``limit`` keys.
        """
        with _invalid_arguments():
            request = p.ListKeys(
                prefix=prefix, limit=limit, start_after=start_after, consistency=consistency
            )
        keys = _expect(await self._read(request, f"list {prefix!r}", timeout_s), (list,), "list")
        if not all(type(k) is str for k in keys):
            raise p.KVServerError(f"the server answered a list with non-str keys: {describe(keys)}")
        return keys

    async def put(
        self, key: str, value: bytes | str, *, timeout_s: Timeout = USE_CLIENT_DEFAULT
    ) -> None:
        """Set ``key`` to ``value``, exactly once (however many times the client retries).

        Args:
            key: The key.
            value: The value; a :class:`str` is stored as UTF-8.
            timeout_s: See the class documentation. On :exc:`KVTimeoutError` the put may or
                may not have happened (the message says whether any attempt was sent).
        """
        with _invalid_arguments():
            request = p.Put(session=self._session, seq=1, key=key, value=_encode(value))
        await self._write(request, f"put {key!r}", timeout_s)

    async def delete(self, key: str, *, timeout_s: Timeout = USE_CLIENT_DEFAULT) -> bool:
        """Remove ``key``, exactly once.

        Args:
            key: The key.
            timeout_s: See the class documentation.

        Returns:
            Whether the key existed (as the first application of the delete saw it, even if
            the answer comes from a retry).
        """
        with _invalid_arguments():
            request = p.Delete(session=self._session, seq=1, key=key)
        return _expect(await self._write(request, f"delete {key!r}", timeout_s), (bool,), "delete")

    async def cas(
        self,
        key: str,
        expected: bytes | str | None,
        new: bytes | str | None,
        *,
        timeout_s: Timeout = USE_CLIENT_DEFAULT,
    ) -> bool:
        """Compare and swap, exactly once: set ``key`` to ``new`` iff its value is ``expected``.

        ``None`` means "absent" on both sides: ``cas(k, None, v)`` creates ``k`` only if it does
        not exist; ``cas(k, v, None)`` deletes it only if its value is ``v``.

        Args:
            key: The key.
            expected: The value the key must have (a :class:`str` is compared as UTF-8).
            new: The value to set.
            timeout_s: See the class documentation.

        Returns:
            Whether it swapped (as its first application decided, even if the answer comes
            from a retry). If not, read the current value with :meth:`get` and decide again.
        """
        with _invalid_arguments():
            old, data = _encode_optional(expected), _encode_optional(new)
            request = p.Cas(session=self._session, seq=1, key=key, expected=old, new=data)
        return _expect(await self._write(request, f"cas {key!r}", timeout_s), (bool,), "cas")

    async def call(self, command: object, *, timeout_s: Timeout = USE_CLIENT_DEFAULT) -> object:
        """Propose ``command`` to the cluster's state machine, whatever it is (see
        :func:`trio_raft.kv.serve_kv`), and return what its ``apply`` returned.

        At most once: the client follows redirects and retries while the command certainly
        was not appended, but never resends it once it may have been.

        Raises:
            CommandFailedError: the command was applied and ``apply`` raised.
            OutcomeUnknownError: it may or may not have been applied (its
                ``may_have_applied`` is true): query the state before trying again.
            KVTimeoutError: no answer within ``timeout_s`` (``may_have_applied`` tells
                whether it could have been applied).
            KVRequestError: ``command`` is not a value of the command data model, or the
                server refused it.
        """
        with _invalid_arguments():
            request = p.Call(command=command)
        _check_size(request, "call")
        attempts = _Attempts("call", at_most_once=True)
        with trio.move_on_at(self._deadline(timeout_s)):
            return await self._execute(request, attempts)
        maybe = attempts.uncertain or attempts.in_flight
        raise p.KVTimeoutError(
            f"call: no answer in time (last: {attempts.last_error}); "
            + ("it may or may not have been applied" if maybe else "it was not applied"),
            may_have_applied=maybe,
        )

    async def query(
        self,
        query: object,
        *,
        consistency: p.Consistency = "linearizable",
        timeout_s: Timeout = USE_CLIENT_DEFAULT,
    ) -> object:
        """Answer ``query`` with the cluster's state machine (its ``query`` method):
        ``linearizable`` on the leader (ReadIndex), or ``stale`` on whichever node the client
        is connected to.

        Raises:
            KVTimeoutError: no answer within ``timeout_s``.
            KVRequestError: ``query`` is not a value of the command data model, or the state
                machine refused it.
        """
        with _invalid_arguments():
            request = p.Query(query=query, consistency=consistency)
        _check_size(request, "query")
        return await self._read(request, "query", timeout_s)

    async def status(self, *, timeout_s: Timeout = USE_CLIENT_DEFAULT) -> dict[str, object]:
        """The status of the node this client is connected to (see :attr:`url`): its role,
        term, leader, commit and applied indexes, and as leader each follower's progress.
        Answered by that node itself, never redirected.

        Returns:
            A dict with keys ``node``, ``role`` (``"leader"``, ``"follower"``, ``"learner"``
            for a follower that is not a voter, ``"candidate"``, ``"pre-candidate"``),
            ``term``, ``leader``, ``voted_for`` (its vote in ``term``, or ``None``),
            ``commit``, ``applied``, ``last_index``, ``last_term``, ``compacted`` (the last
            index compacted into a snapshot; also under its former name ``log_start``, kept
            for older readers), ``snapshot`` (index of its durable snapshot), ``no_space``,
            ``followers`` (peer -> ``match``, ``next``, ``probing``, ``voter``), and its
            configuration: ``voters``, ``learners``, ``outgoing`` (lists of ids),
            ``config_index`` and ``config_committed``. A server older than membership changes
            leaves out ``voter`` and the configuration keys; one older than ``compacted``
            leaves out that key and ``voted_for``.
        """
        result = await self._read(p.NodeStatus(), "status", timeout_s)
        return _expect(result, (dict,), "status")

    # -- backups -------------------------------------------------------------------------------

    async def snapshot(
        self,
        write: Callable[[int, bytes], Awaitable[object]],
        *,
        timeout_s: Timeout = USE_CLIENT_DEFAULT,
    ) -> dict[str, object]:
        """Download a backup: the leader (the client follows redirects to it) confirms its
        leadership, applies everything committed and takes a snapshot of its state, durably,
        so the backup holds every write acknowledged before the call; it sends it as a
        snapshot file, the format ``trio-raft snapshot restore`` reads.

        ``write(offset, data)`` receives the file's bytes in order, at most 1 MiB at a time,
        ``offset`` being where ``data`` goes in the file. A download cut short (a lost
        connection, a node that stopped) starts over, on the next node if need be: the next
        ``write`` then has ``offset`` 0, and the bytes written so far must be thrown away.
        The whole file's SHA-256 is checked against the node's before this returns.

        The connection needs the admin credential (open the client with the cluster's
        ``admin_token``, or its ``token`` if it has no admin token).

        Args:
            write: Called with each piece, in order (awaited before the next is asked for).
            timeout_s: The limit of the whole download, retries included; see the class
                documentation. A large state needs a longer one than the default.

        Returns:
            What was saved: ``node`` (the id of the node that took the snapshot: the leader),
            ``cluster_id`` (its cluster's, or ``None`` if its server was not told),
            ``index`` and ``term`` (of the last entry the snapshot covers), ``voters`` and
            ``learners`` (the configuration at ``index``), ``size`` (bytes) and ``sha256``
            (hex).

        Raises:
            KVAuthError: the connection lacks the admin credential.
            KVNoSpaceError: the snapshot did not fit on the node's disk.
            KVServerError: the file received does not match the node's checksum.
            KVTimeoutError: it did not complete in time.
        """
        attempts = _Attempts("snapshot")
        with trio.move_on_at(self._deadline(timeout_s)):
            while True:
                link = await self._connected(attempts)
                try:
                    info = await self._download(link, write, attempts)
                except _LinkLost as exc:
                    attempts.last_error = f"{link.url}: {exc}"
                    self._drop(link)
                    info = None
                if info is _FOLLOW:
                    continue
                if info is not None:
                    return info
                await self._backoff(attempts)
        raise p.KVTimeoutError(
            f"snapshot: no complete download in time (last: {attempts.last_error}); check that "
            "the node is up, or raise timeout_s for a large state"
        )

    async def _download(
        self, link: _Link, write: Callable[[int, bytes], Awaitable[object]], attempts: _Attempts
    ) -> dict[str, object] | None:
        """One download over ``link``: its description, or ``None`` to start over (after a
        pause), or :data:`_FOLLOW` to start over at once on the leader it named."""
        offset = 0
        digest = hashlib.sha256()
        first: dict[str, object] | None = None
        while True:
            self._next_id += 1
            request_id = self._next_id  # taken before any checkpoint: ids are never shared
            async with self._slots:
                response = await link.request(request_id, p.FetchSnapshot(offset=offset))
            if isinstance(response, p.Failure):
                attempts.last_error = f"{link.url}: {response.code}: {response.message}"
                hops = attempts.hops
                self._retry_at_once(link, response, attempts)  # raises what cannot be retried
                if attempts.hops > hops:  # following a leader hint
                    return _FOLLOW
                return None
            piece = _snapshot_piece(response.result, offset)
            if first is None:
                first = piece
            elif any(piece[key] != first[key] for key in ("node", "index", "term")):
                raise p.KVServerError(f"snapshot: {link.url} changed snapshots mid-download")
            data = piece["data"]
            assert isinstance(data, bytes)
            await write(offset, data)
            digest.update(data)
            offset += len(data)
            if piece["done"]:
                if piece["size"] != offset or piece["sha256"] != digest.digest():
                    raise p.KVServerError(
                        f"snapshot: the file received from {link.url} does not match the "
                        f"node's SHA-256 ({offset} bytes received, {piece['size']} sent); retry"
                    )
                info = {k: first[k] for k in ("node", "cluster_id", "index", "term")}
                info.update(voters=first["voters"], learners=first["learners"])
                return {**info, "size": offset, "sha256": digest.hexdigest()}

    # -- membership ----------------------------------------------------------------------------
    # The ops are answered by the leader (the client follows redirects) and run without a
    # time limit on the server: the call's timeout_s applies. The admin token is needed for
    # every one but members() if the servers have one (pass it as open_client's token).

    async def members(self, *, timeout_s: Timeout = USE_CLIENT_DEFAULT) -> dict[str, object]:
        """The cluster's configuration, as its leader holds it.

        Returns:
            ``{"index": int, "committed": bool, "leader": id, "voters": {id: address},
            "learners": {id: address}, "outgoing": [id, ...]}``: the log index of the
            configuration's entry and whether it is committed, the leader's id, the voters
            and learners with their addresses (trio-raft's own tools store ``{"peer": URL,
            "client": URL}``), and, while a change of the voters is in progress (joint
            consensus), the voters being left.

        Raises:
            KVRequestError: the server predates membership operations.
        """
        return await self._membership(p.Members(), "members", timeout_s)

    async def add_learner(
        self, node: str, *, peer: str, client: str, timeout_s: Timeout = USE_CLIENT_DEFAULT
    ) -> dict[str, object]:
        """Add ``node`` as a learner (it receives the log but does not vote), or change the
        addresses of a member (a voter stays a voter). Start the node first, in join mode
        (``trio-raft serve --join``, or ``open_node`` with ``members=None``).

        Args:
            node: The node's id.
            peer: Where the other nodes reach it (``ws://host:port/raft``).
            client: Where KV clients reach it (``ws://host:port/kv``).
            timeout_s: See the class documentation.

        Returns:
            The configuration once committed, as :meth:`members` returns it.

        Raises:
            MembershipRefusedError: refused (``change_in_progress``, ``invalid_membership``,
                ...): nothing changed.
            KVTimeoutError: no answer in time: the change may or may not have been made
                (retrying is safe: membership operations are idempotent).
            KVAuthError: the connection lacks the admin token.
        """
        with _invalid_arguments():
            request = p.AddLearner(node=node, peer=peer, client=client)
        return await self._membership(request, f"add_learner {node!r}", timeout_s)

    async def promote(
        self,
        node: str,
        *,
        catch_up_timeout_s: float | None = None,
        timeout_s: Timeout = USE_CLIENT_DEFAULT,
    ) -> dict[str, object]:
        """Make learner ``node`` a voter, once it has caught up with the leader (joint
        consensus; the leader leaves the joint configuration by itself).

        Args:
            node: A learner (a voter: nothing to do).
            catch_up_timeout_s: How long the leader waits for it to catch up (the leader's
                ``Config.catch_up_timeout_s``, 60 s by default, if None).
            timeout_s: See the class documentation; make it longer than the catch-up wait
                (the command line uses ``catch_up_timeout_s`` + 10 s).

        Returns:
            The configuration once committed, as :meth:`members` returns it.

        Raises:
            MembershipRefusedError: ``not_caught_up`` (it stays a learner: check it, retry
                with a longer ``catch_up_timeout_s``, or remove it), or another refusal.
            KVTimeoutError, KVAuthError: as for :meth:`add_learner`.
        """
        with _invalid_arguments():
            request = p.Promote(node=node, catch_up_timeout_s=catch_up_timeout_s)
        return await self._membership(request, f"promote {node!r}", timeout_s)

    async def demote(
        self, node: str, *, timeout_s: Timeout = USE_CLIENT_DEFAULT
    ) -> dict[str, object]:
        """Make voter ``node`` a learner (joint consensus). The leader may demote itself: it
        hands leadership over once the change is committed.

        Returns:
            The configuration once committed, as :meth:`members` returns it.

        Raises:
            MembershipRefusedError, KVTimeoutError, KVAuthError: as for :meth:`add_learner`.
        """
        with _invalid_arguments():
            request = p.Demote(node=node)
        return await self._membership(request, f"demote {node!r}", timeout_s)

    async def remove(
        self, node: str, *, timeout_s: Timeout = USE_CLIENT_DEFAULT
    ) -> dict[str, object]:
        """Remove ``node`` from the cluster (nothing to do if it is not a member). The leader
        may remove itself: it hands leadership over once the change is committed.

        Returns:
            The configuration once committed, as :meth:`members` returns it.

        Raises:
            MembershipRefusedError, KVTimeoutError, KVAuthError: as for :meth:`add_learner`.
        """
        with _invalid_arguments():
            request = p.Remove(node=node)
        return await self._membership(request, f"remove {node!r}", timeout_s)

    async def transfer_leader(
        self, to: str | None = None, *, timeout_s: Timeout = USE_CLIENT_DEFAULT
    ) -> str:
        """Hand leadership to ``to`` (None: the leader picks the most up-to-date voter).

        Writes sent meanwhile are redirected to the new leader (the client retries them).
        If the answer is lost and the client retries, a transfer to ``None`` may move
        leadership once more (harmless); one to a named node does not.

        Returns:
            The id of the node that leads now.

        Raises:
            TransferFailedError: the transfer did not complete.
            MembershipRefusedError: ``invalid_membership`` (``to`` is not a voter, or there is
                no other voter) or ``change_in_progress``.
            KVTimeoutError, KVAuthError: as for :meth:`add_learner`.
        """
        with _invalid_arguments():
            request = p.TransferLeader(to=to)
        result = await self._membership(request, "transfer_leader", timeout_s, shape=_leader)
        leader = result["leader"]
        assert isinstance(leader, str)
        return leader

    async def _membership(
        self,
        request: p.Request,
        what: str,
        timeout_s: Timeout,
        *,
        shape: Callable[[object], dict[str, object] | None] | None = None,
    ) -> dict[str, object]:
        attempts = _Attempts(what, membership=True)
        check = shape or _membership_result
        with trio.move_on_at(self._deadline(timeout_s)):
            answer = await self._execute(request, attempts)
            result = check(answer)
            if result is None:
                raise p.KVServerError(f"the server answered {what} with {describe(answer)}")
            if shape is None:
                self._learn(result)
            return result
        if isinstance(request, p.Members):
            outcome = "raise timeout_s if the cluster is slow or electing"
        else:
            outcome = (
                "the change may or may not have been made; retrying is safe (membership "
                "operations are idempotent): check with members"
            )
            if isinstance(request, p.Promote):
                outcome += ", and give the call a timeout_s longer than catch_up_timeout_s"
        raise p.KVTimeoutError(
            f"{what}: no answer in time (last: {attempts.last_error}); {outcome}",
            may_have_applied=not isinstance(request, p.Members),
        )

    def _learn(self, membership: dict[str, object]) -> None:
        """Dial the client URLs of ``membership``'s voters and learners from now on."""
        urls: list[str] = []
        for group in ("voters", "learners"):
            members = membership[group]
            assert isinstance(members, dict)
            for address in members.values():
                url = p.client_url(address)
                if url is not None and url not in urls:
                    urls.append(url)
        self._learned = tuple(urls)
        self._refresh_at = trio.current_time() + REFRESH_INTERVAL_S

    def _dial_urls(self) -> tuple[str, ...]:
        """The URLs to dial, in turn: the members' learned ones, then those the client was
        opened with (a last resort)."""
        return self._learned + tuple(u for u in self._urls if u not in self._learned)

    async def _refresh(self, link: _Link) -> None:
        """Ask ``link``'s node for ``members`` (once, no redirect) and learn its URLs. Any
        failure is ignored: a follower's ``not_leader`` leaves the next connection (to the
        leader, usually) to try again; anything else (an old server, a lost link, no answer
        within ``connect_timeout_s``) waits :data:`REFRESH_INTERVAL_S`."""
        self._next_id += 1
        request_id = self._next_id  # taken before any checkpoint: ids are never shared
        response: p.Response | None = None
        try:
            with trio.move_on_after(self._connect_timeout_s):
                async with self._slots:
                    response = await link.request(request_id, p.Members())
        except _LinkLost:
            pass
        finally:
            self._refreshing = False
        if isinstance(response, p.Ok):
            result = _membership_result(response.result)
            if result is not None:
                return self._learn(result)
        if not (isinstance(response, p.Failure) and response.code is p.ErrorCode.NOT_LEADER):
            self._refresh_at = trio.current_time() + REFRESH_INTERVAL_S

    # -- calls ---------------------------------------------------------------------------------

    async def _read(self, request: p.Request, what: str, timeout_s: Timeout) -> object:
        attempts = _Attempts(what)
        with trio.move_on_at(self._deadline(timeout_s)):
            return await self._execute(request, attempts)
        raise p.KVTimeoutError(f"{what}: no answer in time (last: {attempts.last_error})")

    async def _write(self, request: p.WriteRequest, what: str, timeout_s: Timeout) -> object:
        attempts = _Attempts(what)
        with trio.move_on_at(self._deadline(timeout_s)):
            async with self._write_lock:
                while True:
                    if not self._session_open:
                        await self._execute(p.OpenSession(session=self._session), attempts)
                        self._session_open = True
                        attempts.uncertain = False  # an open is idempotent: no doubt about it
                    self._seq += 1
                    request = attrs.evolve(request, session=self._session, seq=self._seq)
                    try:
                        return await self._execute(request, attempts)
                    except p.SessionExpiredError as exc:
                        self._new_session()
                        if attempts.uncertain:
                            raise p.SessionExpiredError(
                                f"{what}: {exc}. An earlier attempt of this write may have been "
                                "applied: read the key back before retrying"
                            ) from None
                        # This write was definitely not applied: redo it in the new session.
        maybe = attempts.uncertain or attempts.in_flight
        if maybe:
            outcome = "it may or may not have been applied (at most once): read it back"
        else:
            outcome = "it was not applied"
        raise p.KVTimeoutError(
            f"{what}: no answer in time (last: {attempts.last_error}); {outcome}, or raise "
            "timeout_s if the cluster is slow",
            may_have_applied=maybe,
        )

    async def _execute(self, request: p.Request, attempts: _Attempts) -> object:
        """Send until answered; raise the answer if it is an error no retry can fix."""
        while True:
            link = await self._connected(attempts)
            self._next_id += 1
            request_id = self._next_id  # taken before any checkpoint: ids are never shared
            try:
                async with self._slots:
                    attempts.in_flight = True
                    response = await link.request(request_id, request)
                    attempts.in_flight = False
            except _LinkLost as exc:
                attempts.in_flight = False
                attempts.uncertain |= exc.sent
                attempts.last_error = f"{link.url}: {exc}"
                self._drop(link)
                if attempts.at_most_once and attempts.uncertain:
                    raise p.OutcomeUnknownError(
                        f"{attempts.what}: the connection to {link.url} was lost after the "
                        "command was sent; it may or may not have been applied: query the "
                        "state before trying again"
                    ) from None
                self._failed_urls[link.url] = None
                attempts.links_lost += 1
                if attempts.links_lost > 1:  # the first loss: try the other members at once
                    await self._backoff(attempts)
                continue
            if isinstance(response, p.Ok):
                return response.result
            attempts.last_error = f"{link.url}: {response.code}: {response.message}"
            if self._retry_at_once(link, response, attempts):
                continue
            await self._backoff(attempts)

    def _retry_at_once(self, link: _Link, failure: p.Failure, attempts: _Attempts) -> bool:
        """Prepare the retry of a failed request, or raise what no retry can fix."""
        message = f"{attempts.what}: {failure.message}"
        match failure.code:
            case p.ErrorCode.NOT_LEADER:
                self._drop(link)
                dead = failure.leader is not None and failure.leader in self._failed_urls
                self._hint = None if dead else failure.leader
                if self._hint not in (None, link.url) and attempts.hops < FREE_HOPS:
                    attempts.hops += 1
                    return True  # follow the hint at once
                attempts.electing = True  # no usable hint: the cluster is electing
            case p.ErrorCode.OUTCOME_UNKNOWN:
                attempts.uncertain = True  # retry: the same seq makes it exactly-once
                if attempts.at_most_once:
                    raise p.OutcomeUnknownError(
                        f"{message}; it may or may not have been applied: query the state "
                        "before trying again"
                    )
            case p.ErrorCode.COMMAND_FAILED:
                raise p.CommandFailedError(message)
            case p.ErrorCode.UNAVAILABLE:
                self._drop(link)
            case p.ErrorCode.BAD_REQUEST:
                if attempts.what in ("call", "query") and failure.message.startswith("unknown op"):
                    raise p.KVRequestError(
                        f"{attempts.what}: {link.url} predates the call and query operations; "
                        "upgrade the cluster"
                    )
                if attempts.membership and failure.message.startswith("unknown op"):
                    raise p.KVRequestError(
                        f"{attempts.what}: {link.url} predates membership operations (it "
                        f"answered: {failure.message[:60]}...); upgrade the cluster to a "
                        "trio-raft release with membership changes"
                    )
                raise p.KVRequestError(message)
            case p.ErrorCode.UNAUTHORIZED:
                raise p.KVAuthError(message)
            case p.ErrorCode.SESSION_EXPIRED:
                raise p.SessionExpiredError(message)
            case p.ErrorCode.INTERNAL:
                raise p.KVServerError(message)
            case p.ErrorCode.NO_SPACE:
                raise p.KVNoSpaceError(message)
            case (
                p.ErrorCode.CHANGE_IN_PROGRESS
                | p.ErrorCode.INVALID_MEMBERSHIP
                | p.ErrorCode.NOT_CAUGHT_UP
                | p.ErrorCode.QUORUM_UNAVAILABLE
            ):
                raise p.MembershipRefusedError(message, failure.code)
            case p.ErrorCode.TRANSFER_FAILED:
                raise p.TransferFailedError(message)
        return False  # DROPPED and the above: after a pause

    # -- connections ---------------------------------------------------------------------------

    async def _connected(self, attempts: _Attempts) -> _Link:
        while True:
            if self._closed:
                raise p.ClientClosedError("this KV client is closed; open a new one")
            if self._link is not None and not self._link.dead:
                return self._link
            async with self._connect_lock:
                if self._closed or (self._link is not None and not self._link.dead):
                    continue
                urls = self._dial_urls()
                if self._hint is not None:
                    url, self._hint = self._hint, None
                else:
                    url = urls[self._next_url % len(urls)]
                    self._next_url += 1
                try:
                    self._link = link = await self._nursery.start(self._run_link, url)
                    attempts.misses = 0
                    self._failed_urls.pop(url, None)
                except _ConnectFailed as exc:
                    attempts.last_error = str(exc)
                    self._failed_urls[url] = None
                    while len(self._failed_urls) > MAX_FAILED_URLS:
                        del self._failed_urls[next(iter(self._failed_urls))]
                else:
                    if trio.current_time() >= self._refresh_at and not self._refreshing:
                        self._refreshing = True
                        self._nursery.start_soon(self._refresh, link)
                    continue
            attempts.misses += 1
            if attempts.misses >= len(urls):  # a whole round failed: pause
                attempts.misses = 0
                await self._backoff(attempts)

    async def _run_link(self, url: str, *, task_status: trio.TaskStatus[_Link]) -> None:
        """Connect, greet, then route responses until the link is closed or lost.

        The TCP stream is ours, opened and closed here: trio-websocket's ``open_websocket``
        leaves the socket open when the server closes first (it closes it only as the closing
        side), and a client meets that at every server crash or refusal.
        """
        started = False
        try:
            with unwrap_single_exception_group(), trio.fail_after(self._connect_timeout_s) as phase:
                host, port, resource, tls = _split_url(url)
                stream: trio.SocketStream | trio.SSLStream[trio.SocketStream]
                if tls:
                    context = self._ssl_context or ssl.create_default_context()
                    stream = await trio.open_ssl_over_tcp_stream(
                        host, port, ssl_context=context, https_compatible=True
                    )
                else:
                    stream = await trio.open_tcp_stream(host, port)
                async with stream, trio.open_nursery() as nursery:
                    address = host if port in (80, 443) else f"{host}:{port}"
                    ws = await wrap_client_stream_fast(
                        nursery, stream, address, resource, max_message_size=p.MAX_RESPONSE_BYTES
                    )
                    link = _Link(ws, url)
                    try:
                        await self._hello(link)
                        phase.deadline = math.inf  # connected: no time limit from now on
                        task_status.started(link)
                        started = True
                        nursery.start_soon(link.read_loop)
                        await link.closing.wait()
                        with trio.move_on_after(CLOSE_TIMEOUT_S):
                            await ws.aclose()
                    finally:
                        link.die("connection closed")
                        nursery.cancel_scope.cancel()
        except (HandshakeError, ConnectionClosed, OSError, trio.TooSlowError, ValueError) as exc:
            if not started:
                raise _ConnectFailed(f"{url}: cannot connect: {exc!r}") from None
            # After the start the link is dead and its callers were told: nothing left to do.

    async def _hello(self, link: _Link) -> None:
        await link.ws.send_message(p.encode_request(0, p.Hello(token=self._token)))
        try:
            response = p.decode_response(await link.ws.get_message())
        except ConnectionClosed as exc:
            if exc.reason is not None and exc.reason.code == p.CLOSE_POLICY_VIOLATION:
                raise p.KVAuthError(f"{link.url} refused the token ({exc.reason.reason})") from None
            raise
        except p.FrameError as exc:
            raise _ConnectFailed(f"{link.url}: not a KV server: {exc}") from None
        if isinstance(response, p.Failure):
            if response.code is p.ErrorCode.UNAUTHORIZED:
                raise p.KVAuthError(f"{link.url}: {response.message}; pass the servers' token")
            raise _ConnectFailed(f"{link.url}: hello refused: {response.code}: {response.message}")
        if not isinstance(response.result, dict) or response.result.get("v") != p.PROTOCOL_VERSION:
            raise _ConnectFailed(f"{link.url}: not a KV server of protocol {p.PROTOCOL_VERSION}")

    # -- helpers -------------------------------------------------------------------------------

    def _drop(self, link: _Link) -> None:
        if self._link is link:
            self._link = None
        link.closing.set()

    def _new_session(self) -> None:
        self._session = self._rng.getrandbits(128).to_bytes(16, "big")
        self._seq = 0
        self._session_open = False

    def _deadline(self, timeout_s: Timeout) -> float:
        seconds = self._timeout_s if timeout_s is USE_CLIENT_DEFAULT else timeout_s
        if seconds is None:
            return math.inf
        if not seconds >= 0:
            raise ValueError(f"timeout_s must be >= 0 or None, got {seconds!r}")
        return trio.current_time() + seconds

    async def _backoff(self, attempts: _Attempts) -> None:
        if attempts.electing:
            attempts.electing = False
            await trio.sleep(self._rng.uniform(ELECTION_PAUSE_S / 2, ELECTION_PAUSE_S))
            return
        ceiling = min(BACKOFF_S_MAX, BACKOFF_S_MIN * 2.0 ** min(attempts.failures, 30))
        attempts.failures += 1
        await trio.sleep(self._rng.uniform(ceiling / 2, ceiling))

    def _close(self) -> None:
        self._closed = True
        if self._link is not None:
            self._drop(self._link)


def _split_url(url: str) -> tuple[str, int, str, bool]:
    """``ws[s]://host[:port]/path?query`` -> (host, port, resource, tls), or ValueError."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ValueError(f"not a ws:// or wss:// URL with a host: {url!r}")
    tls = parts.scheme == "wss"
    port = parts.port if parts.port is not None else (443 if tls else 80)
    resource = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return parts.hostname, port, resource, tls


def _check_size(request: p.Request, what: str) -> None:
    size = len(p.encode_request(p.MAX_SEQ, request))
    if size > p.MAX_REQUEST_BYTES:
        raise p.KVRequestError(
            f"{what}: the request encodes to {size} bytes, over the {p.MAX_REQUEST_BYTES} a "
            "server accepts; store large values elsewhere and send a reference"
        )


@contextmanager
def _invalid_arguments() -> Iterator[None]:
    try:
        yield
    except (ValueError, TypeError) as exc:
        raise p.KVRequestError(str(exc)) from None


def _encode(value: bytes | str) -> bytes:
    return value.encode() if isinstance(value, str) else value


def _encode_optional(value: bytes | str | None) -> bytes | None:
    return None if value is None else _encode(value)


def _membership_result(result: object) -> dict[str, object] | None:
    """``result`` if it has the shape of a membership result (extra keys allowed), else None."""
    if not isinstance(result, dict):
        return None
    index, committed, leader = result.get("index"), result.get("committed"), result.get("leader")
    voters, learners, outgoing = (
        result.get("voters"),
        result.get("learners"),
        result.get("outgoing"),
    )
    ok = (
        type(index) is int
        and type(committed) is bool
        and (leader is None or type(leader) is str)
        and isinstance(voters, dict)
        and isinstance(learners, dict)
        and isinstance(outgoing, list)
        and all(type(i) is str for group in (voters, learners, outgoing) for i in group)
    )
    return result if ok else None


_FOLLOW: Final[dict[str, object]] = {}
"""A download sent elsewhere (to the leader): start over at once."""

_PIECE_TYPES: Final[dict[str, tuple[type, ...]]] = {
    "node": (str,), "cluster_id": (str, NoneType), "index": (int,), "term": (int,),
    "voters": (list,), "learners": (list,), "offset": (int,), "data": (bytes,), "done": (bool,),
    "size": (int, NoneType), "sha256": (bytes, NoneType),
}  # fmt: skip


def _snapshot_piece(result: object, offset: int) -> dict[str, object]:
    """``result`` if it is the ``snapshot`` op's answer for ``offset``, else KVServerError."""
    ok = (
        isinstance(result, dict)
        and set(result) == set(_PIECE_TYPES)
        and all(isinstance(result[k], types) for k, types in _PIECE_TYPES.items())
        and result["offset"] == offset
        and len(result["data"]) <= p.MAX_SNAPSHOT_PIECE_BYTES
        and (result["done"] or (result["size"] is None and result["sha256"] is None))
        and (not result["done"] or (result["size"] is not None and result["sha256"] is not None))
    )
    if not ok:
        raise p.KVServerError(f"the server answered a snapshot with {describe(result)}")
    assert isinstance(result, dict)
    return result


def _leader(result: object) -> dict[str, object] | None:
    """``result`` if it is a transfer's result, ``{"leader": id}``, else None."""
    if isinstance(result, dict) and type(result.get("leader")) is str:
        return result
    return None


def _expect(result: object, types: tuple[type[T], ...], op: str) -> T:
    if not isinstance(result, types) or (bool not in types and isinstance(result, bool)):
        raise p.KVServerError(f"the server answered a {op} with {describe(result)}")
    return result


@asynccontextmanager
async def open_client(
    urls: Sequence[str],
    *,
    token: str | None = None,
    timeout_s: float | None = DEFAULT_TIMEOUT_S,
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
    rng: random.Random | None = None,
    ssl_context: ssl.SSLContext | None = None,
    max_concurrent_requests: int = DEFAULT_MAX_CONCURRENT_REQUESTS,
) -> AsyncIterator[KVClient]:
    """Open a client of the KV cluster served at ``urls``, for the ``async with`` block.

    The client connects lazily, at its first call: to a hinted leader, else to each URL in
    turn. Any node's URL will do (a follower redirects to the leader); list several so the
    client can start while some are down. Leaving the block closes the connection (waiting
    up to a second for a clean close); calls still running then fail with
    :exc:`ClientClosedError`.

    Args:
        urls: The nodes' client URLs, ``ws://host:port/kv`` or ``wss://...`` (or just one).
        token: The servers' token, if they require one.
        timeout_s: Default limit of each call, retries included, in seconds; ``None`` for
            none (a call then retries until it succeeds or you cancel it). Override it per
            call with the call's ``timeout_s``.
        connect_timeout_s: Limit of one connection attempt (a dead host is skipped after it).
        rng: The only source of randomness: session ids and backoff jitter. Seed it to make a
            client's behaviour repeatable. A fresh :class:`random.Random` by default.
        ssl_context: For ``wss://`` URLs (the default context if omitted).
        max_concurrent_requests: Requests in flight at once; more calls wait their turn.

    Raises:
        ValueError: no URL, a URL that is not ``ws://`` or ``wss://``, or a bound < 1.
    """
    urls = [urls] if isinstance(urls, str) else list(urls)
    if not urls:
        raise ValueError("open_client needs at least one URL")
    for url in urls:
        _split_url(url)
    if max_concurrent_requests < 1 or not connect_timeout_s > 0:
        raise ValueError("max_concurrent_requests must be >= 1 and connect_timeout_s > 0")
    if timeout_s is not None and not timeout_s >= 0:
        raise ValueError(f"timeout_s must be >= 0 or None, got {timeout_s!r}")
    with unwrap_single_exception_group():
        async with trio.open_nursery() as nursery:
            client = KVClient(
                urls, nursery=nursery, token=token, timeout_s=timeout_s,
                connect_timeout_s=connect_timeout_s, rng=rng or random.Random(),
                ssl_context=ssl_context, max_concurrent_requests=max_concurrent_requests,
            )  # fmt: skip
            try:
                yield client
            finally:
                client._close()
