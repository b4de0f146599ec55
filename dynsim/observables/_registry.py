"""The observable registry: :class:`Observable`, :class:`Shared`, :class:`Context`, :func:`register`, :func:`record`.

An observable is a pure function ``compute(ctx, params, extra) -> (value, new_extra)``: ``ctx`` holds the member's
program, data, hyperparameters, scales, width mask, optimizer state and its outputs on the task's inputs; ``extra``
is the observable's own state carried between records (``None`` for stateless ones), so iterative estimators can
warm-start. ``value`` has a fixed
shape per observable (:attr:`Observable.shape`). New observables register with :func:`register`.

Several observables can read one computation (:class:`Shared`): an estimate and its error bound, or the eigenvalues
and the drift of one kernel. :func:`record` runs each shared computation once per record, whichever of its
observables are recorded, and carries one state for it; recording ``sharpness`` beside ``sharpness_err`` costs
nothing more than ``sharpness`` alone.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax

__all__ = ["Context", "Shared", "Observable", "register", "get", "names", "record", "init_extras", "version",
           "builtin", "seal"]


class Context(NamedTuple):
    """What an observable may read about its member besides the parameters.

    ``outputs(params, split)`` is the member's network output ``[d_out, P]`` on the task's ``"train"`` or ``"test"``
    inputs; an observable that reads nothing else (``outputs_only``) runs in both layouts of the executor. The other
    fields are ``None`` in the packed layout. ``opt_state`` is the optax state after the last step (the freshly
    initialised state at step 0); ``None`` where a caller has none to give.
    """

    prog: Any
    data: Any
    hyper: Any
    scales: Any
    mask: jax.Array | None
    opt_state: Any = None
    outputs: Callable | None = None


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
      applies: ``(model) -> bool``, whether the observable can be recorded for a model (None: any model), read
        from the model's declared capabilities (:class:`dynsim.models.Model`).
      applies_to: the models it applies to, in words, for the error raised when ``applies`` is false.
      outputs_only: ``compute`` reads only ``ctx.outputs``, ``ctx.prog`` and ``ctx.data`` and carries no state, so
        the packed layout can record it; the executor's planner picks the vmapped layout for any other.
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
    outputs_only: bool = False

    def __post_init__(self):
        object.__setattr__(self, "dims", tuple(self.dims))
        if self.outputs_only and (self.init_extra is not None or self.shared is not None):
            raise ValueError(f"observable {self.name!r}: an outputs-only observable carries no state.")
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
_BUILTIN: set[str] = set()  # the names dynsim defines (seal)


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


def seal(observables) -> None:
    """Register dynsim's own ``observables`` and mark them as built in: they cannot be replaced."""
    for o in observables:
        register(o)
        _BUILTIN.add(o.name)


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
