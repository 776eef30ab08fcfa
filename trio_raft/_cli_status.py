"""``trio-raft status``: every node asked at once, each within the command's timeout (with a
cluster file, also the members that joined later).

``--json`` prints one object with these keys (stable: new keys may be added, none removed or
changed in meaning)::

    {
        "leader": "n1",  # the id a node answering as leader gave, else null
        "nodes": [  # one per URL, in the order given (or the file's, by id)
            {
                "url": "ws://127.0.0.1:7201/kv",
                "id": "n1",  # from its answer, else the cluster file, else null
                "ok": true,  # it answered
                "error": null,  # else why not, and what to do (one line)
                "role": "leader",  # leader, follower, learner, candidate, pre-candidate
                "term": 3,
                "leader_id": "n1",
                "commit": 812,
                "applied": 812,
                "last_index": 812,
                "compacted": 800,  # the last index compacted into its snapshot (0: none)
                "voted_for": "n1",  # its vote in this term, or null
                "lag": null,  # entries behind the leader's log (null: unknown, or leader)
                "no_space": false,  # its disk-space alarm is raised
            }
        ],
        "configuration": {  # as the leader (else any node) reports it, else null
            "index": 5,
            "committed": true,
            "voters": ["n1", "n2", "n3"],
            "learners": [],
            "outgoing": [],
        },
    }

A node that did not answer has ``ok`` false, its ``error``, and null for the status keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

import attrs
import trio

from ._cli_client import Target, explain_client_error, probe
from .kv import KVError, open_client
from .kv._protocol import client_url

STATUS_KEYS: Final = ("role", "term", "commit", "applied", "last_index", "compacted", "voted_for")


@attrs.frozen
class NodeAnswer:
    """What one URL answered."""

    url: str
    id: str | None
    status: Mapping[str, object] | None
    error: str | None


@attrs.frozen
class StatusView:
    """Every node's answer, in the order of the URLs."""

    answers: tuple[NodeAnswer, ...]

    @property
    def problems(self) -> list[str]:
        """One line for each node that did not answer."""
        return [a.error for a in self.answers if a.error is not None]

    def by_node(self) -> dict[str, Mapping[str, object] | None]:
        """Status by node id (the URL where the id is unknown), for the text view."""
        return {(a.id or a.url): a.status for a in self.answers}

    def leader(self) -> Mapping[str, object] | None:
        """The status of a node that answered as leader (the highest term, if several)."""
        leaders = [a.status for a in self.answers if a.status and a.status["role"] == "leader"]
        return max(leaders, key=lambda s: _int(s.get("term")) or 0, default=None)

    def as_json(self) -> dict[str, object]:
        """The ``--json`` object (see the module documentation)."""
        leader = self.leader()
        nodes = []
        for answer in self.answers:
            s = answer.status or {}
            entry: dict[str, object] = {
                "url": answer.url, "id": answer.id, "ok": answer.status is not None,
                "error": answer.error, "leader_id": s.get("leader"),
                "no_space": bool(s.get("no_space")) if answer.status else None,
                "lag": _lag(leader, answer.id),
            }  # fmt: skip
            entry.update({key: s.get(key) for key in STATUS_KEYS})
            nodes.append(entry)
        return {
            "leader": None if leader is None else leader.get("node"),
            "nodes": nodes,
            "configuration": self._configuration(leader),
        }

    def _configuration(self, leader: Mapping[str, object] | None) -> dict[str, object] | None:
        known = [a.status for a in self.answers if a.status and "config_index" in a.status]
        if not known:
            return None
        s = leader if leader is not None and "config_index" in leader else known[0]
        return {
            "index": s.get("config_index"),
            "committed": bool(s.get("config_committed")),
            **{key: list(s.get(key) or []) for key in ("voters", "learners", "outgoing")},  # type: ignore[call-overload]
        }


def _int(value: object) -> int | None:
    return value if type(value) is int else None


def _lag(leader: Mapping[str, object] | None, node_id: str | None) -> int | None:
    if leader is None or node_id is None or node_id == leader.get("node"):
        return None
    followers, last = leader.get("followers"), _int(leader.get("last_index"))
    progress = followers.get(node_id) if isinstance(followers, dict) else None
    match = _int(progress.get("match")) if isinstance(progress, dict) else None
    return None if last is None or match is None else last - match


async def query_statuses(where: Target) -> StatusView:
    """Ask every URL of ``where`` for its status at once, each within ``where.timeout_s``.

    With a cluster file, the members the leader's configuration lists but the file does not
    (nodes that joined later) are asked too, at the client URLs of their addresses.
    """
    answers = await _query_all(where, list(zip(where.urls, where.ids, strict=False)))
    view = StatusView(answers)
    leader = view.leader()
    if where.cluster is None or leader is None:
        return view
    members: set[str] = set()
    for key in ("voters", "learners"):
        ids = leader.get(key)
        if isinstance(ids, list):
            members.update(map(str, ids))
    missing = members - {a.id for a in answers}
    if not missing:
        return view
    leader_url = next(a.url for a in answers if a.status is leader)
    with trio.move_on_after(where.timeout_s):
        try:
            async with open_client(
                [leader_url],
                token=where.token,
                timeout_s=where.timeout_s,
                ssl_context=where.ssl_context,
            ) as kv:
                configuration = await kv.members()
        except (KVError, OSError):
            return view
        more: list[tuple[str, str | None]] = []
        for key in ("voters", "learners"):
            group = configuration.get(key)
            for node_id, address in group.items() if isinstance(group, dict) else ():
                url = client_url(address)
                if str(node_id) in missing and url is not None:
                    more.append((url, str(node_id)))
        view = StatusView(answers + await _query_all(where, sorted(more, key=lambda m: m[1] or "")))
    return view


async def _query_all(where: Target, nodes: list[tuple[str, str | None]]) -> tuple[NodeAnswer, ...]:
    answers: list[NodeAnswer | None] = [None] * len(nodes)

    async def one(i: int) -> None:
        answers[i] = await _query(where, *nodes[i])

    async with trio.open_nursery() as nursery:
        for i in range(len(nodes)):
            nursery.start_soon(one, i)
    return tuple(a for a in answers if a is not None)


async def _query(where: Target, url: str, node_id: str | None) -> NodeAnswer:
    with trio.move_on_after(where.timeout_s):
        verdict = await probe(url, where.ssl_context, where.cluster, where.timeout_s)
        if not verdict.ok:
            return NodeAnswer(url, node_id, None, verdict.problem)
        try:
            async with open_client(
                [url], token=where.token, timeout_s=where.timeout_s, ssl_context=where.ssl_context
            ) as kv:
                status = await kv.status()
        except (KVError, OSError) as exc:
            return NodeAnswer(url, node_id, None, explain_client_error(exc, admin=False))
        return NodeAnswer(url, str(status.get("node", node_id)), status, None)
    return NodeAnswer(
        url, node_id, None,
        f"{url}: no answer within {where.timeout_s:g} s; raise --timeout if the node is busy",
    )  # fmt: skip
