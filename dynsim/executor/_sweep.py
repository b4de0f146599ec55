"""Sweeps: the axes of an ensemble and its members.

A :class:`Sweep` is the Cartesian product of its axes. Each point is a *member*, identified by its flat index in C
order over :data:`AXES`. ``optimizer``, ``width`` and ``batch_size`` are *static*: they change the compiled program
(the optimizer's state, the padded width, the shape of a step's batch), so members that differ in them run in
different programs. Everything else is *traced*: a member's learning rate, learning-rate schedule (its multiplier
of every step, computed on the host from the schedule's name), seed, init scale, weight decay, momentum and
parametrization exponents are arrays with a leading member axis, so members that differ only in those
share one compiled program.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from .. import param as _param
from ..optim import OPTIMIZERS, check_schedule

__all__ = ["Sweep", "AXES"]

AXES = ("optimizer", "param", "width", "batch_size", "schedule", "lr", "seed", "init_scale", "weight_decay", "momentum")


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
      batch_size: samples per step, 0 for full batch (static: one program per batch size); default ``(0,)``. A
        single batch size is a setting of the run, not a dimension of its results (:attr:`dims`).
      schedule: learning-rate schedules by name (:func:`dynsim.optim.schedule_multipliers`: ``"constant"``,
        ``"cosine"``, ``"linear"``, ``"step"``, ``"wsd:F"``); traced, so all schedules share one program. Default
        ``("constant",)``, which is no dimension of the results (:attr:`dims`).
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
    batch_size: tuple[int, ...] = (0,)
    schedule: tuple[str, ...] = ("constant",)
    param: tuple[str, ...] = ("mup",)
    optimizer: tuple[str, ...] = ("sgd",)
    init_scale: tuple[float, ...] = (1.0,)
    weight_decay: tuple[float, ...] = (0.0,)
    momentum: tuple[float, ...] = (0.0,)

    def __post_init__(self):
        kinds = dict(optimizer=str, param=str, width=int, batch_size=int, schedule=str, lr=float, seed=int,
                     init_scale=float, weight_decay=float, momentum=float)
        for name, kind in kinds.items():
            object.__setattr__(self, name, _tuple(name, getattr(self, name), kind))
        for w in self.width:
            if w < 1:
                raise ValueError(f"sweep width must be positive, got {w}.")
        for b in self.batch_size:
            if b < 0:
                raise ValueError(f"sweep batch_size must be >= 0 (0 = full batch), got {b}.")
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
        for name in self.schedule:
            check_schedule(name)
        for o in self.optimizer:
            if o not in OPTIMIZERS:
                raise ValueError(f"unknown optimizer {o!r}; choose one of {', '.join(OPTIMIZERS)}.")
        for s in self.seed:
            if not 0 <= s < 2**32:  # without x64 a PRNG key keeps 32 bits of its seed: larger ones repeat smaller
                raise ValueError(f"sweep seed must lie in [0, 2**32), got {s}.")

    @property
    def dims(self) -> tuple[str, ...]:
        """The axes that are dimensions of the results: :data:`AXES`, less ``batch_size`` when it holds one value
        and less ``schedule`` when it is the default ``("constant",)`` (results of such runs keep the dimensions
        they had before these became axes). Flat member indices are the same over :data:`AXES` and over these."""
        return tuple(a for a in AXES if (a != "batch_size" or len(self.batch_size) > 1)
                     and (a != "schedule" or self.traced_schedule))

    @property
    def traced_schedule(self) -> bool:
        """Whether members carry their own learning-rate schedule (any ``schedule`` but the default constant)."""
        return self.schedule != ("constant",)

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
        names = ("optimizer", "param", "schedule")
        return {a: np.asarray(getattr(self, a), dtype=object if a in names else None)[g.ravel()]
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
        """The values of the results' axes (:attr:`dims`)."""
        return {a: list(getattr(self, a)) for a in self.dims}
