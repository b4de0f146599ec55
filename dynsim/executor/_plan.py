"""Planning: members -> width buckets -> groups -> storage chunks, the layout, and the memory they need.

:func:`plan` sorts the members of each optimizer and batch size (both shape the program) into width buckets, each
padded to its largest width (:mod:`dynsim.padding`), choosing the buckets by dynamic programming over a cost model
(padded FLOPs plus compile time), and picks how many members share one vectorised step (:func:`group_size`) from the
backend and the activation footprint. The packed layout puts the members of one optimizer and batch size into packs
instead (:func:`choose_capacity`, :func:`pack_members`).
:func:`choose_layout` picks the layout, :func:`fit_groups` shrinks groups that would not fit a device, and
:func:`chunks` splits a bucket into the chunks the store writes.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from .. import observables as _obs
from ._packed import choose_capacity, pack_members
from ._program import InputError, Program
from ._sweep import Sweep

__all__ = ["Bucket", "plan", "group_size", "balanced", "chunks", "choose_layout", "fit_groups", "packs_fit",
           "check_memory", "memory_estimate", "memory_limit", "device_share"]


@dataclasses.dataclass(frozen=True)
class Bucket:
    """Members that run in one compiled program: one optimizer, one batch size, one padded width.

    Attributes:
      optimizer: the optimizer family.
      n_pad: padded width.
      members: flat member indices (sorted for the vmapped layout, in pack order for the packed one).
      group: members per vectorised step (the last group is padded by repeating a member); for the packed
        layout, member slots per pack.
      packs: packed layout only: the members of each pack (``n_pad`` is then the units per pack).
      batch_size: samples per step of these members (0: full batch).
    """

    optimizer: str
    n_pad: int
    members: np.ndarray
    group: int
    packs: tuple | None = None
    batch_size: int = 0

    @property
    def n_groups(self) -> int:
        return len(self.packs) if self.packs is not None else -(-len(self.members) // self.group)

    def member_groups(self) -> list[np.ndarray]:
        """Members of each vectorised step, in order."""
        if self.packs is not None:
            return list(self.packs)
        return [self.members[i:i + self.group] for i in range(0, len(self.members), self.group)]


def group_size(n_pad: int, batch: int, n_members: int, *, backend: str | None = None,
               slab_bytes: float | None = None, depth: int = 2, itemsize: int = 4, units: int | None = None) -> int:
    """How many members share one vectorised step.

    Members are grouped so that one group's hidden activations, ``group * units * batch * itemsize`` bytes with
    ``units = n_pad * (depth - 1)`` unless the model states its own (``model.activation_units``), are about
    ``slab_bytes``. On CPU the default is 16 MB: in the width-major layout grouped steps run at
    140-185 GFLOP/s on 2 cores against 60-140 for one member at a time, and throughput falls off only above
    about 32 MB per group (measured with ``benchmarks/throughput.py``). On GPU/TPU the default is 1 GiB, which in
    practice puts a whole bucket in one group: that is what fills the device.

    The group is then balanced, ``ceil(n / ceil(n / g))``, so that a bucket splits into equal groups instead of
    full groups plus a mostly padded last one.
    """
    backend = backend or jax.default_backend()
    slab = slab_bytes or (16e6 if backend == "cpu" else 2**30)
    units = units if units is not None else n_pad * max(depth - 1, 1)
    return balanced(n_members, max(1, int(slab // (units * max(batch, 1) * itemsize))))


def balanced(n_members: int, group: int, n_dev: int = 1) -> int:
    """The group size that splits ``n_members`` into equal groups of at most ``group``, ``ceil(n / ceil(n / g))``,
    rounded up to a multiple of ``n_dev`` (the member axis is sharded over that many devices)."""
    n = max(n_members, 1)
    g = min(max(group, 1), n)
    g = -(-n // -(-n // g))
    return -(-g // n_dev) * n_dev


def _bucket_widths(widths: Sequence[int], counts: Sequence[int], flops_fn, compile_cost: float) -> list[list[int]]:
    """Partition sorted widths into contiguous buckets minimising sum(count * flops(pad)) + compile_cost * #buckets."""
    k = len(widths)
    best = [0.0] + [math.inf] * k
    cut = [0] * (k + 1)
    for j in range(1, k + 1):
        for i in range(j):
            cost = best[i] + compile_cost + sum(counts[i:j]) * flops_fn(widths[j - 1])
            if cost < best[j]:
                best[j], cut[j] = cost, i
    out, j = [], k
    while j > 0:
        out.append(list(widths[cut[j]:j]))
        j = cut[j]
    return out[::-1]


def plan(sweep: Sweep, model, *, steps: int, batch: int, done: np.ndarray | None = None,
         backend: str | None = None, group: int | None = None, slab_bytes: float | None = None,
         compile_seconds: float | None = None, flop_rate: float | None = None,
         buckets: Sequence[Sequence[int]] | None = None, layout: str = "vmap") -> list[Bucket]:
    """Sort the members of ``sweep`` that are not ``done`` into buckets.

    Args:
      sweep: the sweep.
      model: model spec (needs ``flops(width, n_samples)``).
      steps: training steps (weights the FLOP term of the cost model).
      batch: samples per step of members whose batch size is 0 (full batch: the training set's size).
      done: boolean mask of members already computed (resume); they are skipped.
      backend: ``"cpu"``, ``"gpu"`` or ``"tpu"``; default: JAX's default backend.
      group: force the members per vectorised step (default: :func:`group_size`).
      compile_seconds, flop_rate: cost-model constants; compile time is charged as
        ``compile_seconds * flop_rate`` FLOPs per bucket.
      buckets: force the width buckets (lists of widths), bypassing the cost model. A model that is not
        ``paddable`` (:class:`dynsim.models.Model`) gets one bucket per width, and a forced bucket of several
        widths is refused.
      layout: ``"vmap"`` (width buckets) or ``"packed"`` (one bucket per optimizer, members packed by unit count).
    Returns:
      Buckets, per optimizer and batch size in order of increasing padded width (packed: one bucket per optimizer
      and batch size).
    """
    backend = backend or jax.default_backend()
    # Measured on a 2-core CPU: about 1-1.5 s to compile a bucket's init and segment programs.
    compile_seconds = 1.5 if compile_seconds is None else compile_seconds
    # Grouped steady-state throughput: 1.5e11 FLOP/s measured on 2 CPU cores; a nominal 2e13 on accelerators.
    flop_rate = flop_rate or (1.5e11 if backend == "cpu" else 2e13)
    table = sweep.members()
    todo = np.ones(sweep.size, bool) if done is None else ~np.asarray(done, bool)
    out = []
    for opt, batch_size in itertools.product(sweep.optimizer, sweep.batch_size):
        sel = todo & (table["optimizer"] == opt) & (table["batch_size"] == batch_size)
        widths = sorted(set(table["width"][sel].tolist()))
        if not widths:
            continue
        counts = [int(np.sum(sel & (table["width"] == w))) for w in widths]
        samples = batch_size or batch
        if layout == "packed":
            idx = np.flatnonzero(sel)
            units, slots = choose_capacity(table["width"][idx], model.d_in, samples)
            slots = min(slots, len(idx))
            packs = tuple(idx[p] for p in pack_members(table["width"][idx], units, slots))
            out.append(Bucket(opt, units, np.concatenate(packs), slots, packs, batch_size))
            continue
        if not model.paddable:  # each width at its exact size (dynsim.models.Model.paddable)
            if buckets is not None and any(len(set(b) & set(widths)) > 1 for b in buckets):
                raise ValueError(f"{type(model).__name__} cannot be padded, so a forced bucket holds one "
                                 f"width; got buckets {list(map(list, buckets))}.")
            parts = [[w] for w in widths]
        elif buckets is None:
            parts = _bucket_widths(widths, counts, lambda n, b=samples: steps * model.flops(n, b),
                                   compile_seconds * flop_rate)
        else:
            listed = [w for b in buckets for w in b]
            if len(listed) != len(set(listed)):
                repeated = sorted({w for w in listed if listed.count(w) > 1})
                raise ValueError(f"forced buckets list widths {repeated} more than once; each width belongs to one "
                                 f"bucket.")
            parts = [[w for w in b if w in widths] for b in buckets]
            missing = set(widths) - {w for b in parts for w in b}
            if missing:
                raise ValueError(f"forced buckets miss widths {sorted(missing)}.")
            parts = [b for b in parts if b]
        for part in parts:
            n_pad = max(part)
            idx = np.flatnonzero(sel & np.isin(table["width"], part))
            g = group or group_size(n_pad, samples, len(idx), backend=backend, slab_bytes=slab_bytes,
                                    units=model.activation_units(n_pad))
            g = min(g, len(idx))
            n_dev = jax.local_device_count()
            if n_dev > 1:  # the member axis is sharded over local devices: a multiple of their count
                g = -(-g // n_dev) * n_dev
            out.append(Bucket(opt, n_pad, idx, g, batch_size=batch_size))
    return out


def chunks(bucket: Bucket, max_members: int) -> list[list[np.ndarray]]:
    """Split a bucket into storage chunks: lists of whole groups, about ``max_members`` members each."""
    out, current, size = [], [], 0
    for group in bucket.member_groups():
        if current and size + len(group) > max_members:
            out.append(current)
            current, size = [], 0
        current.append(group)
        size += len(group)
    if current:
        out.append(current)
    return out


def choose_layout(layout: str, model, observables, sweep: Sweep, batch: int) -> str:
    """Pick the layout. ``auto`` packs two-layer sweeps whose members are small or few per pack (or vmaps when the
    caller set ``group`` or ``buckets``, which belong to the vmapped layout).

    Packing compiles one program instead of one per width bucket and wastes nothing on padding, which wins when
    members are small (``batch * max_width * d_in <= 2**22`` multiply-adds per step) or a pack holds few members
    for its input dimension (``4 * M * d_out <= d_in``); on FLOP-bound shapes vmapped groups in cache-sized slabs are
    faster, and the rule keeps them (``docs/measurements.md``). With several local devices ``auto`` vmaps: only
    vmapped groups are sharded over devices, and a pack would run on one. Packs are not sharded because a pack's
    members share one matmul over their units: splitting a pack splits that matmul and adds a cross-device sum to
    every step of a program sized to stay in one core's cache, while vmapped members need no communication at all
    (``tests/test_plan.py`` checks both choices and the memory each device then holds).
    """
    packable = model.packable and all(_obs.get(name).outputs_only for name in observables)
    if layout == "auto":
        if not packable or jax.local_device_count() > 1:
            return "vmap"
        widths = np.asarray(sweep.width)
        n_members = sweep.size // max(len(sweep.optimizer) * len(sweep.batch_size), 1)  # members of one pack run
        _, slots = choose_capacity(widths, model.d_in, batch)
        slots = min(slots, n_members)
        small = batch * widths.max() * model.d_in <= 2**22
        cheap_readout = 4 * slots * model.d_out <= model.d_in
        return "packed" if (small or cheap_readout) else "vmap"
    if layout == "packed" and not packable:
        raise InputError("the packed layout needs a two-layer MLP and observables that read only its outputs "
                         f"({', '.join(o for o in _obs.names() if _obs.get(o).outputs_only)}).")
    if layout not in ("vmap", "packed"):
        raise InputError(f"layout must be 'auto', 'vmap' or 'packed', got {layout!r}.")
    return layout


def memory_limit() -> int | None:
    """Bytes the first device may use: its allocator's limit on an accelerator, the machine's memory on CPU."""
    try:
        stats = jax.devices()[0].memory_stats()
        if stats and "bytes_limit" in stats:
            return int(stats["bytes_limit"])
    except Exception:  # backends without memory stats (CPU)
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def device_share(prog: Program, group: int, n_dev: int | None = None) -> int:
    """Bytes one device holds of a group: a vmapped group's members are split over the ``n_dev`` local devices."""
    n_dev = (n_dev or jax.local_device_count()) if prog.layout == "vmap" else 1
    return memory_estimate(prog, -(-group // n_dev))


def fit_groups(buckets: list[Bucket], make_prog, n_dev: int | None = None) -> list[Bucket]:
    """Vmapped buckets whose groups would need more than 80% of a device's memory (:func:`memory_estimate` of the
    group's share on each of the ``n_dev`` local devices) get smaller groups: on accelerators a group is a whole
    bucket by default, which wide members with many parameters may not fit. A shrunk group is balanced over the
    bucket and stays a multiple of ``n_dev`` (the member axis is sharded over the devices). Deterministic for a
    machine, so a resumed run plans the same chunks. Packs are left alone."""
    limit = memory_limit()
    if limit is None:
        return buckets
    n_dev = n_dev or jax.local_device_count()
    out = []
    for b in buckets:
        group = b.group
        if b.packs is None:
            prog = make_prog(b)
            while group > n_dev and device_share(prog, group, n_dev) > 0.8 * limit:
                group = -(-group // 2)
            if group < b.group:
                group = balanced(len(b.members), group, n_dev)
        out.append(b if group == b.group else dataclasses.replace(b, group=group))
    return out


def packs_fit(buckets: list[Bucket], make_prog) -> bool:
    """Whether every pack's program fits 80% of the device's memory (:func:`memory_estimate`)."""
    limit = memory_limit()
    return limit is None or all(memory_estimate(make_prog(b), b.group) <= 0.8 * limit
                                for b in buckets if b.packs is not None)


def check_memory(need: int, bucket: Bucket) -> None:
    limit = memory_limit()
    if limit is None:
        return
    if need > 0.8 * limit:
        what = (f"a pack of {bucket.n_pad} units" if bucket.packs is not None else
                f"a group of {bucket.group} member{'s' if bucket.group > 1 else ''} at width {bucket.n_pad}")
        advice = ("use layout='vmap' with a small group" if bucket.packs is not None else
                  "pass a smaller group" if bucket.group > 1 else "use a smaller width or batch")
        raise MemoryError(f"{what} needs about {need / 2**30:.1f} GiB, more than 80% of the "
                          f"{limit / 2**30:.1f} GiB available; {advice}.")


def memory_estimate(prog: Program, group: int) -> int:
    """Bytes a group program needs, estimated before compiling.

    Parameters, gradients and optimizer state (1 extra copy for SGD, an upper bound when there is no momentum;
    2 for Adam) per member, plus
    forward activations and their gradients (about 3 copies of the ``model.activation_units(n_pad)`` numbers per
    sample), plus the shared data. In the packed layout ``n_pad`` already counts the units of all ``group`` members
    of a pack.
    """
    itemsize = jnp.dtype(jnp.result_type(float)).itemsize
    n_params = prog.model.n_params(prog.n_pad)
    copies = 3 + (2 if prog.optimizer in ("adam", "adamw") else 1)
    task = prog.task
    batch = prog.batch_size or task.n_train or 1
    evals = max(task.n_train, task.n_test)
    acts = 3 * prog.model.activation_units(prog.n_pad) * max(batch, evals)
    data = (task.d_in + task.d_out) * (task.n_train + task.n_test)
    if prog.layout == "packed":
        return int(itemsize * (copies * n_params + acts + data))
    return int(itemsize * (group * (copies * n_params + acts) + data))
