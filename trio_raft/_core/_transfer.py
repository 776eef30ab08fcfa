"""Leadership transfer (Raft thesis §3.10): the leader stops taking proposals, brings the
target up to date, and sends it ``TimeoutNow``; the target campaigns at once. These are the
pure parts; :class:`~trio_raft._core._state.RaftState` drives them."""

from __future__ import annotations

from collections.abc import Collection, Mapping

import attrs

from .._errors import InvalidMembershipError, LeadershipTransferError
from .._types import Membership, NodeId
from ._membership import choose_successor


@attrs.define
class Transfer:
    """A leadership transfer in progress (leader only)."""

    target: NodeId
    deadline: float
    """When the leader gives up and accepts proposals again."""
    lag: int
    """How far behind the target was when the transfer began."""
    sent: bool = False
    """Whether ``TimeoutNow`` went out."""

    def failure(self) -> str:
        """Why the transfer was abandoned at its deadline, for ``Status`` and the error."""
        return (
            f"leadership transfer to {self.target!r} timed out: it was {self.lag} entries "
            f"behind when the transfer began, and TimeoutNow "
            f"{'was sent' if self.sent else 'was never sent (it did not catch up)'}"
        )


def pick_target(
    m: Membership,
    target: NodeId | None,
    leader: NodeId,
    match: Mapping[NodeId, int],
    live: Collection[NodeId],
    live_window_s: float,
) -> NodeId:
    """The voter to hand leadership to: ``target`` if it is one, else (``None``) the live
    voter holding the most of the log (see
    :func:`~trio_raft._core._membership.choose_successor`).

    Raises:
        InvalidMembershipError: ``target`` is not a voter (rule ``not_a_voter``), or
            ``leader`` is the only voter (``no_other_voter``).
        LeadershipTransferError: ``target`` is None and no other voter answered within
            ``live_window_s``.
    """
    others = m.voters - {leader}
    if not others:
        raise InvalidMembershipError(
            f"{leader!r} is the only voter: there is no one to hand leadership to (add "
            "and promote another node first)",
            "no_other_voter",
        )
    if target is None:
        chosen = choose_successor(m, match, live, leader)
        if chosen is None:
            raise LeadershipTransferError(
                f"no other voter ({', '.join(sorted(others))}) answered within "
                f"{live_window_s} s; leadership stays here",
                None,
                moved=False,
            )
        return chosen
    if target not in m.voters:
        raise InvalidMembershipError(
            f"{target!r} is not a voter (voters: {', '.join(sorted(m.voters))}); only a "
            "voter can lead",
            "not_a_voter",
        )
    return target
