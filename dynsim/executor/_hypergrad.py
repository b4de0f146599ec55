"""Hypergradients: derivatives of a training outcome with respect to each member's hyperparameters.

A member's training run is a function of its numbers (:class:`Hyper`): the executor's init and step
(:mod:`dynsim.executor._vmap`, the vmapped layout, the optimizer chain of :mod:`dynsim.optim`), scanned over the
steps, then an objective on the final state. :func:`hypergrad` differentiates that function, member by member, with
respect to the names in ``wrt``:

- **forward mode** (``jax.jvp``, one tangent per name, all carried through one scan beside the primal run): memory
  independent of the number of steps (the primal state and one tangent of it per name), a cost that grows with the
  number of names;
- **reverse mode** (``jax.vjp`` of the scanned run): every name at once, the run rematerialised. The steps are
  scanned in segments of ``remat_every`` steps under ``jax.checkpoint``, and each step is checkpointed too, so the
  backward pass holds the states at segment boundaries and then the states of one segment: ``O(T / K + K)`` states
  for ``T`` steps and ``K = remat_every`` (``sqrt(T)`` by default), at the price of running the forward pass twice
  and each step's forward a third time inside its own backward.

Members are independent (their numbers are vmapped, as in training), so one member's derivative never depends on
another's: a member that diverges (:func:`dynsim.executor._program.divergence`) gets NaN for its objective and its
derivatives, and its neighbours are untouched.

The run is exactly :func:`dynsim.run`'s: the same init, steps, divergence test and observables, so the objective
``final_loss`` is ``run(...)["loss"]`` at the last step, and central finite differences of ``run`` in float64
reproduce the derivatives (``tests/test_hypergrad.py``).
"""

from __future__ import annotations

import functools
import json
import math
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from ..models import Model
from ..tasks import Task
from ._plan import memory_estimate, memory_limit, plan
from ._program import InputError, Program, member_hyper, member_table
from ._run import _arguments, versions
from ._sweep import Sweep
from ._vmap import _init_member, _loss, _member_parts, _records, _step_member

__all__ = ["hypergrad", "group_hypergrad", "OBJECTIVES", "WRT", "MODES", "FORWARD_MAX", "default_remat", "n_layers",
           "reverse_memory"]

# The objectives, each a scalar per member. ``final_loss`` and ``final_test_loss`` are the ``loss`` and
# ``test_loss`` observables at the last step (the training loss on the whole training set, or the population loss
# on the test set for an online task); ``mean_loss`` is the mean over steps ``0 .. T-1`` of the loss each step
# computes on its own batch before its update (the area under the training curve).
OBJECTIVES = {"final_loss": "training loss after the last step",
              "final_test_loss": "test loss after the last step",
              "mean_loss": "mean over the steps of the loss of each step's batch before its update"}
# A ``wrt`` name and the field of :class:`Hyper` it moves; ``log_`` names differentiate with respect to the
# logarithm (``d/d log x = x d/dx``). ``log_lr_layer`` moves the multipliers ``m_l`` of each layer's learning rate
# (``lr * n^-c_l * m_l``, :attr:`Hyper.lr_layer`), one derivative per layer, at ``m_l = 1``: ``d/d log m_l`` is the
# derivative with respect to the log of that layer's rate alone, and these sum over the layers to ``d/d log lr``.
WRT = {"log_lr": "lr", "lr": "lr", "log_init_scale": "init_scale", "init_scale": "init_scale",
       "weight_decay": "weight_decay", "momentum": "momentum", "log_lr_layer": "lr_layer"}
MODES = ("auto", "forward", "reverse")
# ``mode="auto"`` takes forward mode up to this many underlying hyperparameters. Measured in process CPU time
# against a plain run (benchmarks/hypergrad.py, docs/measurements.md): forward mode 3.7x with one tangent, 8.0x with
# two and 10.9x with three (the tangents are vmapped beside the members, and the batched products run slower than
# the primal's); reverse mode 4.5x whatever their number.
FORWARD_MAX = 1


def default_remat(steps: int) -> int:
    """Steps per rematerialised segment when none is given: the divisor of ``steps`` nearest ``sqrt(steps)`` (which
    minimises the ``steps / K + K`` states reverse mode holds) if one lies within a factor 2 of it, else
    ``round(sqrt(steps))`` (the last segment then runs masked steps past the end)."""
    root = math.sqrt(steps)
    divisors = [k for k in range(1, steps + 1) if steps % k == 0 and root / 2 <= k <= 2 * root]
    return min(divisors, key=lambda k: abs(math.log(k / root))) if divisors else max(1, round(root))


def _fields(wrt) -> tuple[str, ...]:
    """The :class:`Hyper` fields the names in ``wrt`` move, each once, in order."""
    return tuple(dict.fromkeys(WRT[n] for n in wrt))


def n_layers(model: Model) -> int:
    """How many per-layer learning rates ``model`` has (the length of :meth:`Model.scales`' ``lr``: one per
    parameter array; a frozen one's multiplier is 0, so its derivative is 0)."""
    dtype = jnp.result_type(float)
    shape = jax.eval_shape(lambda: model.scales(jnp.ones((), dtype), jnp.zeros((3, 3), dtype),
                                                jnp.ones((), dtype)).lr).shape
    return int(shape[0])


def _theta(hyper, fields, layers: int) -> dict:
    """The numbers differentiated, by :class:`Hyper` field: the members' own values, and ``lr_layer`` at 1."""
    return {f: jnp.ones(hyper.lr.shape + (layers,), hyper.lr.dtype) if f == "lr_layer" else getattr(hyper, f)
            for f in fields}


def _tangents(fields, layers: int) -> int:
    """Forward mode's tangents: one per scalar hyperparameter, one per layer for ``lr_layer``."""
    return sum(layers if f == "lr_layer" else 1 for f in fields)


def _member_outcome(prog: Program, data, objective: str, remat_every: int | None, steps: int, theta, hyper):
    """One member's objective as a function of ``theta`` (its values of some :class:`Hyper` fields, by name), with
    ``(objective, alive, diverged_at)`` as auxiliary output. ``remat_every`` set: rematerialised segments."""
    h = hyper._replace(**theta)
    state = _init_member(prog, data, h)
    mean = objective == "mean_loss"

    def one_step(carry, t):
        st, total = carry
        batch = prog.task.batch(data, t, prog.batch_size)
        if mean:  # the loss the step computes; XLA shares it with the step's own forward pass
            scales, mask, _ = _member_parts(prog, h)
            total = total + jnp.where(st.alive, _loss(prog, st.params, scales, mask, *batch), 0.0)
        new = (_step_member(prog, h, st, batch, t), total)
        if remat_every is not None and steps % remat_every:  # the last segment's steps past the end do nothing
            new = jax.tree.map(lambda n, o: jnp.where(t < steps, n, o), new, carry)
        return new, None

    carry = (state, jnp.zeros((), jnp.result_type(float)))
    if remat_every is None:
        carry, _ = jax.lax.scan(one_step, carry, jnp.arange(steps))
    else:
        # Segments of remat_every steps, each and each of its steps under jax.checkpoint: the backward pass holds the
        # carries at segment boundaries, then recomputes one segment holding its steps' carries.
        step = jax.checkpoint(one_step, prevent_cse=False)
        inner = lambda c, s: (jax.lax.scan(step, c, s * remat_every + jnp.arange(remat_every))[0], None)
        segment = jax.checkpoint(inner, prevent_cse=False)
        carry, _ = jax.lax.scan(segment, carry, jnp.arange(-(-steps // remat_every)))
    state, total = carry
    if mean:
        value = jnp.where(state.alive, total / steps, jnp.nan)
    else:
        records, _ = _records(prog, data, h, state)
        value = records["loss" if objective == "final_loss" else "test_loss"]
    return value, (value, state.alive, state.diverged_at)


@functools.partial(jax.jit, static_argnames=("prog", "objective", "fields", "mode", "remat_every", "steps"))
def _group(prog, data, hyper, *, objective, fields, mode, remat_every, steps):
    theta = _theta(hyper, fields, n_layers(prog.model))  # {field: [G] or [G, layers]}

    def member(th, h):
        f = lambda t: _member_outcome(prog, data, objective, remat_every if mode == "reverse" else None, steps, t, h)
        if mode == "forward":
            grad, aux = jax.jacfwd(f, has_aux=True)(th)
        else:
            grad, aux = jax.grad(f, has_aux=True)(th)
        value, alive, diverged_at = aux
        return value, jax.tree.map(lambda g: jnp.where(alive, g, jnp.nan), grad), diverged_at

    return jax.vmap(member)(theta, hyper)


def group_hypergrad(prog: Program, data, hyper, *, wrt: Sequence[str], objective: str = "final_loss",
                    mode: str = "forward", remat_every: int | None = None, steps: int | None = None):
    """Objectives and hypergradients of one group of members (jitted, ``prog`` static), for callers that set
    members' numbers themselves (a hyperparameter descent changes each member's ``lr`` between calls).

    Args:
      prog: the group's program; its ``record_every * records_per_segment`` is the number of steps unless
        ``steps`` is given.
      data: the task's arrays.
      hyper: the members' numbers (:func:`member_hyper`), leading axis ``G``.
      wrt, objective: as for :func:`hypergrad` (checked there, not here).
      mode: ``"forward"`` or ``"reverse"``.
      remat_every: reverse mode's segment length (default :func:`default_remat`).
    Returns:
      ``(objective [G], {name: derivative [G]}, diverged_at [G])`` as NumPy arrays (``[G, layers]`` for
      ``log_lr_layer``); a diverged member's entries are NaN.
    """
    steps = steps or prog.steps_per_segment
    fields = _fields(wrt)
    remat = (remat_every or default_remat(steps)) if mode == "reverse" else None
    value, grad, diverged_at = _group(prog, data, hyper, objective=objective, fields=fields, mode=mode,
                                      remat_every=remat, steps=steps)
    value = np.asarray(value)
    out = {}
    for name in wrt:
        d = np.asarray(grad[WRT[name]])
        # d/d log x = x d/dx; the layer multipliers are differentiated at 1, where the two are equal
        out[name] = d * np.asarray(getattr(hyper, WRT[name])) if name.startswith("log_") and name != "log_lr_layer" \
            else d
    return value, out, np.asarray(diverged_at)


def reverse_memory(prog: Program, group: int, steps: int, remat_every: int) -> int:
    """Bytes reverse mode needs for a group, estimated before compiling: a plain group's
    (:func:`memory_estimate`) plus the states it holds, ``ceil(steps / remat_every)`` segment boundaries and the
    ``remat_every`` states of the segment being differentiated, and their cotangents (parameters and optimizer
    state per member, the same count as the plain estimate's)."""
    itemsize = jnp.dtype(jnp.result_type(float)).itemsize
    state = prog.model.n_params(prog.n_pad) * (1 + (2 if prog.optimizer in ("adam", "adamw") else 1))
    held = -(-steps // remat_every) + remat_every + 2
    return memory_estimate(prog, group) + itemsize * group * state * held


def _check(model, sweep: Sweep, wrt, objective, mode, remat_every, steps) -> tuple[tuple[str, ...], int | None]:
    if isinstance(wrt, str):
        wrt = (wrt,)
    wrt = tuple(dict.fromkeys(wrt))
    if not wrt:
        raise InputError("wrt names no hyperparameter; give at least one of " + ", ".join(WRT) + ".")
    for name in wrt:
        if name not in WRT:
            raise InputError(f"wrt name {name!r} is not a hyperparameter hypergrad differentiates; choose from "
                             f"{', '.join(WRT)}.")
    if "momentum" in wrt and any(o != "sgd" for o in sweep.optimizer):
        others = sorted({o for o in sweep.optimizer if o != "sgd"})
        raise InputError(f"wrt names 'momentum', which {', '.join(others)} does not have (only sgd's heavy-ball "
                         "coefficient is a momentum hyperparameter).")
    if objective not in OBJECTIVES:
        raise InputError(f"objective {objective!r} is not one hypergrad computes; choose from "
                         f"{', '.join(OBJECTIVES)}.")
    if mode not in MODES:
        raise InputError(f"mode must be one of {', '.join(MODES)}, got {mode!r}.")
    if remat_every is not None and (isinstance(remat_every, bool) or not isinstance(remat_every, (int, np.integer))
                                    or not 1 <= remat_every <= steps):
        raise InputError(f"remat_every must be an integer in [1, steps] = [1, {steps}], got {remat_every!r}.")
    return wrt, None if remat_every is None else int(remat_every)


def hypergrad(model: Model, task: Task, sweep: Sweep | dict, *, steps: int, wrt: Sequence[str] = ("log_lr",),
              objective: str = "final_loss", mode: str = "auto", remat_every: int | None = None,
              batch_size: int = 0, group: int | None = None, diverge_factor: float = 1e4,
              betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, schedule: str = "constant",
              warmup_steps: int = 0, layout: str = "auto") -> xr.Dataset:
    """Train every member of ``sweep`` and differentiate its training outcome with respect to its hyperparameters.

    .. math::

        \\frac{\\partial\\, \\mathcal{O}(\\theta_T)}{\\partial h},\\qquad
        \\theta_{t+1} = \\mathrm{step}(\\theta_t; h),\\quad \\theta_0 = \\mathrm{init}(h),

    for each member separately, with ``h`` each name in ``wrt`` and ``O`` the objective: the derivative of an
    unrolled run (Maclaurin et al. 2015, "Gradient-based hyperparameter optimization through reversible learning";
    forward mode as in Franceschi et al. 2017, "Forward and reverse gradient-based hyperparameter optimization").
    Beyond the stability edge (``lr * lambda_max > 2``) the training map's Jacobian has an eigenvalue
    ``1 - lr * lambda`` of modulus above 1 and these derivatives grow exponentially with ``T``
    (:func:`dynsim.theory.linear_gd.lr_derivative_growth`).

    Args:
      model, task, sweep, steps, batch_size, group, diverge_factor, betas, eps, schedule, warmup_steps: as for
        :func:`dynsim.run`, whose training this is (a member diverges as it would there).
      wrt: names from :data:`WRT`: ``log_lr``, ``lr``, ``log_init_scale``, ``init_scale``, ``weight_decay``,
        ``momentum`` (SGD's heavy-ball coefficient; refused for a sweep with Adam), ``log_lr_layer``. Derivatives
        are taken at each member's own values, also where they are 0 (the weight-decay and momentum transforms are
        then compiled in). ``log_lr_layer`` gives one derivative per layer (a ``layer`` dimension, one entry per
        parameter array, in the order of :meth:`dynsim.models.Model.shapes`): layer ``l``'s rate
        ``lr * n^-c_l`` is multiplied by ``m_l`` and the derivative taken in ``log m_l`` at ``m_l = 1``, so
        ``d/d log m_l = lr_l dO/d lr_l`` for that layer's rate ``lr_l`` alone. The rate enters training only through
        these products, so the derivatives sum over the layers to ``d/d log lr``. Forward mode carries one tangent
        per layer for it.
      objective: ``"final_loss"``, ``"final_test_loss"`` or ``"mean_loss"`` (:data:`OBJECTIVES`).
      mode: ``"forward"`` (one tangent per hyperparameter; memory independent of ``steps``), ``"reverse"`` (all at
        once, rematerialised: memory grows as ``sqrt(steps)``) or ``"auto"``: forward for up to
        :data:`FORWARD_MAX` tangents or where reverse mode would not fit the device's memory, else reverse.
      remat_every: reverse mode's steps per checkpointed segment (default :func:`default_remat`, about
        ``sqrt(steps)``).
      layout: ``"auto"`` or ``"vmap"``; the packed layout is refused.
    Returns:
      ``xarray.Dataset`` over the sweep's axes (``sweep.dims``, the dimensions :func:`dynsim.run` gives) with
      the objective (named after it), ``d_<objective>_d_<name>`` per name in ``wrt`` (over ``layer`` too for
      ``log_lr_layer``) and ``diverged_at``;
      attributes ``mode``, ``remat_every``, ``steps``, ``wrt``, ``buckets``, ``timing`` and versions. A member
      that diverged has NaN objective and derivatives.

    Example::

        import dynsim as ds
        g = ds.hypergrad(ds.models.MLP(d_in=16), ds.tasks.TeacherStudent(d_in=16, n_train=128),
                         ds.Sweep(width=[64, 256], lr=[0.1, 0.3]), steps=100, wrt=("log_lr", "log_init_scale"))
        g["d_final_loss_d_log_lr"]
    """
    if layout == "packed":
        raise InputError("hypergrad differentiates runs in the vmapped layout only; use layout='vmap' or 'auto'.")
    if layout not in ("auto", "vmap"):
        raise InputError(f"layout must be 'auto' or 'vmap' for hypergrad, got {layout!r}.")
    a = _arguments(model, task, sweep, steps=steps, record_every=steps, batch_size=batch_size,
                   observables=("loss", "test_loss"), group=group, buckets=None, diverge_factor=diverge_factor,
                   betas=betas, eps=eps, chunk_members=256, layout="vmap", sample_chunk=0, schedule=schedule,
                   warmup_steps=warmup_steps, hvp="tangent")
    sweep, steps = a.sweep, a.steps
    if sweep.traced_schedule:
        raise InputError("hypergrad takes one schedule for the whole run (schedule=...), not a sweep over schedule.")
    wrt, remat_every = _check(model, sweep, wrt, objective, mode, remat_every, steps)
    fields = _fields(wrt)
    layers = n_layers(model)
    remat = remat_every or default_remat(steps)
    batch = a.batch_size or task.n_train
    program_task = task.program_task()

    def make_prog(bucket):
        return Program(model=model, task=program_task, optimizer=bucket.optimizer, n_pad=bucket.n_pad,
                       record_every=steps, records_per_segment=1, batch_size=bucket.batch_size,
                       observables=("loss", "test_loss"), diverge_factor=diverge_factor, betas=tuple(betas), eps=eps,
                       weight_decay="weight_decay" in fields or any(v != 0 for v in sweep.weight_decay),
                       momentum="momentum" in fields or any(v != 0 for v in sweep.momentum), layout="vmap",
                       schedule=schedule, warmup_steps=a.warmup_steps,
                       decay_steps=steps if schedule == "cosine" else 0)

    buckets = plan(sweep, model, steps=steps, batch=batch, group=a.group, layout="vmap")
    limit = memory_limit()
    modes = {}
    for b in buckets:  # every group's mode and memory are settled before anything is trained
        prog = make_prog(b)
        fits = limit is None or reverse_memory(prog, b.group, steps, remat) <= 0.8 * limit
        tangents = _tangents(fields, layers)
        chosen = mode if mode != "auto" else ("forward" if tangents <= FORWARD_MAX or not fits else "reverse")
        if chosen == "reverse" and not fits:
            need = reverse_memory(prog, b.group, steps, remat)
            raise InputError(f"reverse mode at width {b.n_pad} holds about {-(-steps // remat) + remat} states per "
                             f"member and needs {need / 2**30:.1f} GiB, more than 80% of the {limit / 2**30:.1f} GiB "
                             "available; use mode='forward', a smaller group or another remat_every.")
        tangents = tangents if chosen == "forward" else 0
        if limit is not None and (1 + tangents) * memory_estimate(prog, b.group) > 0.8 * limit:
            raise InputError(f"forward mode at width {b.n_pad} carries {tangents} tangents beside a group of "
                             f"{b.group} members, more than 80% of the {limit / 2**30:.1f} GiB available; pass a "
                             "smaller group.")
        modes[id(b)] = chosen

    data = task.make()
    table = member_table(sweep)
    value = np.full(sweep.size, np.nan)
    grads = {n: np.full((sweep.size, layers) if n == "log_lr_layer" else sweep.size, np.nan) for n in wrt}
    diverged = np.full(sweep.size, -1, np.int64)
    t0 = time.perf_counter()
    for b in buckets:
        prog = make_prog(b)
        for members in b.member_groups():
            hyper = member_hyper(sweep, members, b.group, table=table)
            v, g, div = group_hypergrad(prog, data, hyper, wrt=wrt, objective=objective, mode=modes[id(b)],
                                        remat_every=remat, steps=steps)
            n = len(members)
            value[members] = v[:n]
            diverged[members] = div[:n]
            for name in wrt:
                grads[name][members] = g[name][:n]
    dims = sweep.dims  # AXES, less batch_size where it holds one value (as run's results)
    shape = tuple(len(getattr(sweep, ax)) for ax in dims)  # flat member indices are the same over AXES and dims
    coords = {ax: list(getattr(sweep, ax)) for ax in dims}
    variables = {objective: (dims, value.reshape(shape), {"description": OBJECTIVES[objective]})}
    for name in wrt:
        about = (f"derivative of {objective} with respect to the log of each layer's learning-rate multiplier, at 1"
                 if name == "log_lr_layer" else f"derivative of {objective} with respect to {name}")
        extra = ("layer",) if name == "log_lr_layer" else ()
        variables[f"d_{objective}_d_{name}"] = (dims + extra, grads[name].reshape(shape + (layers,) * len(extra)),
                                                {"description": about})
    variables["diverged_at"] = (dims, diverged.reshape(shape), {"description": "step at which the member diverged "
                                                                              "(-1: it did not)"})
    used = sorted({modes[id(b)] for b in buckets})
    attrs = {"objective": objective, "wrt": json.dumps(list(wrt)), "mode": ",".join(used), "steps": steps,
             "remat_every": remat if "reverse" in used else 0,
             "buckets": json.dumps([[b.optimizer, b.n_pad, len(b.members), b.group] for b in buckets]),
             "timing": json.dumps({"run_s": time.perf_counter() - t0}),
             **{k: (int(v) if isinstance(v, bool) else v) for k, v in versions().items()}}  # netCDF has no bool
    if "log_lr_layer" in wrt:
        coords["layer"] = np.arange(layers)
    return xr.Dataset(variables, coords=coords, attrs=attrs)
