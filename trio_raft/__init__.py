"""trio-raft: Raft consensus for trio applications.

Embed a replicated state machine with :func:`open_node`; test it under adversity with the
deterministic simulator in :mod:`trio_raft.testing`.
"""

from ._abc import IndexedStateMachine as IndexedStateMachine
from ._abc import MembershipAwareTransport as MembershipAwareTransport
from ._abc import SnapshottingStateMachine as SnapshottingStateMachine
from ._abc import StateMachine as StateMachine
from ._abc import Storage as Storage
from ._abc import Transport as Transport
from ._codec import FrameError as FrameError
from ._config import Config as Config
from ._errors import InvalidMembershipError as InvalidMembershipError
from ._errors import LeadershipLostError as LeadershipLostError
from ._errors import LeadershipTransferError as LeadershipTransferError
from ._errors import LearnerNotCaughtUpError as LearnerNotCaughtUpError
from ._errors import LogCompactedError as LogCompactedError
from ._errors import LogIndexError as LogIndexError
from ._errors import MembershipChangeInProgressError as MembershipChangeInProgressError
from ._errors import MembershipError as MembershipError
from ._errors import NodeClosedError as NodeClosedError
from ._errors import NodeCrashedError as NodeCrashedError
from ._errors import NoSpaceError as NoSpaceError
from ._errors import NotLeaderError as NotLeaderError
from ._errors import ProposalDroppedError as ProposalDroppedError
from ._errors import QuorumUnavailableError as QuorumUnavailableError
from ._errors import RaftError as RaftError
from ._errors import TooManyUncommittedError as TooManyUncommittedError
from ._errors import TrioRaftDeprecationWarning as TrioRaftDeprecationWarning
from ._events import Event as Event
from ._events import EventsDropped as EventsDropped
from ._events import LeaderChanged as LeaderChanged
from ._events import MembershipChanged as MembershipChanged
from ._events import RoleChanged as RoleChanged
from ._log_view import LogPosition as LogPosition
from ._log_view import LogView as LogView
from ._messages import AppendRequest as AppendRequest
from ._messages import AppendResponse as AppendResponse
from ._messages import Message as Message
from ._messages import SnapshotRequest as SnapshotRequest
from ._messages import SnapshotResponse as SnapshotResponse
from ._messages import TimeoutNow as TimeoutNow
from ._messages import VoteRequest as VoteRequest
from ._messages import VoteResponse as VoteResponse
from ._node import Node as Node
from ._node import open_node as open_node
from ._proposal import Proposal as Proposal
from ._serve import serve_state_machine as serve_state_machine
from ._statistics import Histogram as Histogram
from ._statistics import NodeStatistics as NodeStatistics
from ._status import FollowerStatus as FollowerStatus
from ._status import Status as Status
from ._storage import MemoryStorage as MemoryStorage
from ._transport import PeerStatistics as PeerStatistics
from ._transport import TransportStatistics as TransportStatistics
from ._transport import WebSocketTransport as WebSocketTransport
from ._transport import open_websocket_transport as open_websocket_transport
from ._types import Entry as Entry
from ._types import EntryKind as EntryKind
from ._types import HardState as HardState
from ._types import Membership as Membership
from ._types import NodeId as NodeId
from ._types import Role as Role
from ._types import RoleChangeReason as RoleChangeReason
from ._types import SnapshotMeta as SnapshotMeta
from ._types import StoredState as StoredState
from ._util import fixup_module_metadata as _fixup_module_metadata
from ._version import __version__ as __version__
from ._wal._errors import StorageCorruptError as StorageCorruptError
from ._wal._errors import StorageError as StorageError
from ._wal._errors import StorageFullError as StorageFullError
from ._wal._errors import StorageIdentityError as StorageIdentityError
from ._wal._errors import StorageLockedError as StorageLockedError
from ._wal._file_storage import FileStorage as FileStorage
from ._wal._file_storage import FileStorageStatistics as FileStorageStatistics
from ._wal._file_storage import open_file_storage as open_file_storage

_fixup_module_metadata(__name__, globals())
del _fixup_module_metadata
