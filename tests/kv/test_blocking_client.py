"""The blocking client, used from plain threads (as a script or a web framework would) while
the cluster runs on this test's trio loop."""

from __future__ import annotations

import threading

import pytest
import trio

from tests.kv.test_server_client import TEST_S, kv_cluster
from trio_raft.kv import ClientClosedError, KVRequestError, open_blocking_client


async def test_blocking_calls_from_threads() -> None:
    async with kv_cluster() as cluster:
        urls = list(cluster.urls.values())
        await cluster.leader()

        def script() -> tuple[object, ...]:
            with open_blocking_client(urls, timeout_s=TEST_S) as kv:
                kv.put("a", "1")
                assert kv.cas("a", "1", "2") is True
                assert kv.delete("missing") is False
                with pytest.raises(KVRequestError):
                    kv.put("", "empty keys are refused")
                errors: list[BaseException] = []

                def writer(i: int) -> None:  # one client, several threads
                    try:
                        kv.put(f"t{i}", str(i))
                    except BaseException as exc:  # pragma: no cover  (reported below)
                        errors.append(exc)

                threads = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                assert errors == []
                result = (
                    kv.get("a"), kv.list("t"), kv.status()["node"] in cluster.urls,
                    kv.run(lambda c: c.members()) is not None,
                )  # fmt: skip
            with pytest.raises(ClientClosedError):
                kv.get("a")
            kv.close()  # idempotent
            return result

        with trio.fail_after(TEST_S * 2):
            got = await trio.to_thread.run_sync(script)
        assert got == (b"2", ["t0", "t1", "t2", "t3"], True, True)


def test_a_bad_url_is_refused_at_open() -> None:
    with pytest.raises(ValueError, match="ws://"), open_blocking_client(["http://x:1/kv"]):
        pass  # pragma: no cover
