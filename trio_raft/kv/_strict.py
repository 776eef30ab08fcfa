"""Bounded handling of untrusted CBOR: a structure check before decoding, and a describer.

Anything a stranger sends to the client port passes :func:`check_structure` before a single
value is built: a walk over the item headers, in pure Python, that stops at ``max_items`` items,
so it costs O(``max_items``) whatever the frame holds. It refuses every CBOR tag (bignums, shared
references 28/29, sets, dates, regular expressions, ...: none is part of the protocol, and each
is a way to make the decoder or a later ``repr()`` do unbounded work), indefinite lengths,
simple values other than false/true/null, nesting deeper than ``max_depth`` and truncated items.
Only then does :func:`trio_raft._codec.load_plain` decode it (no duplicate keys, only text or
byte string map keys). Whatever survives both holds only None, bool, int in
``[-2**64, 2**64 - 1]``, float, str, bytes, list and dict, at most ``max_items`` of them.

:func:`describe` is the only way error messages show such values: its output is bounded and it
never raises (``repr()`` of an int over 4,300 digits raises :exc:`ValueError`, and ``repr()`` of
a shared-reference structure can take unbounded time and memory).
"""

from __future__ import annotations

from typing import Final

__all__ = ["StructureError", "check_structure", "describe"]

_DESCRIBE_CHARS: Final = 40
_SMALL_INT: Final = 10**18
_FALSE_TRUE_NULL: Final = frozenset({20, 21, 22})
_FLOATS: Final = frozenset({25, 26, 27})


class StructureError(ValueError):
    """The bytes are not a CBOR item of the allowed shape; the message says what is wrong."""


def check_structure(data: bytes, *, max_items: int, max_depth: int) -> None:
    """Check the item headers of one CBOR item in ``data``, in O(``max_items``) steps.

    Args:
        data: The frame.
        max_items: Most data items allowed (a map entry counts as two: key and value).
        max_depth: Most nested arrays and maps allowed (a map of scalars is depth 1).

    Raises:
        StructureError: a tag, an indefinite length, a simple value other than false, true or
            null, more than ``max_items`` items, nesting deeper than ``max_depth``, a truncated
            item, or bytes after the item.
    """
    size = len(data)
    pos = 0
    items = 0
    remaining = [1]  # items left in each open container; the bottom one is the top level
    while remaining:
        if remaining[-1] == 0:
            remaining.pop()
            continue
        remaining[-1] -= 1
        if pos >= size:
            raise StructureError("truncated CBOR item")
        items += 1
        if items > max_items:
            raise StructureError(f"more than {max_items} CBOR items")
        initial = data[pos]
        pos += 1
        major, info = initial >> 5, initial & 0x1F
        if info < 24:
            argument = info
        elif info < 28:
            width = 1 << (info - 24)
            if pos + width > size:
                raise StructureError("truncated CBOR item")
            argument = int.from_bytes(data[pos : pos + width], "big")
            pos += width
        elif info == 31:
            raise StructureError("indefinite-length CBOR items are not allowed")
        else:
            raise StructureError(f"reserved CBOR additional information {info}")
        if major <= 1:  # unsigned and negative integers
            continue
        if major <= 3:  # byte and text strings
            if argument > size - pos:
                raise StructureError("truncated CBOR string")
            pos += argument
            continue
        if major <= 5:  # arrays and maps
            count = argument if major == 4 else 2 * argument
            if len(remaining) > max_depth:
                raise StructureError(f"nested deeper than {max_depth} levels")
            if count > max_items - items:
                raise StructureError(f"more than {max_items} CBOR items")
            remaining.append(count)
            continue
        if major == 6:
            raise StructureError(f"CBOR tag {describe(argument)} is not allowed (no tags are)")
        if info in _FALSE_TRUE_NULL or info in _FLOATS:
            continue
        raise StructureError(f"CBOR simple value {argument} is not allowed")
    if pos != size:
        raise StructureError(f"{size - pos} trailing bytes after the CBOR item")


def describe(value: object) -> str:
    """A short description of an untrusted value, for error messages; never raises.

    Small ints, floats, None and bools are shown; strings and byte strings by their first
    40 characters; huge ints by their size; containers and anything else by their type and
    length only (never by their contents, which may be huge or cyclic).
    """
    kind = type(value)
    if value is None or kind is bool or kind is float:
        return repr(value)
    if kind is int:
        assert isinstance(value, int)
        if -_SMALL_INT < value < _SMALL_INT:
            return repr(value)
        return f"an int of {value.bit_length()} bits"
    if kind is str or kind is bytes:
        assert isinstance(value, (str, bytes))
        text = repr(value[:_DESCRIBE_CHARS])
        return text + "..." if len(value) > _DESCRIBE_CHARS else text
    if kind is list or kind is tuple or kind is dict:
        assert isinstance(value, (list, tuple, dict))
        return f"a {kind.__name__} of {len(value)} items"
    return f"a {kind.__name__}"
