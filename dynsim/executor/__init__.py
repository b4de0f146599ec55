"""The executor: trains every member of a sweep and stores its records.

:func:`run` strings the stages together; each is a plain function or object here:

- :class:`Sweep` (the axes) and its members; :func:`plan` (width buckets, groups, packs), :func:`chunks`,
  :func:`choose_layout`, :func:`memory_estimate`;
- :class:`Program` (everything static about a compiled group program), :class:`Hyper` (a group's traced numbers,
  :func:`member_hyper`), :class:`MemberState`;
- the two layouts behind one interface, :class:`Layout`: :class:`VmapLayout` (members padded to their bucket's width,
  :mod:`dynsim.padding`) and :class:`PackedLayout` (two-layer members' units side by side);
- :func:`hypergrad`: derivatives of members' training outcomes in their hyperparameters
  (:mod:`dynsim.executor._hypergrad`);
- :class:`RunPlan` (``run(..., dry_run=True)``: the plan without the run, with memory and time estimates);
- :class:`CompileClock` and :func:`versions` (instrumentation);
- :func:`initialize_distributed` and :func:`process_index`: a run over several processes on JAX's distributed
  runtime, each training its share of the chunks into one results directory (:mod:`dynsim.executor._distributed`).
"""

from ._distributed import DistributedError as DistributedError
from ._distributed import initialize as initialize_distributed
from ._distributed import process_index as process_index
from ._dryrun import BucketPlan as BucketPlan
from ._dryrun import RunPlan as RunPlan
from ._hypergrad import MODES as HYPERGRAD_MODES
from ._hypergrad import OBJECTIVES as HYPERGRAD_OBJECTIVES
from ._hypergrad import WRT as HYPERGRAD_WRT
from ._hypergrad import group_hypergrad as group_hypergrad
from ._hypergrad import hypergrad as hypergrad
from ._layout import Layout as Layout
from ._packed import PackedLayout as PackedLayout
from ._packed import choose_capacity as choose_capacity
from ._packed import pack_members as pack_members
from ._plan import Bucket as Bucket
from ._plan import balanced as balanced
from ._plan import check_memory as check_memory
from ._plan import choose_layout as choose_layout
from ._plan import chunks as chunks
from ._plan import fit_groups as fit_groups
from ._plan import group_size as group_size
from ._plan import memory_estimate as memory_estimate
from ._plan import memory_limit as memory_limit
from ._plan import plan as plan
from ._program import TRACE_COUNT as TRACE_COUNT
from ._program import Hyper as Hyper
from ._program import InputError as InputError
from ._program import MemberState as MemberState
from ._program import Program as Program
from ._program import member_hyper as member_hyper
from ._program import member_table as member_table
from ._run import LAYOUTS as LAYOUTS
from ._run import CompileClock as CompileClock
from ._run import run as run
from ._run import versions as versions
from ._sweep import AXES as AXES
from ._sweep import Sweep as Sweep
from ._vmap import VmapLayout as VmapLayout
from ._vmap import init_group as init_group
from ._vmap import make_optimizer as make_optimizer
from ._vmap import run_segment as run_segment

__all__ = ["run", "Sweep", "AXES", "InputError", "plan", "Bucket", "group_size", "balanced", "chunks",
           "choose_layout", "fit_groups", "check_memory", "memory_estimate", "memory_limit", "Program", "Hyper",
           "MemberState", "member_hyper", "member_table", "TRACE_COUNT", "Layout", "LAYOUTS", "VmapLayout",
           "PackedLayout", "init_group", "run_segment", "make_optimizer", "choose_capacity", "pack_members",
           "hypergrad", "group_hypergrad", "HYPERGRAD_WRT", "HYPERGRAD_OBJECTIVES", "HYPERGRAD_MODES",
           "CompileClock", "versions", "initialize_distributed", "DistributedError", "process_index",
           "RunPlan", "BucketPlan"]
