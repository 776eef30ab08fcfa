"""Testing tools for trio-raft and for the state machines you build on it.

The centre is a deterministic simulator: :func:`open_simulated_cluster` runs real
:class:`~trio_raft.Node` task trees on a seeded, fault-injecting :class:`MemoryNetwork` and
crash-losing :class:`SimulatedStorage`, under trio's virtual clock, while an
:class:`InvariantChecker` verifies Raft's safety properties at every step. Around it:
a history recorder and linearizability checker (:class:`History`, :func:`check_linearizable`),
a KV state machine for workloads (:class:`KVStateMachine`), fault schedules (:class:`Fault`) and
the full randomized recipe (:func:`run_chaos`).
"""

from .._util import fixup_module_metadata as _fixup_module_metadata
from ._cluster import SimulatedCluster as SimulatedCluster
from ._cluster import open_simulated_cluster as open_simulated_cluster
from ._history import History as History
from ._history import Operation as Operation
from ._history import OperationHandle as OperationHandle
from ._invariants import InvariantChecker as InvariantChecker
from ._invariants import InvariantViolation as InvariantViolation
from ._kv import KVStateMachine as KVStateMachine
from ._kv import kv_step as kv_step
from ._linearizability import LinearizabilityResult as LinearizabilityResult
from ._linearizability import check_linearizable as check_linearizable
from ._network import LinkFaults as LinkFaults
from ._network import MemoryNetwork as MemoryNetwork
from ._network import MemoryTransport as MemoryTransport
from ._network import MessageStatistics as MessageStatistics
from ._network import NetworkStatistics as NetworkStatistics
from ._network import Verdict as Verdict
from ._network import WireCodecError as WireCodecError
from ._storage import SimulatedStorage as SimulatedStorage
from ._workload import ACTIONS as ACTIONS
from ._workload import CHAOS_CONFIG as CHAOS_CONFIG
from ._workload import MEMBERSHIP_ACTIONS as MEMBERSHIP_ACTIONS
from ._workload import ChaosReport as ChaosReport
from ._workload import Fault as Fault
from ._workload import KVClients as KVClients
from ._workload import MembershipNemesis as MembershipNemesis
from ._workload import apply_fault as apply_fault
from ._workload import longest_live_majority as longest_live_majority
from ._workload import random_schedule as random_schedule
from ._workload import run_chaos as run_chaos

_fixup_module_metadata(__name__, globals())
del _fixup_module_metadata
