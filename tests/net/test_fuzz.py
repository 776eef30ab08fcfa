"""Junk at a live three-node cluster: random bytes, mutated frames, malformed envelopes.

The cluster (real nodes, real WebSocket transports, ``MemoryStorage``, ``KVStateMachine``) runs
in its own ``trio.run`` on a background thread for the whole test, so that Hypothesis can drive
one connection per example into it (``trio.from_thread.run``). For each example:

* over an *unauthenticated* connection, the junk replaces the handshake: the connection is
  closed with 1008 and exactly one handshake failure is counted, no decode failure;
* over a connection *authenticated* as a member, any frame the codec rejects (or that names
  another sender or receiver) closes the connection (1007, 1008, or 1003 for text) and exactly
  one decode failure is counted. Frames the codec accepts as a message from that member are
  not sent: they would be a member's genuine (if odd) Raft traffic, not junk.

Afterwards the cluster still commits proposals and its replicas agree.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import attrs
import cbor2
import hypothesis.strategies as st
import trio
from hypothesis import HealthCheck, given, settings
from trio_websocket import ConnectionClosed

from trio_raft import Config
from trio_raft._codec import FrameError, decode, encode
from trio_raft._messages import Message
from trio_raft._transport import TransportStatistics

from . import (
    CLUSTER,
    IDS,
    Cluster,
    closed_with,
    kv,
    open_cluster,
    propose_all,
    raw_client,
    wait_caught_up,
    wait_leader,
)
from .test_codec import messages

T = TypeVar("T")
FUZZ_CONFIG = Config(election_timeout_s_min=0.15, election_timeout_s_max=0.3, heartbeat_s=0.03)
"""Short, but with room: the fuzzing thread competes for the GIL. Nothing below depends on the
leader staying put."""


@attrs.define
class LiveCluster:
    """A cluster running in another thread's trio loop."""

    token: trio.lowlevel.TrioToken
    cluster: Cluster

    def run(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        return trio.from_thread.run(fn, *args, trio_token=self.token)


@contextmanager
def live_cluster() -> Iterator[LiveCluster]:
    started = threading.Event()
    box: dict[str, Any] = {}

    async def main() -> None:
        stop = trio.Event()
        box["stop"] = stop
        with trio.fail_after(60):  # a bound for a hung test, not a timing assertion
            async with open_cluster(FUZZ_CONFIG) as cluster:
                await wait_leader(cluster.running())
                for member in cluster.members.values():  # every link up, both ways
                    assert member.transport is not None
                    await member.transport.wait_statistics(fully_connected)
                box["live"] = LiveCluster(trio.lowlevel.current_trio_token(), cluster)
                started.set()
                await stop.wait()

    def thread_main() -> None:
        try:
            trio.run(main)
        except BaseException as exc:
            box["error"] = exc
        finally:
            started.set()

    thread = threading.Thread(target=thread_main, name="live cluster")
    thread.start()
    started.wait()
    try:
        if "error" in box:
            raise box["error"]
        live: LiveCluster = box["live"]
        yield live
        live.run(_set, box["stop"])
    finally:
        if "live" in box and not box["stop"].is_set():
            trio.from_thread.run_sync(box["stop"].set, trio_token=box["live"].token)
        thread.join()
    if "error" in box:
        raise box["error"]


def fully_connected(stats: TransportStatistics) -> bool:
    return all(p.connected and p.inbound_connections == 1 for p in stats.peers.values())


async def _set(event: trio.Event) -> None:
    event.set()


# -- junk -------------------------------------------------------------------------------------

cbor_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats()
    | st.text(max_size=8)
    | st.binary(max_size=8),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=20,
)
almost_envelopes = st.fixed_dictionaries(
    {},
    optional={
        "v": st.just(1) | cbor_values,
        "c": st.just(CLUSTER) | cbor_values,
        "s": st.sampled_from(IDS) | cbor_values,
        "d": st.sampled_from(IDS) | cbor_values,
        "t": st.integers(0, 7) | cbor_values,
        "b": st.lists(st.integers(0, 3) | cbor_values, max_size=9),
        "x": cbor_values,
    },
).map(cbor2.dumps)


@st.composite
def mutated_frames(draw: st.DrawFn, src: str, dst: str) -> bytes:
    message: Message = draw(messages)
    frame = bytearray(encode(attrs.evolve(message, src=src, dst=dst), cluster_id=CLUSTER))
    for _ in range(draw(st.integers(1, 4))):
        if not frame:
            break
        position = draw(st.integers(0, len(frame) - 1))
        action = draw(st.sampled_from(["flip", "delete", "insert", "truncate", "splice"]))
        if action == "flip":
            frame[position] ^= 1 << draw(st.integers(0, 7))
        elif action == "delete":
            del frame[position]
        elif action == "insert":
            frame.insert(position, draw(st.integers(0, 255)))
        elif action == "truncate":
            del frame[position:]
        else:
            frame[position:position] = cbor2.dumps(draw(cbor_values))
    return bytes(frame)


@attrs.frozen
class Attack:
    target: str
    claimed: str
    authenticated: bool
    junk: bytes | str


@st.composite
def attacks(draw: st.DrawFn) -> Attack:
    target = draw(st.sampled_from(IDS))
    claimed = draw(st.sampled_from([nid for nid in IDS if nid != target]))
    junk = draw(
        st.binary(max_size=300)
        | st.text(max_size=50)
        | almost_envelopes
        | mutated_frames(src=claimed, dst=target)
    )
    return Attack(target, claimed, draw(st.booleans()), junk)


def delivered_as_genuine(attack: Attack) -> bool:
    """Whether the target would accept ``junk`` as a message from the claimed member."""
    if isinstance(attack.junk, str):
        return False
    try:
        message = decode(attack.junk, cluster_id=CLUSTER, max_bytes=1 << 20)
    except FrameError:
        return False
    return message.src == attack.claimed and message.dst == attack.target


async def launch(live: LiveCluster, attack: Attack) -> None:
    transport = live.cluster.members[attack.target].transport
    assert transport is not None
    before = transport.statistics()
    with trio.fail_after(5):  # a bound for a hung test, not a timing assertion
        client_id = attack.claimed if attack.authenticated else None
        async with raw_client(transport.url, client_id=client_id, server_id=attack.target) as ws:
            with contextlib.suppress(ConnectionClosed):  # closed before we finished sending
                await ws.send_message(attack.junk)
            code, _ = await closed_with(ws)
    after = transport.statistics()
    handshake = after.handshake_failures - before.handshake_failures
    decoding = after.decode_failures - before.decode_failures
    if attack.authenticated:
        assert code in (1003, 1007, 1008), code
        assert (handshake, decoding) == (0, 1)
        assert after.peers[attack.claimed].decode_failures == (
            before.peers[attack.claimed].decode_failures + 1
        )
    else:
        assert code == 1008, code
        assert (handshake, decoding) == (1, 0)


async def still_serving(live: LiveCluster) -> dict[str, int]:
    with trio.fail_after(10):  # a bound for a hung test, not a timing assertion
        nodes = live.cluster.running()
        await propose_all(nodes, [("put", f"after-fuzz-{i}", "ok") for i in range(10)])
        await wait_caught_up(nodes, await wait_leader(nodes))
        states = [kv(n) for n in nodes.values()]
        assert all(state == states[0] for state in states)
        assert states[0]["after-fuzz-9"] == "ok"
    return {
        nid: m.transport.statistics().decode_failures
        for nid, m in live.cluster.members.items()
        if m.transport is not None
    }


def test_junk_is_refused_and_the_cluster_keeps_serving() -> None:
    launched: list[Attack] = []
    with live_cluster() as live:

        @settings(
            max_examples=150,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        )
        @given(attacks())
        def attack(attack: Attack) -> None:
            if attack.authenticated and delivered_as_genuine(attack):
                return  # a member's genuine message, not junk
            live.run(launch, live, attack)
            launched.append(attack)

        attack()
        decode_failures = live.run(still_serving, live)
    authenticated = [a for a in launched if a.authenticated]
    assert len(authenticated) >= 20 and len(launched) - len(authenticated) >= 20
    assert sum(decode_failures.values()) == len(authenticated)
