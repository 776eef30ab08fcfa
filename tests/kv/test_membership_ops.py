"""The membership ops of the KV service end to end: real nodes (over a MemoryNetwork) behind
real KV servers (loopback WebSockets, port 0), driven by the real client.

Each test is bounded by :func:`trio.fail_after` and waits for conditions, never for time.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from functools import partial
from typing import Any

import cbor2
import pytest
import trio

from trio_raft import Node
from trio_raft._errors import (
    InvalidMembershipError,
    LeadershipLostError,
    LeadershipTransferError,
    LearnerNotCaughtUpError,
    MembershipChangeInProgressError,
    QuorumUnavailableError,
)
from trio_raft.kv import (
    ErrorCode,
    KVAuthError,
    KVClient,
    KVRequestError,
    KVServerError,
    KVTimeoutError,
    MembershipRefusedError,
    TransferFailedError,
    open_client,
)
from trio_raft.kv import _protocol as p

from .test_server_client import TEST_S, Cluster, kv_cluster, raw_ws, request, wait_until

PEER = "ws://127.0.0.1:1/raft"
"""The peer URL given to add_learner: the nodes talk over a MemoryNetwork, which ignores it."""


async def join(cluster: Cluster, nursery: trio.Nursery, node_id: str, **serve: object) -> str:
    """Start ``node_id`` in join mode with its KV server; return its client URL."""
    await nursery.start(partial(cluster.run_node, node_id, serve, join=True))
    return cluster.urls[node_id]


def ids(group: object) -> list[str]:
    assert isinstance(group, (dict, list))
    return sorted(group)


def index_of(result: dict[str, object]) -> int:
    """A membership result's log ``index``."""
    index = result["index"]
    assert isinstance(index, int)
    return index


# -- every op, end to end -----------------------------------------------------------------------


async def test_add_promote_demote_remove_and_transfer() -> None:
    with trio.fail_after(3 * TEST_S):
        async with kv_cluster() as cluster, trio.open_nursery() as nursery:
            leader = await cluster.leader()
            async with open_client(list(cluster.urls.values()), rng=random.Random(1)) as kv:
                await kv.put("k", b"v")
                members = await kv.members()
                assert members["leader"] == leader.id
                assert members["committed"] is True
                assert members["voters"] == {"n1": None, "n2": None, "n3": None}
                assert members["learners"] == {} and members["outgoing"] == []
                assert members["index"] == leader.status.membership_index

                url = await join(cluster, nursery, "n4")
                added = await kv.add_learner("n4", peer=PEER, client=url)
                assert ids(added["voters"]) == ["n1", "n2", "n3"]
                assert added["learners"] == {"n4": {"peer": PEER, "client": url}}
                assert added["committed"] is True and index_of(added) > index_of(members)
                assert await kv.add_learner("n4", peer=PEER, client=url) == added  # idempotent

                n4 = cluster.nodes["n4"]
                await n4.wait_status(lambda s: s.last_applied >= leader.status.commit_index)
                async with open_client(url) as direct:
                    status = await direct.status()
                    assert await direct.get("k", consistency="stale") == b"v"  # it has the log
                assert status["role"] == "learner"
                assert status["voters"] == ["n1", "n2", "n3"] and status["learners"] == ["n4"]

                promoted = await kv.promote("n4", catch_up_timeout_s=TEST_S)
                assert ids(promoted["voters"]) == ["n1", "n2", "n3", "n4"]
                assert promoted["learners"] == {} and promoted["outgoing"] == []
                assert promoted["voters"]["n4"] == {"peer": PEER, "client": url}  # type: ignore[index]
                status = await kv.status()
                assert status["voters"] == ["n1", "n2", "n3", "n4"]
                assert status["config_committed"] is True
                assert status["config_index"] == promoted["index"]
                followers = status["followers"]
                assert isinstance(followers, dict) and followers["n4"]["voter"] is True

                demoted = await kv.demote("n4")
                assert ids(demoted["learners"]) == ["n4"]
                removed = await kv.remove("n4")
                assert ids(removed["voters"]) == ["n1", "n2", "n3"]
                assert removed["learners"] == {}
                assert await kv.remove("n4") == removed  # not a member: nothing to do

                new = await kv.transfer_leader()
                assert new != leader.id and new in cluster.ids
                assert await cluster.nodes[new].wait_leader() == new
                assert await kv.transfer_leader(leader.id) == leader.id
                assert await kv.transfer_leader(leader.id) == leader.id  # already leads
                assert await kv.get("k") == b"v"
            nursery.cancel_scope.cancel()


async def test_a_follower_redirects_membership_ops_to_the_leader() -> None:
    with trio.fail_after(TEST_S):
        async with kv_cluster() as cluster:
            follower, leader = await cluster.follower(), await cluster.leader()
            async with open_client(cluster.urls[follower.id], rng=random.Random(1)) as kv:
                assert (await kv.members())["leader"] == leader.id
                assert kv.url == cluster.urls[leader.id]
            async with raw_ws(cluster.urls[follower.id]) as ws:
                response = await request(ws, {"id": 1, "op": "remove", "node": "n9"})
                error = response["error"]
                assert isinstance(error, dict)
                assert error["code"] == "not_leader"
                assert error["leader"] == cluster.urls[leader.id]


async def test_a_leader_that_joined_later_is_found_through_its_address() -> None:
    """Followers redirect to a leader that is not in ``leader_urls``, from the ``client`` URL
    of its address in the configuration."""
    with trio.fail_after(3 * TEST_S):
        async with kv_cluster() as cluster, trio.open_nursery() as nursery:
            async with open_client(list(cluster.urls.values())) as kv:
                url = await join(cluster, nursery, "n4")
                del cluster.urls["n4"]  # the other servers do not know its URL
                await kv.add_learner("n4", peer=PEER, client=url)
                await kv.promote("n4", catch_up_timeout_s=TEST_S)
                assert await kv.transfer_leader("n4") == "n4"
            follower = cluster.nodes["n1"]
            await follower.wait_status(lambda s: s.leader_id == "n4")
            async with open_client(cluster.urls["n1"]) as kv:
                await kv.put("k", b"v")
                assert kv.url == url
            nursery.cancel_scope.cancel()


# -- errors -------------------------------------------------------------------------------------


async def test_refusals_map_to_typed_errors() -> None:
    with trio.fail_after(3 * TEST_S):
        async with kv_cluster() as cluster:
            leader = await cluster.leader()
            async with open_client(list(cluster.urls.values())) as kv:
                with pytest.raises(MembershipRefusedError, match="n9") as refused:
                    await kv.promote("n9")
                assert refused.value.code is ErrorCode.INVALID_MEMBERSHIP
                with pytest.raises(MembershipRefusedError) as refused:
                    await kv.transfer_leader("n9")
                assert refused.value.code is ErrorCode.INVALID_MEMBERSHIP
                # A learner that never runs never catches up: it stays a learner.
                await kv.add_learner("ghost", peer=PEER, client="ws://127.0.0.1:1/kv")
                with pytest.raises(MembershipRefusedError, match="ghost") as refused:
                    await kv.promote("ghost", catch_up_timeout_s=0.2)
                assert refused.value.code is ErrorCode.NOT_CAUGHT_UP
                assert ids((await kv.members())["learners"]) == ["ghost"]
                # A target that is down never takes over.
                down = next(n for n in cluster.ids if n != leader.id)
                await cluster.crash(down)
                with pytest.raises(TransferFailedError):
                    await kv.transfer_leader(down)
                assert (await kv.members())["leader"] == leader.id


async def test_removing_the_last_voter_is_refused() -> None:
    with trio.fail_after(TEST_S):
        async with kv_cluster(ids=["solo"]) as cluster, open_client(cluster.urls["solo"]) as kv:
            with pytest.raises(MembershipRefusedError, match="voter") as refused:
                await kv.remove("solo")
            assert refused.value.code is ErrorCode.INVALID_MEMBERSHIP
            with pytest.raises(MembershipRefusedError) as refused:
                await kv.transfer_leader()  # nobody to hand over to
            assert refused.value.code is ErrorCode.INVALID_MEMBERSHIP


def raising(exc: BaseException, calls: list[object]) -> Callable[..., Any]:
    async def method(*args: object, **kwargs: object) -> object:
        calls.append(args)
        await trio.lowlevel.checkpoint()
        raise exc

    return method


ERRORS: list[tuple[BaseException, str]] = [
    (MembershipChangeInProgressError("a change is in flight"), "change_in_progress"),
    (InvalidMembershipError("n9 is not a learner", "not_a_learner"), "invalid_membership"),
    (LearnerNotCaughtUpError("n4 is behind", "n4", 12, 1.0), "not_caught_up"),
    (QuorumUnavailableError("n2, n3 unreachable", frozenset({"n2", "n3"})), "quorum_unavailable"),
]


@pytest.mark.parametrize(("error", "code"), ERRORS, ids=[c for _, c in ERRORS])
async def test_each_refusal_has_its_code(
    monkeypatch: pytest.MonkeyPatch, error: BaseException, code: str
) -> None:
    with trio.fail_after(TEST_S):
        async with kv_cluster(ids=["solo"]) as cluster:
            calls: list[object] = []
            monkeypatch.setattr(Node, "demote", raising(error, calls))
            async with raw_ws(cluster.urls["solo"]) as ws:
                response = await request(ws, {"id": 1, "op": "demote", "node": "n2"})
            assert response == {"id": 1, "error": {"code": code, "message": str(error)}}
            async with open_client(cluster.urls["solo"]) as kv:
                with pytest.raises(MembershipRefusedError) as refused:
                    await kv.demote("n2")
            assert refused.value.code == code
            assert str(error) in str(refused.value)
            assert len(calls) == 2  # refusals are not retried


async def test_transfer_failure_has_its_code(monkeypatch: pytest.MonkeyPatch) -> None:
    error = LeadershipTransferError("n2 did not take over", "n2", moved=False)
    calls: list[object] = []
    monkeypatch.setattr(Node, "transfer_leadership", raising(error, calls))
    with trio.fail_after(TEST_S):
        async with kv_cluster(ids=["solo"]) as cluster:
            async with open_client(cluster.urls["solo"]) as kv:
                with pytest.raises(TransferFailedError, match="did not take over"):
                    await kv.transfer_leader("n2")
    assert len(calls) == 1


async def test_a_lost_leadership_is_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    """``outcome_unknown`` (the leader stepped down mid-change): the client retries, which is
    safe since membership ops are idempotent."""
    real_remove = Node.remove
    calls: list[str] = []

    async def flaky_remove(self: Node, node_id: str) -> object:
        calls.append(node_id)
        if len(calls) == 1:
            await trio.lowlevel.checkpoint()
            raise LeadershipLostError("stepped down")
        return await real_remove(self, node_id)

    monkeypatch.setattr(Node, "remove", flaky_remove)
    with trio.fail_after(TEST_S):
        async with kv_cluster(ids=["solo"]) as cluster:
            await cluster.leader()
            async with raw_ws(cluster.urls["solo"]) as ws:
                response = await request(ws, {"id": 1, "op": "remove", "node": "n9"})
            error = response["error"]
            assert isinstance(error, dict) and error["code"] == "outcome_unknown"
            assert "idempotent" in error["message"]
            async with open_client(cluster.urls["solo"]) as kv:
                result = await kv.remove("n9")
            assert ids(result["voters"]) == ["solo"]
            assert calls == ["n9", "n9"]


async def test_a_membership_timeout_says_the_outcome_is_unknown(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def stuck(self: Node, node_id: str, **kwargs: object) -> object:
        await trio.sleep_forever()

    monkeypatch.setattr(Node, "promote", stuck)
    with trio.fail_after(TEST_S):
        async with kv_cluster(ids=["solo"]) as cluster, open_client(cluster.urls["solo"]) as kv:
            with pytest.raises(KVTimeoutError, match="may or may not") as timeout:
                await kv.promote("n2", timeout_s=0.2)
            assert "catch_up_timeout_s" in str(timeout.value)
            assert "retrying is safe" in str(timeout.value)


async def test_a_server_without_membership_ops_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    """A server from before membership changes answers ``bad_request`` "unknown op"."""
    for op in ("members", "add_learner", "promote", "demote", "remove", "transfer_leader"):
        monkeypatch.delitem(p._OPS, op)
    with trio.fail_after(TEST_S):
        async with kv_cluster(ids=["solo"]) as cluster, open_client(cluster.urls["solo"]) as kv:
            await kv.put("k", b"v")  # the rest works (and the background refresh gave up)
            with pytest.raises(KVRequestError, match="predates membership operations"):
                await kv.members()
            with pytest.raises(KVRequestError, match="predates membership operations"):
                await kv.remove("n2")
            assert await kv.get("k") == b"v"


async def test_a_malformed_membership_result_is_a_server_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("trio_raft.kv._server.KVServer._membership", lambda self: {"index": "x"})
    with trio.fail_after(TEST_S):
        async with kv_cluster(ids=["solo"]) as cluster, open_client(cluster.urls["solo"]) as kv:
            with pytest.raises(KVServerError, match="members"):
                await kv.members()


# -- authorization ------------------------------------------------------------------------------


async def test_admin_token_is_needed_for_changes_but_not_for_members() -> None:
    with trio.fail_after(TEST_S):
        async with kv_cluster(ids=["solo"], token="tok", admin_token="adm") as cluster:
            url = cluster.urls["solo"]
            async with open_client(url, token="tok") as kv:
                await kv.put("k", b"v")
                assert ids((await kv.members())["voters"]) == ["solo"]
                with pytest.raises(KVAuthError, match="admin_token"):
                    await kv.remove("n9")
                with pytest.raises(KVAuthError, match="admin_token"):
                    await kv.transfer_leader()
                assert await kv.get("k") == b"v"  # the connection is still usable
            async with open_client(url, token="adm") as admin:
                assert await admin.get("k") == b"v"  # the admin token grants the rest too
                assert ids((await admin.remove("n9"))["voters"]) == ["solo"]
            async with open_client(url, token="wrong") as kv:
                with pytest.raises(KVAuthError):
                    await kv.members()


async def test_admin_token_without_a_token() -> None:
    with trio.fail_after(TEST_S):
        async with kv_cluster(ids=["solo"], admin_token="adm") as cluster:
            url = cluster.urls["solo"]
            async with open_client(url) as kv:
                await kv.put("k", b"v")
                await kv.members()
                with pytest.raises(KVAuthError, match="admin_token"):
                    await kv.remove("n9")
            async with open_client(url, token="adm") as admin:
                await admin.remove("n9")
            async with raw_ws(url) as ws:  # no hello at all, then a change: refused, not closed
                response = await request(ws, {"id": 1, "op": "demote", "node": "solo"})
                assert response["error"]["code"] == "unauthorized"
                response = await request(ws, {"id": 2, "op": "hello", "v": 1, "token": "adm"})
                assert response["ok"] == {"v": 1, "node": "solo"}
                response = await request(ws, {"id": 3, "op": "remove", "node": "n9"})
                assert ids(response["ok"]["voters"]) == ["solo"]


async def test_without_admin_token_the_token_grants_changes() -> None:
    with trio.fail_after(TEST_S):
        async with kv_cluster(ids=["solo"], token="tok") as cluster:
            async with open_client(cluster.urls["solo"], token="tok") as kv:
                assert ids((await kv.remove("n9"))["voters"]) == ["solo"]
        async with kv_cluster(ids=["solo"]) as cluster:  # neither: anyone may
            async with open_client(cluster.urls["solo"]) as kv:
                assert ids((await kv.remove("n9"))["voters"]) == ["solo"]


# -- strict decoding ----------------------------------------------------------------------------

GOOD_URL = "ws://10.0.0.4:7200/kv"
BAD_REQUESTS: list[dict[str, object]] = [
    {"op": "members", "extra": 1},
    {"op": "add_learner", "node": "n4", "peer": GOOD_URL},  # no client
    {"op": "add_learner", "node": "n4", "peer": "http://x/raft", "client": GOOD_URL},
    {"op": "add_learner", "node": "n4", "peer": "ws:///raft", "client": GOOD_URL},  # no host
    {"op": "add_learner", "node": "n4", "peer": "ws://h:99999/raft", "client": GOOD_URL},
    {"op": "add_learner", "node": "n4", "peer": "ws://" + "h" * 500, "client": GOOD_URL},
    {"op": "add_learner", "node": "n4", "peer": b"ws://h/raft", "client": GOOD_URL},
    {"op": "add_learner", "node": "", "peer": GOOD_URL, "client": GOOD_URL},
    {"op": "add_learner", "node": "n" * 129, "peer": GOOD_URL, "client": GOOD_URL},
    {"op": "promote", "node": 4},
    {"op": "promote", "node": "n4", "catch_up_timeout_s": -1},
    {"op": "promote", "node": "n4", "catch_up_timeout_s": 0},
    {"op": "promote", "node": "n4", "catch_up_timeout_s": True},
    {"op": "promote", "node": "n4", "catch_up_timeout_s": "5"},
    {"op": "promote", "node": "n4", "catch_up_timeout_s": math.inf},
    {"op": "promote", "node": "n4", "catch_up_timeout_s": math.nan},
    {"op": "demote"},
    {"op": "demote", "node": None},
    {"op": "remove", "node": ["n4"]},
    {"op": "transfer_leader", "to": 5},
    {"op": "transfer_leader", "to": ""},
]


@pytest.mark.parametrize("message", BAD_REQUESTS)
def test_malformed_membership_requests_are_bad_requests(message: dict[str, object]) -> None:
    with pytest.raises(p.BadRequest):
        p.decode_request(cbor2.dumps({"id": 1, **message}))


def test_membership_requests_round_trip() -> None:
    requests: list[p.Request] = [
        p.Members(),
        p.AddLearner(node="n4", peer="ws://h:1/raft", client="wss://h:2/kv"),
        p.Promote(node="n4"),
        p.Promote(node="n4", catch_up_timeout_s=2.5),
        p.Demote(node="n4"),
        p.Remove(node="n4"),
        p.TransferLeader(),
        p.TransferLeader(to="n2"),
    ]
    for sent in requests:
        assert p.decode_request(p.encode_request(3, sent)) == (3, sent)
    assert p.decode_request(cbor2.dumps({"id": 1, "op": "transfer_leader"})) == (
        1,
        p.TransferLeader(),
    )
    assert p.decode_request(
        cbor2.dumps({"id": 1, "op": "promote", "node": "n4", "catch_up_timeout_s": 7})
    ) == (1, p.Promote(node="n4", catch_up_timeout_s=7))


async def test_malformed_membership_requests_are_answered_on_the_wire() -> None:
    with trio.fail_after(TEST_S):
        async with kv_cluster(ids=["solo"]) as cluster, raw_ws(cluster.urls["solo"]) as ws:
            await cluster.leader()
            for i, message in enumerate(BAD_REQUESTS):
                response = await request(ws, {"id": i, **message})
                assert response["error"]["code"] == "bad_request", message
            response = await request(ws, {"id": 99, "op": "members"})
            assert ids(response["ok"]["voters"]) == ["solo"]


async def test_invalid_arguments_fail_before_sending() -> None:
    with trio.fail_after(TEST_S):
        async with kv_cluster(ids=["solo"]) as cluster, open_client(cluster.urls["solo"]) as kv:
            with pytest.raises(KVRequestError, match="peer"):
                await kv.add_learner("n4", peer="http://h", client=GOOD_URL)
            with pytest.raises(KVRequestError, match="catch_up_timeout_s"):
                await kv.promote("n4", catch_up_timeout_s=-1)
            with pytest.raises(KVRequestError, match="node id"):
                await kv.remove("")
            assert kv.url is None  # nothing was sent


# -- the client follows the membership ------------------------------------------------------------


def dial_log(kv: KVClient) -> list[str]:
    """Record every URL ``kv`` dials from now on."""
    dialled: list[str] = []
    run_link = kv._run_link

    async def recording(url: str, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        dialled.append(url)
        await run_link(url, task_status=task_status)

    kv._run_link = recording  # type: ignore[method-assign]
    return dialled


async def test_a_client_learns_the_members_and_forgets_removed_ones() -> None:
    """Opened with one URL, a client learns the others (in the background, at its first
    connection), so it survives the loss of that node; it stops dialling a removed node."""
    with trio.fail_after(4 * TEST_S):
        async with kv_cluster() as cluster, trio.open_nursery() as nursery:
            urls = dict(cluster.urls)
            async with open_client(list(urls.values())) as admin:
                for node_id, url in urls.items():  # trio-raft serve's addresses, set later
                    await admin.add_learner(node_id, peer=PEER, client=url)
                url4 = await join(cluster, nursery, "n4")
                await admin.add_learner("n4", peer=PEER, client=url4)
            seed = urls["n1"]
            async with open_client(seed, rng=random.Random(3)) as kv:
                assert await kv.get("k") is None
                await wait_until(lambda: len(kv._dial_urls()) == 4)
                assert kv._dial_urls() == (urls["n1"], urls["n2"], urls["n3"], url4)
                await cluster.crash("n1")  # its only URL: the learned ones carry on
                await kv.put("k", b"after n1")
                assert kv.url in (urls["n2"], urls["n3"])
                dialled = dial_log(kv)

                removed = await kv.remove("n4")
                assert "n4" not in ids(removed["learners"])
                assert kv._dial_urls() == (urls["n1"], urls["n2"], urls["n3"])
                for _ in range(3):  # lose the connection, three times over
                    link = kv._link
                    assert link is not None
                    kv._drop(link)
                    assert await kv.get("k") == b"after n1"
                assert dialled and url4 not in dialled
            nursery.cancel_scope.cancel()


async def test_members_results_update_the_dial_list_at_once() -> None:
    with trio.fail_after(2 * TEST_S):
        async with kv_cluster() as cluster:
            urls = dict(cluster.urls)
            async with open_client(urls["n2"]) as kv:
                await kv.add_learner("n3", peer=PEER, client=urls["n3"])
                # Learned first; the URL it was opened with last (n2 has no address).
                assert kv._dial_urls() == (urls["n3"], urls["n2"])


async def test_concurrent_calls_each_get_their_answer() -> None:
    """Many calls at once on one client: each request has its own id (a regression: ids were
    read after a checkpoint, so two calls could share one and one never got its answer)."""
    with trio.fail_after(TEST_S):
        async with kv_cluster(ids=["solo"]) as cluster, open_client(cluster.urls["solo"]) as kv:
            await kv.put("k", b"v")
            results: list[object] = []

            async def one() -> None:
                results.append(await kv.get("k"))

            async with trio.open_nursery() as nursery:
                for _ in range(50):
                    nursery.start_soon(one)
                nursery.start_soon(kv.members)
            assert results == [b"v"] * 50


async def test_a_lost_connection_refreshes_the_members_at_most_every_interval() -> None:
    """Another client adds a member; this one learns it only when it reconnects, and only once
    the refresh interval has passed since it last learned the membership."""
    with trio.fail_after(3 * TEST_S):
        async with kv_cluster() as cluster, trio.open_nursery() as nursery:
            urls = dict(cluster.urls)
            leader = await cluster.leader()
            async with open_client(urls[leader.id]) as kv, open_client(urls[leader.id]) as admin:
                await admin.add_learner(leader.id, peer=PEER, client=urls[leader.id])
                await kv.get("k")
                await wait_until(lambda: kv._dial_urls() == (urls[leader.id],))
                url4 = await join(cluster, nursery, "n4")
                await admin.add_learner("n4", peer=PEER, client=url4)

                link = kv._link
                assert link is not None
                kv._drop(link)  # lost: it reconnects, but learned less than 10 s ago
                await kv.get("k")
                assert kv._link is not link
                assert url4 not in kv._dial_urls()

                kv._refresh_at = trio.current_time()  # as if the interval had passed
                link = kv._link
                assert link is not None
                kv._drop(link)
                await kv.get("k")
                await wait_until(lambda: url4 in kv._dial_urls())
                assert kv._dial_urls() == (urls[leader.id], url4)
            nursery.cancel_scope.cancel()
