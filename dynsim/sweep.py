"""Sweeps: axes -> members -> width buckets -> groups.

A :class:`Sweep` is the Cartesian product of its axes. Each point is a *member*, identified by its flat index in C
order over :data:`AXES`. ``optimizer`` and ``width`` are *static*: they change the compiled program (the optimizer's
state, the padded width). Everything else is *traced*: a member's learning rate, seed, init scale, weight decay,
momentum and parametrization exponents are arrays with a leading member axis, so members that differ only in those
share one compiled program.

:func:`plan` sorts members into width buckets, each padded to its largest width, choosing the buckets by dynamic
programming over a cost model (padded FLOPs plus compile time), and picks how many members share one vectorised
step (:func:`group_size`) from the backend and the activation footprint.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import jax
import numpy as np

from . import param as _param

__all__ = ["Sweep", "Bucket", "AXES", "plan", "group_size", "balanced"]

AXES = ("optimizer", "param", "width", "lr", "seed", "init_scale", "weight_decay", "momentum")
OPTIMIZERS = ("sgd", "adam", "adamw")


def _tuple(name, values, kind):
    if isinstance(values, (str, int, float, np.integer, np.floating, _param.Parametrization)):
        values = (values,)
    if not isinstance(values, (tuple, list)):  # an array: keep its scalars' dtype for the conversion below
        array = np.asarray(values)
        values = tuple(array) if array.ndim == 1 else tuple(array.tolist())
    if not values:
        raise ValueError(f"sweep axis {name!r} is empty; give it at least one value.")
    out = []
    for v in values:
        if kind is str:
            if name == "param" and isinstance(v, _param.Parametrization):
                v = _param.register(v)  # a custom table, swept and stored under its name
            if not isinstance(v, str):
                raise ValueError(f"sweep axis {name!r} takes names, got {v!r}.")
            out.append(str(v))
        elif kind is int:
            if isinstance(v, (bool, np.bool_)) or not float(v).is_integer():
                raise ValueError(f"sweep axis {name!r} takes integers, got {v!r}.")
            out.append(int(v))
        else:
            if isinstance(v, (bool, str, np.bool_)):
                raise ValueError(f"sweep axis {name!r} takes numbers, got {v!r}.")
            scalar = np.asarray(v)[()] if hasattr(v, "dtype") else v  # numpy or JAX scalars, 0-d arrays
            if isinstance(scalar, np.floating) and scalar.dtype.itemsize < 8:
                # the shortest decimal that rounds to the value (0.01 from jnp.logspace's float32, not
                # 0.009999999776), so that coordinates can be selected by the numbers a user typed
                out.append(float(str(scalar)))
            else:
                out.append(float(v))
    if len(set(out)) != len(out):
        raise ValueError(f"sweep axis {name!r} has repeated values {out!r}.")
    return tuple(out)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Sweep:
    """The axes of a sweep. Every axis is a tuple of values; the sweep is their Cartesian product.

    Attributes:
      width: hidden widths (static: bucketed and padded).
      lr: base learning rates.
      seed: initialisation seeds.
      param: parametrizations, by name (see :mod:`dynsim.param`) or as :class:`~dynsim.param.Parametrization`
        tables (stored under their names); default ``("mup",)``.
      optimizer: ``"sgd"`` (with the ``momentum`` axis as heavy-ball coefficient), ``"adam"`` or ``"adamw"``
        (static: one program per optimizer).
      init_scale: multiplier of every layer's init std.
      weight_decay: L2 coefficient (coupled for ``sgd``/``adam``, decoupled for ``adamw``).
      momentum: heavy-ball coefficient for ``sgd``.
    """

    width: tuple[int, ...]
    lr: tuple[float, ...]
    seed: tuple[int, ...] = (0,)
    param: tuple[str, ...] = ("mup",)
    optimizer: tuple[str, ...] = ("sgd",)
    init_scale: tuple[float, ...] = (1.0,)
    weight_decay: tuple[float, ...] = (0.0,)
    momentum: tuple[float, ...] = (0.0,)

    def __post_init__(self):
        kinds = dict(optimizer=str, param=str, width=int, lr=float, seed=int, init_scale=float,
                     weight_decay=float, momentum=float)
        for name, kind in kinds.items():
            object.__setattr__(self, name, _tuple(name, getattr(self, name), kind))
        for w in self.width:
            if w < 1:
                raise ValueError(f"sweep width must be positive, got {w}.")
        for v in self.lr:
            if not (v > 0 and math.isfinite(v)):
                raise ValueError(f"sweep lr must be positive and finite, got {v}.")
        for v in self.init_scale:
            if not (v > 0 and math.isfinite(v)):
                raise ValueError(f"sweep init_scale must be positive and finite, got {v}.")
        for v in self.momentum:
            if not 0 <= v < 1:
                raise ValueError(f"sweep momentum must lie in [0, 1), got {v}.")
        for v in self.weight_decay:
            if not math.isfinite(v):
                raise ValueError(f"sweep weight_decay must be finite, got {v}.")
        for p in self.param:
            _param.get(p)
        for o in self.optimizer:
            if o not in OPTIMIZERS:
                raise ValueError(f"unknown optimizer {o!r}; choose one of {', '.join(OPTIMIZERS)}.")
        for s in self.seed:
            if not 0 <= s < 2**32:  # without x64 a PRNG key keeps 32 bits of its seed: larger ones repeat smaller
                raise ValueError(f"sweep seed must lie in [0, 2**32), got {s}.")

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(len(getattr(self, a)) for a in AXES)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def coords(self) -> dict[str, tuple]:
        return {a: getattr(self, a) for a in AXES}

    def members(self) -> dict[str, np.ndarray]:
        """The flat member table: one array per axis, of length :attr:`size`, in C order over :data:`AXES`."""
        grids = np.meshgrid(*[np.arange(n) for n in self.shape], indexing="ij")
        return {a: np.asarray(getattr(self, a), dtype=object if a in ("optimizer", "param") else None)[g.ravel()]
                for a, g in zip(AXES, grids)}

    def sources(self) -> np.ndarray:
        """For each member, the first member that trains identically: itself, or one it duplicates.

        Adam and AdamW have no heavy-ball coefficient, so their members that differ only in ``momentum`` train the
        same numbers; the engine trains the first and copies its records to the others.
        """
        table = self.members()
        ignore_momentum = np.isin(table["optimizer"], ["adam", "adamw"])
        momentum = np.where(ignore_momentum, 0.0, np.asarray(table["momentum"], float))
        keys = zip(*(momentum if a == "momentum" else table[a] for a in AXES))
        first: dict = {}
        return np.asarray([first.setdefault(k, i) for i, k in enumerate(keys)], np.int64)

    def to_dict(self) -> dict:
        return {a: list(getattr(self, a)) for a in AXES}


@dataclasses.dataclass(frozen=True)
class Bucket:
    """Members that run in one compiled program: one optimizer, one padded width.

    Attributes:
      optimizer: the optimizer family.
      n_pad: padded width.
      members: flat member indices (sorted for the vmapped layout, in pack order for the packed one).
      group: members per vectorised step (the last group is padded by repeating a member); for the packed
        layout, member slots per pack.
      packs: packed layout only: the members of each pack (``n_pad`` is then the units per pack).
    """

    optimizer: str
    n_pad: int
    members: np.ndarray
    group: int
    packs: tuple | None = None

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
      batch: samples per step.
      done: boolean mask of members already computed (resume); they are skipped.
      backend: ``"cpu"``, ``"gpu"`` or ``"tpu"``; default: JAX's default backend.
      group: force the members per vectorised step (default: :func:`group_size`).
      compile_seconds, flop_rate: cost-model constants; compile time is charged as
        ``compile_seconds * flop_rate`` FLOPs per bucket.
      buckets: force the width buckets (lists of widths), bypassing the cost model.
      layout: ``"vmap"`` (width buckets) or ``"packed"`` (one bucket per optimizer, members packed by unit count;
        see :mod:`dynsim.packed`).
    Returns:
      Buckets, per optimizer in order of increasing padded width (packed: one bucket per optimizer).
    """
    backend = backend or jax.default_backend()
    # Measured on a 2-core CPU: about 1-1.5 s to compile a bucket's init and segment programs.
    compile_seconds = 1.5 if compile_seconds is None else compile_seconds
    # Grouped steady-state throughput: 1.5e11 FLOP/s measured on 2 CPU cores; a nominal 2e13 on accelerators.
    flop_rate = flop_rate or (1.5e11 if backend == "cpu" else 2e13)
    table = sweep.members()
    todo = np.ones(sweep.size, bool) if done is None else ~np.asarray(done, bool)
    out = []
    for opt in sweep.optimizer:
        sel = todo & (table["optimizer"] == opt)
        widths = sorted(set(table["width"][sel].tolist()))
        if not widths:
            continue
        counts = [int(np.sum(sel & (table["width"] == w))) for w in widths]
        if layout == "packed":
            from .packed import choose_capacity, pack_members

            idx = np.flatnonzero(sel)
            units, slots = choose_capacity(table["width"][idx], model.d_in, batch)
            slots = min(slots, len(idx))
            packs = tuple(idx[p] for p in pack_members(table["width"][idx], units, slots))
            out.append(Bucket(opt, units, np.concatenate(packs), slots, packs))
            continue
        if buckets is None:
            parts = _bucket_widths(widths, counts, lambda n: steps * model.flops(n, batch),
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
            g = group or group_size(n_pad, batch, len(idx), backend=backend, slab_bytes=slab_bytes,
                                    units=model.activation_units(n_pad))
            g = min(g, len(idx))
            n_dev = jax.local_device_count()
            if n_dev > 1:  # the member axis is sharded over local devices: a multiple of their count
                g = -(-g // n_dev) * n_dev
            out.append(Bucket(opt, n_pad, idx, g))
    return out
