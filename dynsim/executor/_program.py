"""What a compiled group program is made of: the static :class:`Program`, the traced :class:`Hyper` numbers of its
members, their :class:`MemberState`, and the steps both layouts share (the divergence test).

The unit of compiled work is a *group*: ``G`` members of one bucket (same optimizer, same padded width) or one pack,
whose per-member numbers carry a leading member axis. A layout (:mod:`dynsim.executor`) builds their states and
advances them by ``records_per_segment * record_every`` steps inside one ``lax.scan``; both are jitted with the
static :class:`Program` as cache key, so every group of a bucket, and every later sweep with the same shapes, reuses
one executable.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .. import observables as _obs
from .. import optim as _optim
from .. import param as _param
from ..models import Model
from ..padding import pad_group
from ..tasks import Task
from ._sweep import Sweep

__all__ = ["Program", "Hyper", "MemberState", "InputError", "TRACE_COUNT", "member_hyper", "member_table",
           "divergence", "scheduled"]

# Incremented whenever a program is traced (a Python side effect at trace time), so a user can see that new numbers
# do not retrace; the tests check the same with chex.assert_max_traces around the engine's functions.
TRACE_COUNT = {"init": 0, "segment": 0}


class InputError(ValueError):
    """An argument of :func:`dynsim.run` that cannot work; the message is one sentence naming it."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class Program:
    """Everything static about a compiled group program. Hashes by value.

    Attributes:
      model: the model spec.
      task: the task spec.
      optimizer: ``"sgd"``, ``"adam"`` or ``"adamw"``.
      n_pad: padded width of the bucket.
      record_every: steps between records.
      records_per_segment: records per call of the layout's ``advance``.
      batch_size: samples per step (0: full batch).
      observables: names of the recorded observables (see :mod:`dynsim.observables`).
      diverge_factor: a member whose loss exceeds ``diverge_factor * max(loss_0, 1)`` (or is not finite) diverges.
      betas: Adam's ``(b1, b2)``.
      eps: Adam's epsilon.
      weight_decay: whether any member uses weight decay (else the transform is left out of the program).
      momentum: whether any SGD member uses momentum (else no momentum buffer is carried).
      layout: ``"vmap"`` (``n_pad`` is the padded width) or ``"packed"`` (``n_pad`` is the units per pack).
      sample_chunk: the gradient of a step is accumulated over chunks of this many samples (0: the whole batch at
        once), which bounds a step's activation memory.
      schedule: learning-rate schedule, ``"constant"`` or ``"cosine"`` (see :func:`dynsim.optim.lr_schedule`).
      warmup_steps: steps of linear warmup from 0 to the member's learning rate.
      decay_steps: total steps of the run, over which ``"cosine"`` decays to 0 (0 for ``"constant"``, so that runs
        of different lengths share the program).
      hvp: how the sharpness observables' Hessian-vector products are computed, ``"tangent"`` or ``"fd"`` (see
        :func:`dynsim.observables.hessian_matvec`).
      lr_table: whether each member's update is multiplied by its own learning-rate multiplier of the step,
        :attr:`Hyper.lr_table` (a sweep over ``schedule``; :func:`scheduled`); the static ``schedule`` is then
        ``"constant"`` without warmup, the warmup being in the table.
    """

    model: Model
    task: Task
    optimizer: str
    n_pad: int
    record_every: int
    records_per_segment: int
    batch_size: int = 0
    observables: tuple[str, ...] = ("loss", "test_loss")
    diverge_factor: float = 1e4
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: bool = True
    momentum: bool = True
    layout: str = "vmap"
    sample_chunk: int = 0
    schedule: str = "constant"
    warmup_steps: int = 0
    decay_steps: int = 0
    hvp: str = "tangent"
    lr_table: bool = False
    # Each observable's registration count, so that a program compiled before an observable was registered anew is
    # not reused after it (jit caches by the hash and equality of the program).
    observable_versions: tuple[int, ...] = dataclasses.field(init=False, repr=False)

    def __post_init__(self):
        object.__setattr__(self, "observable_versions", tuple(_obs.version(name) for name in self.observables))

    @property
    def steps_per_segment(self) -> int:
        return self.record_every * self.records_per_segment

    def schedule_fn(self):
        """The learning-rate multiplier of step ``t`` (:func:`dynsim.optim.lr_schedule`; ``None`` if constant)."""
        return _optim.lr_schedule(self.schedule, self.warmup_steps, self.decay_steps)


class Hyper(NamedTuple):
    """Traced per-member numbers (each with a leading member axis inside a group).

    Attributes:
      width: true width ``n``.
      lr: base learning rate.
      momentum: heavy-ball coefficient (SGD).
      weight_decay: weight-decay coefficient.
      init_scale: init std multiplier.
      abc: ``[3, 3]`` parametrization exponents (rows ``a, b, c``) for this member's optimizer.
      key: PRNG key data (``uint32[2]``) of the member's seed.
      lr_table: ``[steps]`` learning-rate multiplier of each step of the member's schedule (computed on the host by
        :func:`dynsim.optim.schedule_multipliers`), or ``None`` where the program has no swept schedule.
      lr_layer: per-layer multipliers of the learning rate, one per parameter array (``[depth]``), or ``None``
        (every multiplier 1, as in training). :func:`dynsim.hypergrad` sets them to 1 and differentiates through
        them (``wrt=("log_lr_layer",)``); the vmapped layout reads them, the packed layout has none.
    """

    width: jax.Array
    lr: jax.Array
    momentum: jax.Array
    weight_decay: jax.Array
    init_scale: jax.Array
    abc: jax.Array
    key: jax.Array
    lr_table: jax.Array | None = None
    lr_layer: jax.Array | None = None


def scheduled(updates, table, step, index=None):
    """``updates`` times the learning-rate multiplier of ``step`` from ``table`` (``[..., steps]``; past the last
    step, the last multiplier). Every transform of the optimizer chain after its schedule is linear in the update
    (:func:`dynsim.optim.chain`), so this is the chain's own schedule, traced per member. ``index`` picks rows of
    ``table`` for a tree of per-unit multipliers (the packed layout); then ``updates`` is ``(w_in, w_out)``."""
    at = jnp.minimum(step, table.shape[-1] - 1)
    if index is None:
        m = table[at]
        return jax.tree.map(lambda u: (m * u).astype(u.dtype), updates)
    m = table[index, at]
    return ((m[:, None] * updates[0]).astype(updates[0].dtype), (m[None, :] * updates[1]).astype(updates[1].dtype))


class MemberState(NamedTuple):
    """Per-member training state.

    Attributes:
      params: weight matrices.
      opt_state: optax state.
      alive: False once the member has diverged.
      diverged_at: step at which the member diverged, -1 if it has not.
      loss0: training loss at step 0 (reference for the divergence test).
      extra: observable state carried between records (e.g. a warm-started eigenvector).
    """

    params: tuple
    opt_state: Any
    alive: jax.Array
    diverged_at: jax.Array
    loss0: jax.Array
    extra: Any


def divergence(prog: Program, loss, loss0, alive, diverged_at, step):
    """The divergence test both layouts apply after every step: a member whose loss is not finite or exceeds
    ``diverge_factor * max(loss_0, 1)`` stops. Returns ``(alive, diverged_at)``; the layout then freezes a stopped
    member at zero, so its records are NaN from then on and its non-finite numbers stay out of the arithmetic it
    still shares a program with."""
    bad = ~jnp.isfinite(loss) | (loss > prog.diverge_factor * jnp.maximum(loss0, 1.0))
    newly = alive & bad
    return alive & ~bad, jnp.where(newly, step, diverged_at).astype(jnp.int32)


def member_hyper(sweep: Sweep, members: np.ndarray, group: int | None = None, *, table: dict | None = None) -> Hyper:
    """Traced numbers of ``members`` (flat indices), padded to ``group`` by repeating the last member.

    ``table`` is :func:`member_table` of ``sweep``, computed once per run instead of once per group.
    """
    members = pad_group(members, group)
    table = table if table is not None else member_table(sweep)
    dtype = jnp.result_type(float)
    f = lambda name: jnp.asarray(table[name][members], dtype)
    lr_table = table.get("lr_table")
    return Hyper(width=f("width"), lr=f("lr"), momentum=f("momentum"), weight_decay=f("weight_decay"),
                 init_scale=f("init_scale"), abc=jnp.asarray(table["abc"][members], dtype),
                 key=jnp.asarray(table["key"][members]),
                 lr_table=None if lr_table is None else jnp.asarray(lr_table[members], dtype))


def member_table(sweep: Sweep, steps: int | None = None, warmup_steps: int = 0) -> dict[str, np.ndarray]:
    """The sweep's member table with numeric columns, each member's parametrization exponents (``abc``) and the
    key data of its seed (``key``); with ``steps`` and a swept schedule (:attr:`Sweep.traced_schedule`), also each
    member's learning-rate multiplier of every step (``lr_table``, ``[members, steps]``, warmup included)."""
    table = sweep.members()
    out = {name: np.asarray(table[name], np.float64) for name in ("width", "lr", "momentum", "weight_decay",
                                                                   "init_scale")}
    tables = {(p, o): _param.get(p).table(o) for p in sweep.param for o in sweep.optimizer}
    out["abc"] = np.stack([tables[(p, o)] for p, o in zip(table["param"], table["optimizer"])])
    seed_keys = {s: np.asarray(jax.random.key_data(jax.random.key(s))) for s in sweep.seed}
    out["key"] = np.stack([seed_keys[int(s)] for s in table["seed"]])
    if steps is not None and sweep.traced_schedule:
        rows = {name: _optim.schedule_multipliers(name, steps, warmup_steps) for name in sweep.schedule}
        out["lr_table"] = np.stack([rows[name] for name in table["schedule"]])
    return out
