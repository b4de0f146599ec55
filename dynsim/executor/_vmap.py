"""The vmapped layout: a group's members padded to their bucket's width (:mod:`dynsim.padding`), their per-member
step and records ``vmap``-ed.

Members never interact: per-member functions are ``vmap``-ed, the shared input batch is an unbatched argument
(which turns the first layer of all members into a single matmul), and a diverged member is frozen and zeroed
inside its own slice. Every observable runs here.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from .. import observables as _obs
from .. import optim as _optim
from ..padding import width_mask
from ..tasks import Data
from ._program import TRACE_COUNT, Hyper, MemberState, Program, divergence, scheduled

__all__ = ["VmapLayout", "make_optimizer", "init_group", "run_segment", "shard"]


def make_optimizer(prog: Program, hyper: Hyper, lr_mult) -> optax.GradientTransformation:
    """One member's optimizer (:func:`dynsim.optim.chain`) with per-layer learning rates ``lr * s(t) * n^-c_l``
    (times ``hyper.lr_layer[l]`` where it is set).

    Transforms no member uses are left out (static flags), so the common plain-SGD program carries no momentum
    buffer and spends no passes over the weights on a zero decay.
    """
    depth = lr_mult.shape[0]
    if hyper.lr_layer is not None:
        lr_mult = lr_mult * hyper.lr_layer
    steps = tuple(-hyper.lr * lr_mult[i] for i in range(depth))
    decay = _optim.layer_decay(prog.model, hyper.weight_decay) if prog.weight_decay else None
    momentum = (hyper.momentum,) * depth if prog.optimizer == "sgd" and prog.momentum else None
    return _optim.chain(prog.optimizer, steps, decay=decay, momentum=momentum, betas=prog.betas, eps=prog.eps,
                        schedule=prog.schedule_fn())


def _loss(prog: Program, params, scales, mask, x, y):
    return prog.model.loss(prog.model.apply(params, x, scales.mult, mask), y)


def _member_parts(prog: Program, hyper: Hyper):
    scales = prog.model.scales(hyper.width, hyper.abc, hyper.init_scale)
    mask = width_mask(hyper.width, prog.n_pad)
    return scales, mask, make_optimizer(prog, hyper, scales.lr)


def _context(prog: Program, data: Data, hyper: Hyper, scales, mask, opt_state) -> _obs.Context:
    inputs = {"train": data.x_train, "test": data.x_test}
    outputs = lambda params, split: prog.model.apply(params, inputs[split], scales.mult, mask)
    return _obs.Context(prog=prog, data=data, hyper=hyper, scales=scales, mask=mask, opt_state=opt_state,
                        outputs=outputs)


def _records(prog: Program, data: Data, hyper: Hyper, state: MemberState):
    scales, mask, _ = _member_parts(prog, hyper)
    ctx = _context(prog, data, hyper, scales, mask, state.opt_state)
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
    ctx = _context(prog, data, hyper, scales, mask, opt_state)
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
    if prog.lr_table:
        updates = scheduled(updates, hyper.lr_table, step)
    params = optax.apply_updates(state.params, updates)
    alive, diverged_at = divergence(prog, loss, state.loss0, state.alive, state.diverged_at, step)
    # A diverged member is frozen at zero (dynsim.executor._program.divergence).
    keep = lambda new: jax.tree.map(lambda n: jnp.where(alive, n, jnp.zeros_like(n)), new)
    return state._replace(params=keep(params), opt_state=keep(opt_state), alive=alive, diverged_at=diverged_at)


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


class VmapLayout:
    """The vmapped layout behind the executor's layout interface (:class:`dynsim.executor.Layout`)."""

    name = "vmap"

    @staticmethod
    def supports(model, observables) -> bool:
        """Every model and every observable."""
        return True

    @staticmethod
    def place(prog: Program, hyper: Hyper, widths: np.ndarray) -> Hyper:
        """Shard the group's member axis over the local devices (the state follows through jit); no-op on one."""
        del prog, widths  # the padded width is the program's; each member's true width is in hyper
        return shard(hyper)

    @staticmethod
    def init(prog: Program, data, hyper: Hyper):
        return init_group(prog, data, hyper)

    @staticmethod
    def advance(prog: Program, data, state, hyper: Hyper, step0):
        return run_segment(prog, data, state, hyper, step0)


def shard(hyper: Hyper) -> Hyper:
    """``hyper`` with its member axis sharded over the local devices; unchanged on one device."""
    devices = jax.local_devices()
    if len(devices) == 1:
        return hyper
    mesh = jax.sharding.Mesh(np.asarray(devices), ("members",))
    spec = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("members"))
    return jax.tree.map(lambda a: jax.device_put(a, spec), hyper)
