"""A replicated key-value service on trio-raft, with a WebSocket protocol and a Python client.

Run a node with a :class:`KVStateMachine`, serve it with :func:`serve_kv`, and talk to the
cluster with :func:`open_client`::

    async with trio_raft.kv.open_client(["ws://10.0.0.1:7001/kv"]) as kv:
        await kv.put("greeting", b"hello")
        assert await kv.get("greeting") == b"hello"

Writes are exactly-once: each carries the client's session id and a sequence number, and the
state machine ignores a retry it has already applied. Reads are linearizable unless a call asks
for ``consistency="stale"``.

The errors, all :class:`~trio_raft.RaftError`::

    RaftError
    └── KVError                   base of every error of the KV service
        ├── KVTimeoutError        the call's timeout expired: a write's outcome is UNKNOWN
        ├── KVRequestError        invalid request (also a ValueError): fix the call, no retry
        │   └── StaleSequenceError   a write older than its session's last one (a client bug)
        ├── KVAuthError           the token was refused: fix the token, no retry
        ├── SessionExpiredError   the session was evicted: its write may have been applied
        ├── KVNoSpaceError        the leader is low on disk: only deletes are accepted
        ├── KVServerError         the server failed unexpectedly: report a bug
        ├── MembershipRefusedError   a membership change was refused: NOTHING changed (.code)
        ├── TransferFailedError   a leadership transfer did not complete
        └── ClientClosedError     the client was used after its ``async with`` block ended
"""

from .._util import fixup_module_metadata as _fixup_module_metadata
from ._blocking import BlockingKVClient as BlockingKVClient
from ._blocking import open_blocking_client as open_blocking_client
from ._client import USE_CLIENT_DEFAULT as USE_CLIENT_DEFAULT
from ._client import KVClient as KVClient
from ._client import UseClientDefault as UseClientDefault
from ._client import open_client as open_client
from ._protocol import MAX_KEY_BYTES as MAX_KEY_BYTES
from ._protocol import MAX_LIST_LIMIT as MAX_LIST_LIMIT
from ._protocol import MAX_VALUE_BYTES as MAX_VALUE_BYTES
from ._protocol import ClientClosedError as ClientClosedError
from ._protocol import CommandFailedError as CommandFailedError
from ._protocol import ErrorCode as ErrorCode
from ._protocol import KVAuthError as KVAuthError
from ._protocol import KVError as KVError
from ._protocol import KVNoSpaceError as KVNoSpaceError
from ._protocol import KVRequestError as KVRequestError
from ._protocol import KVServerError as KVServerError
from ._protocol import KVTimeoutError as KVTimeoutError
from ._protocol import MembershipRefusedError as MembershipRefusedError
from ._protocol import OutcomeUnknownError as OutcomeUnknownError
from ._protocol import SessionExpiredError as SessionExpiredError
from ._protocol import StaleSequenceError as StaleSequenceError
from ._protocol import TransferFailedError as TransferFailedError
from ._server import KVServer as KVServer
from ._server import serve_kv as serve_kv
from ._state_machine import KVStateMachine as KVStateMachine
from ._stats import KVServerStatistics as KVServerStatistics

_fixup_module_metadata(__name__, globals())
del _fixup_module_metadata
