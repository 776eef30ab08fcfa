"""The configuration value and the pure change rules (thesis §4.3; etcd's confchange testdata
``joint_safety``, ``simple_safety``, ``joint_learners_next``, ``simple_promote_demote`` and the
idempotency cases, re-expressed for a design where every voter change is joint)."""

from __future__ import annotations

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trio_raft import (
    InvalidMembershipError,
    LearnerNotCaughtUpError,
    MembershipChangeInProgressError,
    QuorumUnavailableError,
)
from trio_raft._config import Config
from trio_raft._core import _membership as mb
from trio_raft._types import (
    MAX_ADDRESS_BYTES,
    MAX_ID_CHARS,
    MAX_MEMBERS,
    Entry,
    EntryKind,
    FieldError,
    Membership,
)

C3 = Membership({"n1", "n2", "n3"})


# -- the value ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field", "words"),
    [
        ({"voters": []}, "voters", "at least one voter"),
        ({"voters": ["n1"], "learners": ["n1"]}, "learners", "cannot be voter and learner"),
        ({"voters": ["n1"], "outgoing": ["n1"]}, "outgoing", "must change the voters"),
        ({"voters": [""]}, "voters", "1 to 128"),
        ({"voters": ["x" * (MAX_ID_CHARS + 1)]}, "voters", "1 to 128"),
        ({"voters": [1]}, "voters", "expected ids"),
        ({"voters": ["n1"], "learners": [None]}, "learners", "expected ids"),
        ({"voters": "n1"}, "ids", "collection of ids"),
        ({"voters": [f"n{i}" for i in range(MAX_MEMBERS + 1)]}, "voters", "at most 64"),
        ({"voters": ["n1", "n2"], "addresses": {"n1": None}}, "addresses", "missing ['n2']"),
        ({"voters": ["n1"], "addresses": {"n1": None, "n9": None}}, "addresses", "'n9'"),
        ({"voters": ["n1"], "addresses": {"n1": {1: "x"}}}, "addresses['n1']", "map key"),
        ({"voters": ["n1"], "addresses": {"n1": {1, 2}}}, "addresses['n1']", "set"),
        (
            {"voters": ["n1"], "addresses": {"n1": "u" * MAX_ADDRESS_BYTES}},
            "addresses['n1']",
            "at most 1024",
        ),
    ],
)
def test_invalid_memberships_name_the_field(
    kwargs: dict[str, object], field: str, words: str
) -> None:
    with pytest.raises(FieldError) as info:
        Membership(**kwargs)  # type: ignore[arg-type]
    assert info.value.owner == "Membership"
    assert info.value.path == field
    assert words in str(info.value)


def test_a_demoted_voter_is_outgoing_and_learner_at_once() -> None:
    """joint_learners_next: while n3 is being demoted it votes in C_old and is a learner of
    C_new; after the leave it is only a learner."""
    joint = Membership({"n1", "n2"}, {"n3"}, {"n1", "n2", "n3"})
    assert joint.is_joint
    assert joint.all_voters == {"n1", "n2", "n3"}
    assert joint.members == {"n1", "n2", "n3"}
    left = joint.leave()
    assert left == Membership({"n1", "n2"}, {"n3"})
    assert not left.is_joint


def test_addresses_default_to_none_and_are_read_only() -> None:
    m = Membership({"n1"}, {"n2"})
    assert dict(m.addresses) == {"n1": None, "n2": None}
    with pytest.raises(TypeError):
        m.addresses["n1"] = "x"  # type: ignore[index]
    source = {"n1": "ws://a", "n2": "ws://b"}
    m2 = Membership({"n1"}, {"n2"}, (), source)
    source["n1"] = "changed"
    assert m2.addresses["n1"] == "ws://a"  # a private copy


def test_equality_is_by_content_and_the_value_is_unhashable() -> None:
    a = Membership(["n2", "n1"], (), (), {"n1": {"peer": "p"}, "n2": None})
    b = Membership({"n1", "n2"}, [], [], {"n2": None, "n1": {"peer": "p"}})
    assert a == b
    assert a != Membership({"n1", "n2"})
    with pytest.raises(TypeError):
        hash(a)


def test_leave_of_a_plain_configuration_is_refused() -> None:
    with pytest.raises(ValueError, match="not joint"):
        C3.leave()


def test_leave_keeps_only_the_addresses_of_its_members() -> None:
    joint = Membership(
        {"n1", "n4"}, (), {"n1", "n2", "n3"}, {k: k for k in ("n1", "n2", "n3", "n4")}
    )
    assert dict(joint.leave().addresses) == {"n1": "n1", "n4": "n4"}


@st.composite
def memberships(draw: st.DrawFn) -> Membership:
    ids = [f"n{i}" for i in range(1, 9)]
    voters = draw(st.sets(st.sampled_from(ids), min_size=1))
    outgoing = draw(st.sets(st.sampled_from(ids)).filter(lambda o: o != voters))
    learners = draw(st.sets(st.sampled_from(ids)).map(lambda s: s - voters))
    address = (
        st.none() | st.text(max_size=30) | st.fixed_dictionaries({"peer": st.text(max_size=30)})
    )
    addresses = {m: draw(address) for m in voters | outgoing | learners}
    return Membership(voters, learners, outgoing, addresses)


@settings(max_examples=200, deadline=None)
@given(memberships())
def test_plain_form_round_trips_through_cbor(m: Membership) -> None:
    plain = m.to_plain()
    again = Membership.from_plain(cbor2.loads(cbor2.dumps(plain)))
    assert again == m
    assert cbor2.dumps(again.to_plain()) == cbor2.dumps(plain)  # canonical


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda p: p.pop("learners"), "plain"),
        (lambda p: p.update(extra=1), "plain"),
        (lambda p: p.update(voters=["n2", "n1", "n3"]), "voters"),
        (lambda p: p.update(voters=["n1", "n1", "n2", "n3"]), "voters"),
        (lambda p: p.update(voters=("n1",)), "voters"),
        (lambda p: p.update(outgoing=[1]), "outgoing"),
        (lambda p: p.update(learners=[f"x{i:03}" for i in range(MAX_MEMBERS + 1)]), "learners"),
        (lambda p: p.update(addresses={}), "addresses"),
        (lambda p: p.update(addresses=[]), "addresses"),
        (lambda p: p.update(voters=[]), "voters"),
        (lambda p: p["addresses"].pop("n3"), "addresses"),
    ],
)
def test_from_plain_refuses_anything_but_the_canonical_form(mutate: object, field: str) -> None:
    plain = C3.to_plain()
    mutate(plain)  # type: ignore[operator]
    with pytest.raises(FieldError) as info:
        Membership.from_plain(plain)
    assert info.value.path == field


@pytest.mark.parametrize("value", [None, [], "voters", {b"voters": []}, {1: 2}])
def test_from_plain_refuses_non_maps_and_odd_keys(value: object) -> None:
    with pytest.raises(FieldError):
        Membership.from_plain(value)


def test_config_entries_carry_a_membership_and_nothing_else_does() -> None:
    Entry(1, 1, C3, EntryKind.CONFIG)
    with pytest.raises(FieldError, match="carries a Membership"):
        Entry(1, 1, C3.to_plain(), EntryKind.CONFIG)
    with pytest.raises(FieldError, match="only a configuration entry"):
        Entry(1, 1, C3, EntryKind.COMMAND)
    with pytest.raises(FieldError):
        Entry(1, 1, C3, EntryKind.NOOP)


# -- the change rules --------------------------------------------------------------------------


def test_check_target_refuses_joint_targets_and_strangers_as_voters() -> None:
    """joint_safety / simple_safety: a target must be a plain configuration whose new voters
    were learners first."""
    with pytest.raises(InvalidMembershipError) as info:
        mb.check_target(C3, Membership({"n1", "n2", "n4"}, (), {"n1", "n2", "n3"}))
    assert info.value.rule == "joint_target"
    with pytest.raises(InvalidMembershipError) as info:
        mb.check_target(C3, Membership({"n1", "n2", "n3", "n4"}))
    assert info.value.rule == "not_a_learner"
    assert "n4 is not a learner" in str(info.value)
    assert isinstance(info.value, ValueError)
    mb.check_target(Membership({"n1", "n2", "n3"}, {"n4"}), Membership({"n1", "n2", "n3", "n4"}))
    mb.check_target(C3, Membership({"n1"}))  # shrinking needs no learner
    mb.check_target(C3, Membership({"n1", "n2", "n3"}, {"n4"}))  # adding a learner


def test_next_step_is_joint_exactly_when_the_voters_change() -> None:
    with_learner = Membership(
        {"n1", "n2", "n3"}, {"n4"}, (), {m: m for m in ("n1", "n2", "n3", "n4")}
    )
    assert mb.next_step(C3, with_learner) == with_learner  # simple
    target = Membership({"n1", "n2", "n4"}, (), (), {"n1": "a", "n2": "b", "n4": "d"})
    current = Membership(
        {"n1", "n2", "n3"}, {"n4"}, (), {"n1": "A", "n2": "B", "n3": "C", "n4": "D"}
    )
    step = mb.next_step(current, target)
    assert step.is_joint
    assert step.voters == target.voters
    assert step.outgoing == current.voters
    assert dict(step.addresses) == {"n1": "a", "n2": "b", "n4": "d", "n3": "C"}
    assert step.leave() == target
    assert mb.step_kind(current, step) is mb.Step.ENTER
    assert mb.step_kind(step, target) is mb.Step.LEAVE
    assert mb.step_kind(C3, with_learner) is mb.Step.SIMPLE
    with pytest.raises(ValueError, match="joint"):
        mb.next_step(step, target)


def test_step_kind_refuses_everything_but_one_step() -> None:
    joint = Membership({"n1", "n2", "n4"}, (), {"n1", "n2", "n3"})
    assert mb.step_kind(joint, C3) is None  # no way back from joint but its leave
    assert mb.step_kind(joint, Membership({"n1", "n2", "n4"}, {"n5"})) is None
    assert mb.step_kind(C3, Membership({"n1", "n2"})) is None  # voters change: joint needed
    other = Membership({"n1", "n2"}, (), {"n1", "n2", "n4"})
    assert mb.step_kind(C3, other) is None  # leaves a set that is not in force
    assert mb.step_kind(joint, Membership({"n1", "n2", "n5"}, (), {"n1", "n2", "n4"})) is None


def test_already_in_force_makes_changes_idempotent() -> None:
    """joint_idempotency / simple_idempotency: asking again for what is in force, or for where
    a joint configuration is already going, appends nothing."""
    joint = Membership({"n1", "n2", "n4"}, (), {"n1", "n2", "n3"})
    assert mb.already_in_force(C3, C3)
    assert mb.already_in_force(joint, joint.leave())
    assert not mb.already_in_force(joint, C3)
    assert not mb.already_in_force(C3, Membership({"n1", "n2"}))


def test_edits() -> None:
    m = Membership({"n1", "n2", "n3"}, {"n4"}, (), {"n1": 1, "n2": 2, "n3": 3, "n4": 4})
    assert mb.with_learner(m, "n5", "five") == Membership(
        {"n1", "n2", "n3"}, {"n4", "n5"}, (), {**m.addresses, "n5": "five"}
    )
    assert mb.with_learner(m, "n5").addresses["n5"] is None
    assert mb.with_learner(m, "n4") == m  # already a learner, address kept
    assert mb.with_learner(m, "n1", "new").voters == m.voters  # a voter keeps its role
    assert mb.with_learner(m, "n1", "new").addresses["n1"] == "new"
    assert mb.promoted(m, "n4") == Membership({"n1", "n2", "n3", "n4"}, (), (), m.addresses)
    assert mb.promoted(m, "n1") == m
    assert mb.demoted(m, "n3") == Membership({"n1", "n2"}, {"n3", "n4"}, (), m.addresses)
    assert mb.demoted(m, "n4") == m
    assert mb.without(m, "n9") == m
    assert mb.without(m, "n4") == Membership(
        {"n1", "n2", "n3"}, (), (), {"n1": 1, "n2": 2, "n3": 3}
    )
    assert mb.without(m, "n2").voters == {"n1", "n3"}
    assert "n2" not in mb.without(m, "n2").addresses
    assert mb.replaced(m, "n3", "n4") == Membership(
        {"n1", "n2", "n4"}, (), (), {"n1": 1, "n2": 2, "n4": 4}
    )
    assert mb.exactly(m, ["n1"], ["n2"], {"n2": "x"}) == Membership(
        {"n1"}, {"n2"}, (), {"n1": 1, "n2": "x"}
    )
    assert mb.exactly(m, ["n1", "n9"], [], None).addresses["n9"] is None


def test_edits_apply_to_where_a_joint_configuration_is_going() -> None:
    joint = Membership({"n1", "n2", "n4"}, (), {"n1", "n2", "n3"})
    assert mb.promoted(joint, "n4") == joint.leave()  # a retried promote: nothing to do
    assert mb.already_in_force(joint, mb.promoted(joint, "n4"))


@pytest.mark.parametrize(
    ("edit", "rule"),
    [
        (lambda: mb.without(Membership({"n1"}, {"n2"}), "n1"), "last_voter"),
        (lambda: mb.demoted(Membership({"n1"}), "n1"), "last_voter"),
        (lambda: mb.promoted(C3, "n9"), "not_a_member"),
        (lambda: mb.demoted(C3, "n9"), "not_a_member"),
        (lambda: mb.replaced(C3, "n9", "n1"), "not_a_voter"),
        (lambda: mb.replaced(C3, "n3", "n9"), "not_a_learner"),
        (lambda: mb.with_learner(C3, "", None), "limits"),
        (lambda: mb.with_learner(C3, "n4", "x" * 2000), "limits"),
        (lambda: mb.with_learner(C3, "n4", object()), "limits"),
        (lambda: mb.exactly(C3, [], ["n1"], None), "last_voter"),
        (lambda: mb.exactly(C3, "n1", [], None), "limits"),
        (lambda: mb.exactly(C3, ["n1"], ["n1"], None), "limits"),
    ],
)
def test_impossible_edits_are_refused_with_their_rule(edit: object, rule: str) -> None:
    """simple_promote_demote and the refusals of the issue: removing or demoting the last
    voter, promoting a stranger, limits."""
    with pytest.raises(InvalidMembershipError) as info:
        edit()  # type: ignore[operator]
    assert info.value.rule == rule


def test_live_majorities_of_both_sets() -> None:
    target = Membership({"n1", "n4", "n5"})
    assert mb.unreachable_voters(C3, target, {"n1", "n2", "n4"}) is None
    assert mb.unreachable_voters(C3, target, {"n1", "n2", "n3"}) == frozenset({"n4", "n5"})
    assert mb.unreachable_voters(C3, target, {"n1", "n4", "n5"}) == frozenset({"n2", "n3"})


def test_choose_successor_prefers_the_live_voter_with_the_most_log() -> None:
    m = Membership({"n1", "n2", "n3", "n4"}, {"n5"})
    match = {"n2": 7, "n3": 9, "n4": 9, "n5": 100}
    assert mb.choose_successor(m, match, {"n2", "n3", "n4", "n5"}, "n1") == "n3"  # tie: lower id
    assert mb.choose_successor(m, match, {"n2", "n4", "n5"}, "n1") == "n4"
    assert mb.choose_successor(m, match, {"n5"}, "n1") is None  # learners never lead


# -- which configuration is in force (MembershipLog) -----------------------------------------


def _config(index: int, m: Membership) -> Entry:
    return Entry(1, index, m, EntryKind.CONFIG)


def test_membership_log_follows_append_truncate_compact_and_install() -> None:
    boot = Membership({"n1"})
    c2 = Membership({"n1"}, {"n2"})
    c3 = Membership({"n1", "n2"}, (), {"n1"})
    log = mb.MembershipLog(boot, None, 0, [Entry(1, 1, "x")])
    assert (log.current, log.index) == (boot, 0)
    assert log.appended([Entry(1, 2, "y"), _config(3, c2)])
    assert (log.current, log.index) == (c2, 3)
    assert log.appended([_config(5, c3)])
    assert log.at(4) == c2 and log.at(2) == boot and log.at(9) == c3
    assert log.truncated(5) and log.current == c2  # rolled back with its entry
    assert not log.truncated(6)
    log.compacted(4)  # folds c2 (index 3) into the base
    assert (log.current, log.index) == (c2, 3) and log.entries() == []
    assert log.appended([_config(6, c3)])
    assert not log.installed(7, c3, kept=True)  # the log matched: same configuration
    assert (log.current, log.index) == (c3, 6)
    assert log.installed(20, Membership({"n1", "n2"}), kept=False)
    assert (log.current, log.index) == (Membership({"n1", "n2"}), 20)
    assert not log.installed(30, None, kept=False) or log.current == boot  # an old snapshot


def test_membership_log_refuses_a_snapshot_that_contradicts_a_matching_log() -> None:
    log = mb.MembershipLog(C3, None, 0, [_config(1, C3)])
    with pytest.raises(AssertionError, match="Log Matching"):
        log.installed(5, Membership({"n1"}), kept=True)


def test_a_snapshot_replaces_a_bootstrap_configuration() -> None:
    """A node whose log never held a configuration (bootstrap in force) takes the one a
    matching snapshot carries."""
    log = mb.MembershipLog(C3, None, 0, [])
    new = Membership({"n1", "n2", "n3"}, {"n4"})
    assert log.installed(5, new, kept=True)
    assert (log.current, log.index) == (new, 5)
    joining = mb.MembershipLog(None, None, 0, [])
    assert joining.current is None
    assert joining.installed(9, new, kept=False) and joining.current == new


# -- check_change: the leader's checks, in order -------------------------------------------------


def _facts(**overrides: object) -> mb.LeaderFacts:
    base: dict[str, object] = {
        "index": 5,
        "commit": 7,
        "ready": True,
        "transfer_target": None,
        "caught_up": {"n4": (10.0, 0)},
        "live": frozenset({"n1", "n2", "n3", "n4"}),
    }
    base.update(overrides)
    return mb.LeaderFacts(**base)  # type: ignore[arg-type]


C3_L4 = Membership({"n1", "n2", "n3"}, learners={"n4"})
C4 = Membership({"n1", "n2", "n3", "n4"})
JOINT = Membership({"n1", "n2"}, outgoing={"n1", "n2", "n3"})


@pytest.mark.parametrize(
    ("current", "target", "facts", "error", "words"),
    [
        (C3, Membership({"n9"}), _facts(), InvalidMembershipError, "n9"),
        (C3, C3_L4, _facts(transfer_target="n2"), MembershipChangeInProgressError,
         "leadership transfer to 'n2'"),
        (C3, C3_L4, _facts(index=8), MembershipChangeInProgressError, "committed up to 7"),
        (JOINT, Membership({"n1", "n2"}, learners={"n3"}), _facts(),
         MembershipChangeInProgressError, "in flight"),
        (C3, C3_L4, _facts(ready=False), MembershipChangeInProgressError, "just elected"),
        (C3_L4, C4, _facts(caught_up={"n4": (0.1, 3)}), LearnerNotCaughtUpError,
         "3 entries behind"),
        (C3_L4, C4, _facts(caught_up={}), LearnerNotCaughtUpError, "None entries behind"),
        (C3_L4, C4, _facts(live=frozenset({"n1", "n4"})), QuorumUnavailableError,
         "unreachable: n2, n3"),
        (C3_L4, C4, _facts(), None, ""),
    ],
)  # fmt: skip
def test_check_change(
    current: Membership,
    target: Membership,
    facts: mb.LeaderFacts,
    error: type[Exception] | None,
    words: str,
) -> None:
    """Each refusal of a membership change names its cause; a change that passes every
    check returns."""
    if error is None:
        mb.check_change(current, target, facts, Config())
        return
    with pytest.raises(error, match=words):
        mb.check_change(current, target, facts, Config())
