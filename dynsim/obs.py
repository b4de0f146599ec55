"""Observables recorded inside the compiled program at record points, vmapped over members.

An observable is a pure function ``compute(ctx, params, extra) -> (value, new_extra)``: ``ctx`` holds the member's
program, data, hyperparameters, scales, width mask and optimizer state; ``extra`` is the observable's own state
carried between records (``None`` for stateless ones), so iterative estimators can warm-start. ``value`` has a fixed
shape per observable (:attr:`Observable.shape`). New observables register with :func:`register`.

Several observables can read one computation (:class:`Shared`): an estimate and its error bound, or the eigenvalues
and the drift of one kernel. :func:`record` runs each shared computation once per record, whichever of its
observables are recorded, and carries one state for it; recording ``sharpness`` beside ``sharpness_err`` costs
nothing more than ``sharpness`` alone.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["Context", "Shared", "Observable", "register", "get", "names", "record", "init_extras", "coord_check"]


class Context(NamedTuple):
    """What an observable may read about its member besides the parameters.

    ``opt_state`` is the optax state after the last step (the freshly initialised state at step 0); ``None`` where
    a caller has none to give.
    """

    prog: Any
    data: Any
    hyper: Any
    scales: Any
    mask: jax.Array
    opt_state: Any = None


@dataclasses.dataclass(frozen=True)
class Shared:
    """A computation whose results several observables read.

    Attributes:
      key: identifies the computation *and its settings* (e.g. ``"krylov:plain:5:32"``): observables whose
        ``shared.key`` is equal are computed once per record and share one carried state, so two computations that
        differ in any setting need different keys. It also names the carried state, so it must differ from every
        observable name.
      compute: ``(ctx, params, extra) -> (values, new_extra)`` with ``values`` a dict of arrays.
      init_extra: ``(ctx, params) -> extra`` or None.
    """

    key: str
    compute: Callable
    init_extra: Callable | None = None


@dataclasses.dataclass(frozen=True)
class Observable:
    """A recorded quantity.

    Attributes:
      name: variable name in results.
      compute: ``(ctx, params, extra) -> (value, new_extra)``; None for an observable that reads ``shared``.
      doc: one-line description, stored as the variable's ``description`` attribute.
      dims: names of the value's own dimensions (``()`` for a scalar).
      shape: ``(prog) -> shape`` of the value.
      init_extra: ``(ctx, params) -> extra`` or None (taken from ``shared`` where it is set).
      shared: the computation this observable reads its value from, as ``values[part]``.
      part: which of ``shared``'s values this observable is.
      applies: ``(model) -> bool``, whether the observable can be recorded for a model (None: any model).
      applies_to: the models it applies to, in words, for the error raised when ``applies`` is false.
    """

    name: str
    compute: Callable | None
    doc: str
    dims: tuple[str, ...] = ()
    shape: Callable = lambda prog: ()
    init_extra: Callable | None = None
    shared: Shared | None = None
    part: str | None = None
    applies: Callable | None = None
    applies_to: str = ""

    def __post_init__(self):
        object.__setattr__(self, "dims", tuple(self.dims))
        if (self.shared is None) == (self.compute is None):
            raise ValueError(f"observable {self.name!r} needs exactly one of compute and shared.")
        if self.shared is not None:
            if self.part is None:
                raise ValueError(f"observable {self.name!r} reads a shared computation and needs its part.")
            shared, part = self.shared, self.part

            def compute(ctx, params, extra):
                values, new = shared.compute(ctx, params, extra)
                return values[part], new

            object.__setattr__(self, "compute", compute)
            object.__setattr__(self, "init_extra", shared.init_extra)

    @property
    def state_key(self) -> str:
        """Key of this observable's carried state: its shared computation's key, or its own name."""
        return self.name if self.shared is None else self.shared.key


_REGISTRY: dict[str, Observable] = {}
_VERSIONS: dict[str, int] = {}  # how often each name has been registered: part of the compiled programs' key
_BUILTIN: frozenset[str] = frozenset()  # the names dynsim defines, set once its observables are registered


def register(observable: Observable) -> Observable:
    """Add an observable to the registry, replacing a user-defined one of the same name.

    A replaced observable takes effect in every later run that computes: compiled programs are keyed by each
    name's registration count, not only the name. A run resumed from a results directory keeps what it stored;
    a user-defined observable's description is part of that directory's key, so describe a changed computation
    anew. dynsim's own observables cannot be replaced.
    """
    if observable.name in _BUILTIN and _REGISTRY[observable.name] is not observable:
        raise ValueError(f"observable {observable.name!r} is defined by dynsim; register yours under another name.")
    keys = {o.shared.key for o in _REGISTRY.values() if o.shared is not None}
    if observable.name in keys or (observable.shared is not None and observable.shared.key in _REGISTRY):
        raise ValueError(f"observable {observable.name!r}: a shared computation's key equals an observable's name.")
    if _REGISTRY.get(observable.name) is not observable:
        _VERSIONS[observable.name] = _VERSIONS.get(observable.name, 0) + 1
    _REGISTRY[observable.name] = observable
    return observable


def version(name: str) -> int:
    """How many times ``name`` has been registered with a new definition (0 for an unknown name)."""
    return _VERSIONS.get(name, 0)


def builtin(name: str) -> bool:
    """Whether ``name`` is one of dynsim's own observables."""
    return name in _BUILTIN


def get(name: str) -> Observable:
    """The registered observable called ``name``; a ``ValueError`` naming the choices if there is none."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown observable {name!r}; choose from {', '.join(sorted(_REGISTRY))}.") from None


def names() -> tuple[str, ...]:
    """Names of the registered observables, sorted."""
    return tuple(sorted(_REGISTRY))


def init_extras(names, ctx: Context, params) -> dict:
    """The carried states of the observables ``names`` at init, one per shared computation."""
    extra = {}
    for name in names:
        o = get(name)
        if o.init_extra is not None and o.state_key not in extra:
            extra[o.state_key] = o.init_extra(ctx, params)
    return extra


def record(names, ctx: Context, params, extra: dict) -> tuple[dict, dict]:
    """Values of the observables ``names`` at ``params`` and their new carried states.

    Each shared computation runs once, however many of its observables are among ``names``.
    """
    values, extra, shared = {}, dict(extra), {}
    for name in names:
        o = get(name)
        if o.shared is None:
            values[name], new = o.compute(ctx, params, extra.get(name))
        else:
            key = o.shared.key
            if key not in shared:
                shared[key], new = o.shared.compute(ctx, params, extra.get(key))
            else:
                new = None  # the state was updated by the first of its observables
            values[name] = shared[key][o.part]
        if new is not None:
            extra[o.state_key] = new
    return values, extra


def _mse(ctx: Context, params, x, y):
    return ctx.prog.model.loss(ctx.prog.model.apply(params, x, ctx.scales.mult, ctx.mask), y)


def _train_loss(ctx, params, extra):
    data = ctx.data
    if ctx.prog.task.online:  # the population loss is the training loss of an online task
        return _mse(ctx, params, data.x_test, data.y_test), None
    return _mse(ctx, params, data.x_train, data.y_train), None


def _test_loss(ctx, params, extra):
    return _mse(ctx, params, ctx.data.x_test, ctx.data.y_test), None


def _output_rms(ctx, params, extra):
    out = ctx.prog.model.apply(params, ctx.data.x_test, ctx.scales.mult, ctx.mask)
    return jnp.sqrt(jnp.mean(out**2)), None


def _preact_rms(ctx, params, extra):
    _, pre = ctx.prog.model.apply(params, ctx.data.x_test, ctx.scales.mult, ctx.mask, return_preacts=True)
    width = ctx.hyper.width.astype(pre[0].dtype)
    # RMS over the member's true units only: padded units are exactly zero.
    return jnp.stack([jnp.sqrt(jnp.sum(h**2) / (width * h.shape[1])) for h in pre]), None


register(Observable("loss", _train_loss, "training loss 0.5*mean((f-y)^2) on the full training set (on the test "
                    "set, i.e. the population loss, for online tasks)"))
register(Observable("test_loss", _test_loss, "test loss 0.5*mean((f-y)^2) on the held-out set"))
register(Observable("output_rms", _output_rms, "root mean square of the network output on the test inputs"))
register(Observable("preact_rms", _preact_rms, "RMS of each hidden layer's pre-activations on the test inputs",
                    dims=("layer",), shape=lambda prog: (prog.model.depth - 1,),
                    applies=lambda model: "return_preacts" in inspect.signature(model.apply).parameters,
                    applies_to="models whose apply returns pre-activations (MLPs)"))


def coord_check(model, parametrization, widths, *, lr: float, steps: int = 3, optimizer: str = "sgd",
                seeds=(0, 1, 2), d_in: int = 16, n_train: int = 64, layers: str = "all"):
    """Coordinate check (Yang et al. 2022): activation and output scales after ``0..steps`` steps, per width.

    Runs a sweep through the engine and returns an ``xarray.Dataset`` with ``preact_rms`` (per hidden layer),
    ``output_rms`` and ``delta_out_rms``, the RMS of ``f_t - f_0`` on the test inputs, over dims ``width``,
    ``seed`` and ``step``. Under muP and NTK these are width-independent; under SP the output update grows with
    width.
    """
    from .engine import run
    from .sweep import Sweep
    from .tasks import TeacherStudent

    task = TeacherStudent(d_in=d_in, n_train=n_train, n_test=n_train, seed=0)
    sweep = Sweep(width=tuple(widths), lr=(lr,), seed=tuple(seeds), param=(parametrization,),
                  optimizer=(optimizer,))
    ds = run(model, task, sweep, steps=steps, record_every=1, observables=("output_rms", "preact_rms", "outputs"),
             progress=False)
    out = ds["outputs"]
    delta = out - out.isel(step=0)
    ds["delta_out_rms"] = np.sqrt((delta**2).mean("sample"))
    return ds


def _outputs(ctx, params, extra):
    return ctx.prog.model.apply(params, ctx.data.x_test, ctx.scales.mult, ctx.mask)[0], None


register(Observable("outputs", _outputs, "network output (first component) on each test input",
                    dims=("sample",), shape=lambda prog: (prog.task.n_test,)))
from . import obs_sharpness as _obs_sharpness  # noqa: E402,F401  (registers sharpness observables)
from . import obs_superposition as _obs_superposition  # noqa: E402,F401  (superposition geometry)
from . import obs_ntk as _obs_ntk  # noqa: E402,F401  (registers empirical-NTK observables)
from . import obs_spectrum as _obs_spectrum  # noqa: E402,F401  (registers Hessian spectrum observables)

_BUILTIN = frozenset(_REGISTRY)
