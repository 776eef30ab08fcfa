"""Prometheus metrics for a node (needs the ``prometheus`` extra: ``pip install
'trio-raft[prometheus]'``).

:class:`NodeCollector` reads :meth:`Node.statistics` when Prometheus scrapes, so the node keeps
one set of counters. ``trio-raft serve`` serves it on the admin endpoint's ``/metrics`` when the
extra is installed; an embedder registers it in its own registry::

    registry = prometheus_client.CollectorRegistry()
    registry.register(trio_raft.prometheus.NodeCollector(node))
    registry.register(trio_raft.prometheus.KVServerCollector(kv_server))  # if it serves one
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from ._node import Node
from ._transport._stats import TransportStatistics
from ._types import Role
from .kv._server import KVServer

__all__ = ["KVServerCollector", "NodeCollector", "render"]


class NodeCollector(Collector):
    """Metric families for one node, named ``trio_raft_*`` and labelled with ``node``."""

    def __init__(self, node: Node) -> None:
        self._node = node

    def collect(self) -> Iterator[Metric]:
        """Build the metric families from the node's statistics now."""
        stats = self._node.statistics()
        status = stats.status
        node = [status.node_id]

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            family = GaugeMetricFamily(f"trio_raft_{name}", doc, labels=["node"])
            family.add_metric(node, value)
            return family

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            family = CounterMetricFamily(f"trio_raft_{name}", doc, labels=["node"])
            family.add_metric(node, value)
            return family

        role = GaugeMetricFamily(
            "trio_raft_role", "1 for the role the node has now", labels=["node", "role"]
        )
        for r in Role:
            role.add_metric([status.node_id, r.value], 1.0 if r is status.role else 0.0)
        yield role
        yield gauge("term", "The latest term the node has seen", status.term)
        yield gauge("is_leader", "1 while this node leads", status.role is Role.LEADER)
        yield gauge("commit_index", "The highest log index known committed", status.commit_index)
        yield gauge("applied_index", "The highest index applied", status.last_applied)
        yield gauge("last_log_index", "The index of the last log entry", status.last_log_index)
        yield gauge("snapshot_index", "The index of the latest snapshot", status.snapshot_index)
        yield gauge("no_space", "1 while the disk-space alarm is raised", status.no_space)
        yield counter("elections_started", "Elections this node started", stats.elections_started)
        yield counter("elections_won", "Elections this node won", stats.elections_won)
        changes = CounterMetricFamily(
            "trio_raft_role_changes", "Role or term changes by reason", labels=["node", "reason"]
        )
        for reason, n in sorted(stats.role_changes.items(), key=lambda kv: kv[0].name):
            changes.add_metric([status.node_id, reason.name.lower()], n)
        yield changes
        proposals = CounterMetricFamily(
            "trio_raft_proposals", "Proposals by outcome", labels=["node", "outcome"]
        )
        proposals.add_metric([status.node_id, "accepted"], stats.proposals_accepted)
        for error, n in sorted(stats.proposals_refused.items()):
            proposals.add_metric([status.node_id, error], n)
        yield proposals
        yield counter("entries_applied", "Command entries applied", stats.entries_applied)
        yield counter("apply_errors", "Applied commands whose apply raised", stats.apply_errors)
        yield counter("reads_confirmed", "Linearizable reads confirmed", stats.reads_confirmed)
        yield counter("reads_failed", "Linearizable reads failed", stats.reads_failed)
        yield counter("snapshots_taken", "Snapshots taken", stats.snapshots_taken)
        yield counter("snapshots_installed", "Snapshots installed", stats.snapshots_installed)
        yield counter("snapshots_sent", "Snapshots sent to followers", stats.snapshots_sent)
        yield gauge("snapshot_bytes", "Size of the latest snapshot", stats.snapshot_bytes)
        h = stats.disk_write_seconds
        buckets: list[tuple[str, float]] = []
        cumulative = 0
        for bound, n in zip(h.bounds, h.counts, strict=False):
            cumulative += n
            buckets.append((repr(bound), cumulative))
        buckets.append(("+Inf", h.count))
        disk = HistogramMetricFamily(
            "trio_raft_disk_write_seconds", "Time to make one batch durable (save and sync)",
            labels=["node"],
        )  # fmt: skip
        disk.add_metric(node, buckets, h.total)
        yield disk
        lag = GaugeMetricFamily(
            "trio_raft_follower_lag_entries", "Leader only: entries each replica is behind",
            labels=["node", "peer"],
        )  # fmt: skip
        for peer, follower in sorted(status.followers.items()):
            lag.add_metric([status.node_id, peer], status.last_log_index - follower.match_index)
        yield lag
        if isinstance(stats.transport, TransportStatistics):
            yield from _peer_families(status.node_id, stats.transport)


_PEER_COUNTERS = (
    ("frames_sent", "Frames (messages) sent to the peer"),
    ("bytes_sent", "Bytes of frames sent to the peer"),
    ("frames_received", "Frames received from the peer"),
    ("bytes_received", "Bytes of frames received from the peer"),
    ("connects", "Outbound connections to the peer that completed their handshake"),
    ("connect_failures", "Outbound connection attempts that failed before the handshake"),
    ("handshake_failures", "Handshakes with the peer that were refused"),
    ("dropped_not_connected", "Frames dropped because the peer was not connected"),
    ("dropped_queue_full", "Frames dropped because the peer's send queue was full"),
)


def _peer_families(node_id: str, transport: TransportStatistics) -> Iterator[Metric]:
    """Per-peer families of the WebSocket transport (``trio_raft_peer_*{node, peer}``)."""
    peers = sorted(transport.peers.items())
    connected = GaugeMetricFamily(
        "trio_raft_peer_connected", "1 while the outbound connection to the peer is up",
        labels=["node", "peer"],
    )  # fmt: skip
    for peer, stats in peers:
        connected.add_metric([node_id, peer], stats.connected)
    yield connected
    for name, doc in _PEER_COUNTERS:
        family = CounterMetricFamily(f"trio_raft_peer_{name}", doc, labels=["node", "peer"])
        for peer, stats in peers:
            family.add_metric([node_id, peer], getattr(stats, name))
        yield family


class KVServerCollector(Collector):
    """Metric families for a node's client endpoint (:class:`~trio_raft.kv.KVServer`), from
    its :meth:`~trio_raft.kv.KVServer.statistics`, labelled with ``node``."""

    def __init__(self, server: KVServer, node_id: str) -> None:
        self._server = server
        self._node_id = node_id

    def collect(self) -> Iterator[Metric]:
        """Build the metric families from the server's statistics now."""
        stats = self._server.statistics()
        node = self._node_id
        requests = CounterMetricFamily(
            "trio_raft_client_requests", "Client requests answered, by op and outcome (ok or "
            "the error code)", labels=["node", "op", "outcome"],
        )  # fmt: skip
        for (op, outcome), n in sorted(stats.requests.items()):
            requests.add_metric([node, op, outcome], n)
        yield requests
        rejected = CounterMetricFamily(
            "trio_raft_client_connections_rejected", "Client connections refused or dropped, "
            "by reason", labels=["node", "reason"],
        )  # fmt: skip
        for reason, n in sorted(stats.rejected_connections.items()):
            rejected.add_metric([node, reason], n)
        yield rejected
        connections = GaugeMetricFamily(
            "trio_raft_client_connections", "Client connections open now", labels=["node"]
        )
        connections.add_metric([node], stats.connections)
        yield connections


def render(node: Node, kv_server: KVServer | None = None) -> tuple[bytes, str]:
    """The metrics of ``node`` (and of its client endpoint ``kv_server``, if given) in the
    Prometheus text format, and its content type."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(node))
    if kv_server is not None:
        registry.register(KVServerCollector(kv_server, node.id))
    return generate_latest(registry), "text/plain; version=0.0.4; charset=utf-8"
