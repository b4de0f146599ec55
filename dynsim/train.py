"""Training: per-member step functions and scanned segments (the executor that drives them is :mod:`dynsim.engine`).

The unit of compiled work is a *group*: ``G`` members of one bucket (same optimizer, same padded width) whose
states carry a leading member axis. :func:`init_group` builds their states and the records at step 0;
:func:`run_segment` advances them by ``records_per_segment * record_every`` steps inside one ``lax.scan`` and
returns the records. Both are jitted with the static :class:`Program` as cache key, so every group of a bucket, and
every later sweep with the same shapes, reuses one executable.

Members never interact: per-member functions are ``vmap``-ed, the shared input batch is an unbatched argument
(which turns the first layer of all members into a single matmul), and a diverged member is frozen and zeroed
inside its own slice.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from . import obs as _obs
from .models import Model, width_mask
from .tasks import Data, Task

SCHEDULES = ("constant", "cosine")

__all__ = ["Program", "Hyper", "MemberState", "make_optimizer", "lr_schedule", "init_group", "run_segment",
           "memory_estimate", "TRACE_COUNT", "SCHEDULES"]

# Incremented whenever a program is traced (a Python side effect at trace time); tests use it to prove that new
# numbers do not retrace.
TRACE_COUNT = {"init": 0, "segment": 0}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Program:
    """Everything static about a compiled group program. Hashes by value.

    Attributes:
      model: the model spec.
      task: the task spec.
      optimizer: ``"sgd"``, ``"adam"`` or ``"adamw"``.
      n_pad: padded width of the bucket.
      record_every: steps between records.
      records_per_segment: records per call of :func:`run_segment`.
      batch_size: samples per step (0: full batch).
      observables: names of the recorded observables (see :mod:`dynsim.obs`).
      diverge_factor: a member whose loss exceeds ``diverge_factor * max(loss_0, 1)`` (or is not finite) diverges.
      betas: Adam's ``(b1, b2)``.
      eps: Adam's epsilon.
      weight_decay: whether any member uses weight decay (else the transform is left out of the program).
      momentum: whether any SGD member uses momentum (else no momentum buffer is carried).
      layout: ``"vmap"`` (``n_pad`` is the padded width) or ``"packed"`` (``n_pad`` is the units per pack, see
        :mod:`dynsim.packed`).
      sample_chunk: the gradient of a step is accumulated over chunks of this many samples (0: the whole batch at
        once), which bounds a step's activation memory.
      schedule: learning-rate schedule, ``"constant"`` or ``"cosine"`` (see :func:`lr_schedule`).
      warmup_steps: steps of linear warmup from 0 to the member's learning rate.
      decay_steps: total steps of the run, over which ``"cosine"`` decays to 0 (0 for ``"constant"``, so that runs
        of different lengths share the program).
      hvp: how the sharpness observables' Hessian-vector products are computed, ``"tangent"`` or ``"fd"`` (see
        :func:`dynsim.obs_sharpness.hessian_matvec`).
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
    # Each observable's registration count, so that a program compiled before an observable was registered anew is
    # not reused after it (jit caches by the hash and equality of the program).
    observable_versions: tuple[int, ...] = dataclasses.field(init=False, repr=False)

    def __post_init__(self):
        object.__setattr__(self, "observable_versions", tuple(_obs.version(name) for name in self.observables))

    @property
    def steps_per_segment(self) -> int:
        return self.record_every * self.records_per_segment


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
    """

    width: jax.Array
    lr: jax.Array
    momentum: jax.Array
    weight_decay: jax.Array
    init_scale: jax.Array
    abc: jax.Array
    key: jax.Array


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


def _scale_by_tree(scales) -> optax.GradientTransformation:
    """Multiply each update leaf by the matching leaf of ``scales`` (per-layer learning rates)."""

    def init_fn(params):
        del params
        return optax.EmptyState()

    def update_fn(updates, state, params=None):
        del params
        return jax.tree.map(lambda u, s: s * u, updates, scales), state

    return optax.GradientTransformation(init_fn, update_fn)


def lr_schedule(prog: Program) -> optax.Schedule | None:
    """The learning-rate multiplier of step ``t``, peaking at 1 (``None``: constant 1, no transform needed).

    .. math::

        s(t) = \\frac{t}{T_w}\\ (t < T_w),\\qquad
        s(t) = \\tfrac12\\Big(1 + \\cos\\frac{\\pi (t - T_w)}{T - T_w}\\Big)\\ (\\text{cosine}, t \\ge T_w),

    and ``s(t) = 1`` after warmup for ``"constant"``; ``T_w`` is ``prog.warmup_steps`` and ``T`` is
    ``prog.decay_steps``. Loshchilov & Hutter (2017), "SGDR: stochastic gradient descent with warm restarts", for
    the cosine form; the linear warmup follows Goyal et al. (2017).
    """
    warmup = prog.warmup_steps
    if prog.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0, 1.0, warmup, max(prog.decay_steps, warmup + 1), 0.0)
    if warmup:
        return optax.join_schedules([optax.linear_schedule(0.0, 1.0, warmup), optax.constant_schedule(1.0)],
                                    [warmup])
    return None


def _decayed_weights(model, coefficient) -> optax.GradientTransformation:
    """Add the weight-decay term to the updates: ``coefficient * w`` on the parameters in ``model.decayed``
    (``optax.add_decayed_weights``), or the model's own ``model.decay_term(params, coefficient)`` where it defines
    one (e.g. a decay toward unit-norm directions for negative coefficients)."""
    term = getattr(model, "decay_term", None)
    if term is None:
        decayed = tuple(model.decayed)
        return optax.add_decayed_weights(coefficient, mask=None if all(decayed) else decayed)

    def update_fn(updates, state, params=None):
        return jax.tree.map(jnp.add, updates, term(params, coefficient)), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def make_optimizer(prog: Program, hyper: Hyper, lr_mult) -> optax.GradientTransformation:
    """The optax optimizer of one member, with per-parameter learning rates ``lr * s(t) * n^-c_l``.

    ``sgd``: L2 weight decay, heavy-ball momentum (``optax.trace``), per-layer step. ``adam``: L2 weight decay added
    to the gradient before Adam's scaling. ``adamw``: decoupled weight decay (Loshchilov & Hutter), scaled by the
    layer's learning rate as in ``optax.adamw``. Weight decay applies to the parameters the model marks in
    ``model.decayed`` (e.g. weights but not biases), or is the model's own ``decay_term``. ``s(t)`` is
    :func:`lr_schedule`, applied (like ``optax.adamw``'s schedule) to the decay term too.
    """
    steps = tuple(-hyper.lr * lr_mult[i] for i in range(lr_mult.shape[0]))
    # Transforms no member uses are left out (static flags), so the common plain-SGD program carries no
    # momentum buffer and spends no passes over the weights on a zero decay.
    decay = [_decayed_weights(prog.model, hyper.weight_decay)] if prog.weight_decay else []
    schedule = lr_schedule(prog)
    step = ([optax.scale_by_schedule(schedule)] if schedule is not None else []) + [_scale_by_tree(steps)]
    if prog.optimizer == "sgd":
        momentum = [optax.trace(decay=hyper.momentum)] if prog.momentum else []
        return optax.chain(*decay, *momentum, *step)
    b1, b2 = prog.betas
    if prog.optimizer == "adam":
        return optax.chain(*decay, optax.scale_by_adam(b1, b2, prog.eps), *step)
    if prog.optimizer == "adamw":
        return optax.chain(optax.scale_by_adam(b1, b2, prog.eps), *decay, *step)
    raise ValueError(f"unknown optimizer {prog.optimizer!r}.")


def _loss(prog: Program, params, scales, mask, x, y):
    return prog.model.loss(prog.model.apply(params, x, scales.mult, mask), y)


def _member_parts(prog: Program, hyper: Hyper):
    scales = prog.model.scales(hyper.width, hyper.abc, hyper.init_scale)
    mask = width_mask(hyper.width, prog.n_pad)
    return scales, mask, make_optimizer(prog, hyper, scales.lr)


def _records(prog: Program, data: Data, hyper: Hyper, state: MemberState):
    scales, mask, _ = _member_parts(prog, hyper)
    ctx = _obs.Context(prog=prog, data=data, hyper=hyper, scales=scales, mask=mask, opt_state=state.opt_state)
    values, extra = _obs.record(prog.observables, ctx, state.params, state.extra)
    out = {name: jnp.where(state.alive, value, jnp.nan) for name, value in values.items()}
    return out, state._replace(extra=extra)


def _init_member(prog: Program, data: Data, hyper: Hyper) -> MemberState:
    scales, mask, opt = _member_parts(prog, hyper)
    key = jax.random.wrap_key_data(hyper.key)
    params = prog.model.init(key, prog.n_pad, hyper.width, scales.std)
    x, y = prog.task.batch(data, 0, prog.batch_size)
    if prog.task.online:
        x, y = data.x_test, data.y_test
    loss0 = _loss(prog, params, scales, mask, x, y)
    opt_state = opt.init(params)
    ctx = _obs.Context(prog=prog, data=data, hyper=hyper, scales=scales, mask=mask, opt_state=opt_state)
    extra = _obs.init_extras(prog.observables, ctx, params)
    return MemberState(params, opt_state, jnp.asarray(True), jnp.asarray(-1, jnp.int32), loss0, extra)


def _value_and_grad(prog: Program, params, scales, mask, x, y):
    """Loss and gradient on one batch, accumulated over ``prog.sample_chunk``-sample chunks when it is set.

    The chunks are equal, so the mean of the chunk means is the batch mean: only the summation order differs.
    """
    grad_fn = jax.value_and_grad(_loss, argnums=1)
    c = prog.sample_chunk
    n = x.shape[-1]
    if not c or c >= n or n % c:
        return grad_fn(prog, params, scales, mask, x, y)
    k = n // c
    split = lambda a: jnp.moveaxis(a.reshape(a.shape[0], k, c), 1, 0)

    def body(acc, xy):
        out = grad_fn(prog, params, scales, mask, *xy)
        return jax.tree.map(jnp.add, acc, out), None

    zero = (jnp.zeros((), jnp.result_type(float)), jax.tree.map(jnp.zeros_like, params))
    total, _ = jax.lax.scan(body, zero, (split(x), split(y)))
    return jax.tree.map(lambda t: t / k, total)


def _step_member(prog: Program, hyper: Hyper, state: MemberState, batch, step):
    scales, mask, opt = _member_parts(prog, hyper)
    x, y = batch
    loss, grads = _value_and_grad(prog, state.params, scales, mask, x, y)
    updates, opt_state = opt.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    bad = ~jnp.isfinite(loss) | (loss > prog.diverge_factor * jnp.maximum(state.loss0, 1.0))
    newly = state.alive & bad
    alive = state.alive & ~bad
    # A diverged member is frozen at zero: its records are NaN from now on, and zero weights keep non-finite
    # numbers (and their slow paths) out of the arithmetic it still shares a program with.
    keep = lambda new: jax.tree.map(lambda n: jnp.where(alive, n, jnp.zeros_like(n)), new)
    return state._replace(
        params=keep(params),
        opt_state=keep(opt_state),
        alive=alive,
        diverged_at=jnp.where(newly, step, state.diverged_at).astype(jnp.int32),
    )


def _init_group(prog: Program, data: Data, hyper: Hyper):
    TRACE_COUNT["init"] += 1

    def one(h):
        state = _init_member(prog, data, h)
        records, state = _records(prog, data, h, state)
        return state, records

    return jax.vmap(one)(hyper)


_init_jit = jax.jit(_init_group, static_argnums=0)
# The init program runs once per group, so on CPU it is compiled with LLVM's -O1: shape (i) of
# benchmarks/throughput.py compiles its eight init programs in 2.65 s instead of 3.8 s, and they run no slower
# (the per-unit random draws dominate both). Accelerators keep their default.
_init_jit_cpu = jax.jit(_init_group, static_argnums=0, compiler_options={"xla_backend_optimization_level": 1})


def init_group(prog: Program, data: Data, hyper: Hyper):
    """States of a group of members and their records at step 0 (jitted, ``prog`` static).

    Args:
      prog: static program description.
      data: task arrays (shared by all members).
      hyper: per-member numbers with leading axis ``G``.
    Returns:
      ``(state, records)`` with leading axis ``G``; ``records[name]`` has shape ``[G, ...]``.
    """
    return (_init_jit_cpu if jax.default_backend() == "cpu" else _init_jit)(prog, data, hyper)


@functools.partial(jax.jit, static_argnums=0, donate_argnums=2)
def run_segment(prog: Program, data: Data, state: MemberState, hyper: Hyper, step0):
    """Advance a group by ``prog.steps_per_segment`` steps from ``step0``, recording every ``record_every`` steps.

    Returns:
      ``(state, records)``; ``records[name]`` has shape ``[records_per_segment, G, ...]``.
    """
    TRACE_COUNT["segment"] += 1
    step_all = jax.vmap(functools.partial(_step_member, prog), in_axes=(0, 0, None, None))
    record_all = jax.vmap(functools.partial(_records, prog, data))

    def one_step(st, t):
        batch = prog.task.batch(data, t, prog.batch_size)
        return step_all(hyper, st, batch, t), None

    def interval(st, r):
        start = step0 + r * prog.record_every
        st, _ = jax.lax.scan(one_step, st, start + jnp.arange(prog.record_every))
        recs, st = record_all(hyper, st)
        return st, recs

    return jax.lax.scan(interval, state, jnp.arange(prog.records_per_segment))


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
