"""Majority arithmetic: vote counting and the commit index (Raft §5.2, §5.3), for one set of
voters and for a joint configuration (thesis §4.3), which needs a majority of each of its two
sets. Every quorum decision of the core goes through the two ``joint_`` functions."""

from __future__ import annotations

import enum
from collections.abc import Collection, Mapping

from .._types import Membership, NodeId


class VoteResult(enum.Enum):
    PENDING = "pending"
    WON = "won"
    LOST = "lost"


def majority(n: int) -> int:
    """Smallest number of voters out of ``n`` that forms a majority."""
    return n // 2 + 1


def vote_result(voters: Collection[NodeId], votes: Mapping[NodeId, bool]) -> VoteResult:
    """Tally ``votes`` (voter -> granted) among ``voters``."""
    need = majority(len(voters))
    granted = sum(1 for v in voters if votes.get(v) is True)
    rejected = sum(1 for v in voters if votes.get(v) is False)
    if granted >= need:
        return VoteResult.WON
    if rejected > len(voters) - need:
        return VoteResult.LOST
    return VoteResult.PENDING


def committed_index(voters: Collection[NodeId], match: Mapping[NodeId, int]) -> int:
    """The highest index replicated on a majority of ``voters`` (missing voters count as 0)."""
    acked = sorted((match.get(v, 0) for v in voters), reverse=True)
    return acked[majority(len(acked)) - 1]


def joint_vote_result(membership: Membership, votes: Mapping[NodeId, bool]) -> VoteResult:
    """Tally ``votes`` in a possibly joint configuration: ``WON`` when a majority of
    ``voters`` and a majority of ``outgoing`` (if any) granted, ``LOST`` when either set can no
    longer be won, otherwise ``PENDING``. Votes from other nodes do not count."""
    incoming = vote_result(membership.voters, votes)
    if not membership.outgoing:
        return incoming
    outgoing = vote_result(membership.outgoing, votes)
    if VoteResult.LOST in (incoming, outgoing):
        return VoteResult.LOST
    if incoming is outgoing is VoteResult.WON:
        return VoteResult.WON
    return VoteResult.PENDING


def joint_committed_index(membership: Membership, match: Mapping[NodeId, int]) -> int:
    """The highest index replicated on a majority of ``voters`` and on a majority of
    ``outgoing`` (if any); nodes outside both sets do not count, missing voters count as 0."""
    index = committed_index(membership.voters, match)
    if membership.outgoing:
        index = min(index, committed_index(membership.outgoing, match))
    return index
