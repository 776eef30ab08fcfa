"""The identity file: which cluster and which node a data directory belongs to.

``IDENTITY`` holds one frame (the WAL's framing) whose payload is the CBOR map
``{"v": 1, "cluster_id": str, "node_id": str}``. It is written once, atomically (temporary
file, fsync, rename, directory fsync), and checked on every open that names an identity, so
that a directory from another cluster, or another node's directory, is refused instead of
silently serving the wrong data (swapped directories carry swapped votes: two leaders could be
elected in one term).
"""

from __future__ import annotations

import attrs
import cbor2

from ._errors import StorageCorruptError, StorageIdentityError
from ._fs import FileSystem
from ._segments import FRAME, Malformed, decode_cbor, frame, unframe_single

IDENTITY_FILE = "IDENTITY"
IDENTITY_TMP = "IDENTITY.tmp"
IDENTITY_VERSION = 1
_KEYS = {"v", "cluster_id", "node_id"}
MAX_IDENTITY_BYTES = 1 << 12


@attrs.frozen
class Identity:
    """A cluster id and a node id (both non-empty strings)."""

    cluster_id: str
    node_id: str


def validate_identity(cluster_id: object, node_id: object) -> Identity | None:
    """The identity ``open_file_storage`` was given, or ``None`` if neither part was.

    Raises:
        ValueError: only one part was given, or a part is not a non-empty string, or the two
            are too long to store.
    """
    if cluster_id is None and node_id is None:
        return None
    for name, value in (("cluster_id", cluster_id), ("node_id", node_id)):
        if type(value) is not str or not value:
            raise ValueError(
                f"open_file_storage: {name} must be a non-empty string when an identity is "
                f"given (pass both cluster_id and node_id, or neither), got {value!r}"
            )
    assert isinstance(cluster_id, str) and isinstance(node_id, str)
    identity = Identity(cluster_id, node_id)
    if len(encode_identity(identity)) > MAX_IDENTITY_BYTES:
        raise ValueError(
            f"open_file_storage: cluster_id and node_id together must encode to at most "
            f"{MAX_IDENTITY_BYTES} bytes"
        )
    return identity


def encode_identity(identity: Identity) -> bytes:
    """The whole identity file (one frame)."""
    return frame(
        cbor2.dumps(
            {
                "v": IDENTITY_VERSION,
                "cluster_id": identity.cluster_id,
                "node_id": identity.node_id,
            }
        )
    )


def decode_identity(data: bytes, path: str) -> Identity:
    """Parse an identity file.

    Raises:
        StorageCorruptError: it is truncated, fails its checksum or does not parse.
    """
    payload = unframe_single(data, path, "identity file")
    try:
        value = decode_cbor(payload)
        if not isinstance(value, dict) or set(value) != _KEYS:
            raise Malformed(f"expected a map with the fields {sorted(_KEYS)}")
        if value["v"] != IDENTITY_VERSION or type(value["v"]) is not int:
            raise Malformed(f"format version {value['v']!r}; this trio-raft reads 1")
        cluster_id, node_id = value["cluster_id"], value["node_id"]
        for name, part in (("cluster_id", cluster_id), ("node_id", node_id)):
            if type(part) is not str or not part:
                raise Malformed(f"{name} {part!r} is not a non-empty string")
    except Malformed as exc:
        raise StorageCorruptError(path, FRAME.size, f"identity file does not parse: {exc}") from exc
    return Identity(cluster_id, node_id)


def check_identity(found: Identity, expected: Identity, directory: str) -> None:
    """Refuse a directory whose identity is not the one the caller expects.

    Raises:
        StorageIdentityError: they differ.
    """
    if found != expected:
        raise StorageIdentityError(
            directory,
            expected_cluster_id=expected.cluster_id,
            expected_node_id=expected.node_id,
            found_cluster_id=found.cluster_id,
            found_node_id=found.node_id,
        )


def read_identity(fs: FileSystem, path: str) -> Identity | None:
    """The identity stored at ``path``, or ``None`` if there is no identity file.

    Raises:
        StorageCorruptError: the file is damaged.
    """
    if not fs.exists(path):
        return None
    file = fs.open_read(path)
    try:
        data = file.read(MAX_IDENTITY_BYTES + 1)
    finally:
        file.close()
    if len(data) > MAX_IDENTITY_BYTES:
        raise StorageCorruptError(
            path, MAX_IDENTITY_BYTES, f"identity file is larger than {MAX_IDENTITY_BYTES} bytes"
        )
    return decode_identity(data, path)
