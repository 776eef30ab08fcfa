"""WAL append records are built around each command's cached encoding: the same bytes as
encoding the whole record, for proposed, fresh and decoded entries alike."""

from __future__ import annotations

import datetime

import cbor2
import hypothesis.strategies as st
import pytest
from hypothesis import given

from tests._strategies import commands
from trio_raft import Membership
from trio_raft._codec import command_bytes, encode_command
from trio_raft._types import MAX_INDEX, MAX_TERM, Entry, EntryKind
from trio_raft._wal._segments import Append, decode_record, encode_append


def reference(entry: Entry) -> bytes:
    command = entry.command
    if isinstance(command, Membership):
        command = command.to_plain()
    return cbor2.dumps([0, entry.index, entry.term, int(entry.kind), command])


@given(commands, st.integers(1, MAX_TERM), st.integers(1, MAX_INDEX))
def test_append_records_are_byte_for_byte_those_of_the_whole_record(
    command: object, term: int, index: int
) -> None:
    fresh = Entry(term, index, command)
    proposed = Entry(term, index, encode_command(command))
    expected = reference(fresh)
    assert encode_append(fresh) == expected
    assert encode_append(fresh) == expected  # from the cache it filled
    assert encode_append(proposed) == expected
    record = decode_record(expected)
    assert isinstance(record, Append)
    assert encode_append(record.entry) == expected


@pytest.mark.parametrize(
    "entry",
    [
        Entry(2, 7, None, EntryKind.NOOP),
        Entry(
            2, 7, Membership({"a", "b"}, addresses={"a": "ws://a:1", "b": None}), EntryKind.CONFIG
        ),
    ],
)
def test_no_op_and_configuration_records(entry: Entry) -> None:
    assert encode_append(entry) == reference(entry)
    assert command_bytes(entry) == reference(entry)[5:]  # after [0, 7, 2, kind,


def test_a_command_outside_the_wire_model_is_stored_as_before() -> None:
    """Only a storage used on its own sees one (the node refuses it at ``propose``); CBOR
    encodes it (a tag) and nothing is cached."""
    entry = Entry(1, 1, {"when": datetime.date(2026, 1, 2)})
    assert encode_append(entry) == reference(entry)
    assert entry._encoded is None


def test_an_unencodable_command_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="entry 1: the command cannot be stored"):
        encode_append(Entry(1, 1, object()))
