"""Flax networks as dynsim models: :class:`FlaxModel` turns a factory ``width -> module`` (``flax.nnx`` or
``flax.linen``) into a :class:`~dynsim.models.Model`, so a user's own network trains in every sweep of the engine.

Needs the optional extra ``dynsim[flax]`` (``pip install 'dynsim[flax]'``); dynsim imports flax only when a
:class:`FlaxModel` is built.

**Roles.** The factory is called at two probe widths (abstractly: no weights are allocated) and each parameter's
shapes are compared, as the muP ports for Flax do: an axis whose size changes is *infinite*. In Flax's layout the
last axis of a kernel is its fan-out and the others its fan-in, so a parameter with an infinite fan-in and an
infinite fan-out is *hidden*, one with an infinite fan-out only (or no infinite axis: the readout's bias) is
*input*-like and one with an infinite fan-in only is *output*. Biases and normalisation scales (one axis, a fan-in
of one) follow their fan-out: they are input-like, as all biases are in Tensor Programs V. The roles pick the rows
of a parametrization's table (:mod:`dynsim.param`), so SP, NTK, muP, mean field and custom tables apply unchanged.

**Parameters.** dynsim trains one tensor ``w_l`` per Flax parameter, flattened in the tree's order, and hands the
module the effective parameter ``W_l = n^-a_l w_l``. Weights (two or more axes) are drawn by dynsim from normal
distributions with the parametrization's standard deviation ``init_scale * g * n^-b_l / sqrt(F_l)``, whatever the
module's own initializers say: ``F_l`` is the finite part of the fan-in (``d`` for a dense input layer, the
receptive field of a convolution) and ``g`` is :attr:`FlaxModel.gain` on layers that read a hidden activation (an
infinite fan-in), as :class:`~dynsim.models.MLP` does. Vector-like parameters (biases, normalisation scales and
offsets) start where the module's own initializers put them (zeros, ones): the trained tensor is their offset from
that value, ``W_l = W_l^{flax} + n^-a_l w_l`` with ``w_l = 0`` at init, so Hessian probes and random directions over
the parameters still cover them. Weight decay applies to the weights only.

**Padding.** A Flax module's hidden units are not provably inert when padded (a bias or a normalisation reads every
unit, an activation with ``phi(0) != 0`` makes a padded unit live), so a :class:`FlaxModel` declares
``paddable = False``: every width compiles its own program at its exact width (:func:`dynsim.executor.plan`), and
``width_mask`` is all ones.

Stateful layers (batch statistics, dropout's random streams) are refused: a dynsim model is a pure function of its
parameters.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
import re
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ._base import Model, Scales

__all__ = ["FlaxModel"]


class _Factory:
    """The user's ``width -> module`` function: equal and hashed by the function itself (so a model re-created with
    it reuses its compiled programs), printed as a signature that is the same in every process (a results
    directory keys on it: the function's qualified name and a digest of the module's computation at the probe
    widths)."""

    __slots__ = ("fn", "signature")

    def __init__(self, fn, signature: str):
        self.fn = fn
        self.signature = signature

    def __call__(self, width: int):
        return self.fn(width)

    def __eq__(self, other):
        return isinstance(other, _Factory) and other.fn == self.fn

    def __hash__(self):
        return hash(self.fn)

    def __repr__(self):
        return self.signature

    def __deepcopy__(self, memo):
        return self  # immutable (dataclasses.asdict deep-copies fields)


class _Structure(NamedTuple):
    """A module at one width: its forward pass ``(params tree, x [P, d_in]) -> [P, d_out]``, the tree's structure,
    each parameter's path and shape, which parameters are vector-like (fewer than two axes) and ``start() ->`` the
    module's own initial values of those (jitted: traced once, then a constant of every program that calls it)."""

    forward: Callable
    treedef: Any
    paths: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    vector: tuple[bool, ...]
    start: Callable


class _Leaf(NamedTuple):
    """What the parametrization needs of one trained tensor."""

    role: int  # 0 input, 1 hidden, 2 output
    fan0: float  # init factor g / sqrt(F); 0 for vector-like tensors, which start at the module's own value
    weight: bool  # two or more axes: drawn by dynsim, decayed
    grows: bool  # its fan-out (last axis) grows with width


def _flax():
    try:
        import flax.linen as linen
        from flax import nnx
    except ImportError:
        raise ImportError("FlaxModel needs flax: pip install 'dynsim[flax]'.") from None
    return linen, nnx


def _path(keys) -> str:
    """``('l1', 'kernel')`` from a pytree path, without nnx's trailing ``.value``."""
    names = [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in keys]
    return ".".join(names[:-1] if names and names[-1] == "value" else names)


@functools.lru_cache(maxsize=1024)
def _structure(factory: _Factory, d_in: int, width: int) -> _Structure:
    """The module ``factory(width)`` abstractly (shapes only, nothing allocated) and its forward pass."""
    linen, nnx = _flax()
    dtype = jnp.result_type(float)
    x = jax.ShapeDtypeStruct((1, d_in), dtype)
    made = []

    def build():
        module = factory(width)
        made.append(module)
        if isinstance(module, nnx.Module):
            graphdef, params, rest = nnx.split(module, nnx.Param, ...)
            made.append(graphdef)
            return params, rest
        if isinstance(module, linen.Module):
            variables = module.init(jax.random.key(0), jnp.zeros(x.shape, dtype))
            return variables.get("params", {}), {k: v for k, v in variables.items() if k != "params"}
        raise ValueError(f"FlaxModel's factory must return a flax.nnx.Module or a flax.linen.Module, got "
                         f"{type(module).__name__} at width {width}.")

    params, rest = jax.eval_shape(build)
    module = made[0]
    stateful = [_path(p) for p, _ in jax.tree_util.tree_flatten_with_path(rest)[0]]
    if stateful:
        raise ValueError(f"FlaxModel trains parameters only, but the module also holds state ({', '.join(stateful)}):"
                         f" batch statistics and dropout's random streams have no place in a pure training step.")
    if isinstance(module, nnx.Module):
        graphdef = made[1]
        forward = lambda tree, inputs: nnx.merge(graphdef, tree)(inputs)
    else:
        forward = lambda tree, inputs: module.apply({"params": tree}, inputs)
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    paths = tuple(_path(p) for p, _ in flat)
    shapes = tuple(tuple(leaf.shape) for _, leaf in flat)
    vector = tuple(len(s) < 2 for s in shapes)
    made.clear()

    @jax.jit
    def start():  # the module's weights are drawn here too, and left out of every program as dead code
        return [v for v, keep in zip(jax.tree.leaves(build()[0]), vector) if keep]

    return _Structure(forward, treedef, paths, shapes, vector, start)


@dataclasses.dataclass(frozen=True, kw_only=True)
class FlaxModel(Model):
    """A Flax network built by ``factory(width)`` as a dynsim model (module docstring: roles, parameters, padding).

    Attributes:
      factory: ``width -> module``, a ``flax.nnx.Module`` (``lambda n: Net(n, rngs=nnx.Rngs(0))``; its weights are
        never used, only its structure) or a ``flax.linen.Module`` (``lambda n: Net(width=n)``). The module maps
        inputs ``[batch, d_in]`` to outputs ``[batch, d_out]``; some parameter shapes must change with ``width``.
      d_in: input dimension.
      d_out: output dimension.
      gain: init gain of the layers that read a hidden activation (``sqrt(2)`` for ReLU, as
        ``dynsim.models.ACTIVATIONS["relu"][1]``; 1 for tanh or linear).
      smooth: whether the loss is smooth in the parameters (no ReLU), which finite-difference Hessian products
        need (``hvp="fd"``).
      probe_widths: the two widths at which the parameter shapes are compared to infer the roles.

    The loss is the mean squared error ``0.5 * mean((f - y)^2)``, as for :class:`~dynsim.models.MLP`. A model
    re-created with the same factory function compiles nothing new.

    Example::

        from flax import nnx
        import dynsim as ds

        class Net(nnx.Module):
            def __init__(self, width, rngs):
                self.hidden = nnx.Linear(16, width, use_bias=False, rngs=rngs)
                self.readout = nnx.Linear(width, 1, use_bias=False, rngs=rngs)

            def __call__(self, x):
                return self.readout(nnx.relu(self.hidden(x)))

        model = ds.models.FlaxModel(factory=lambda n: Net(n, nnx.Rngs(0)), d_in=16, gain=2**0.5)
        res = ds.run(model, ds.tasks.TeacherStudent(d_in=16, n_train=128),
                     ds.Sweep(width=[64, 256], lr=[0.1, 0.3], param=["sp", "mup"]), steps=100)
    """

    factory: Callable[[int], Any]
    d_in: int
    d_out: int = 1
    gain: float = 1.0
    smooth: bool = False
    probe_widths: tuple[int, int] = (8, 16)

    paddable = False

    def __post_init__(self):
        for name in ("d_in", "d_out"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"FlaxModel {name} must be a positive integer, got {value!r}.")
        w = tuple(self.probe_widths)
        if len(w) != 2 or not all(isinstance(v, int) and v >= 1 for v in w) or w[0] == w[1]:
            raise ValueError(f"FlaxModel probe_widths must be two different positive integers, got {w!r}.")
        if not (isinstance(self.gain, (int, float)) and self.gain > 0):
            raise ValueError(f"FlaxModel gain must be a positive number, got {self.gain!r}.")
        fn = self.factory.fn if isinstance(self.factory, _Factory) else self.factory
        if not callable(fn):
            raise ValueError(f"FlaxModel factory must be a function width -> module, got {type(fn).__name__}.")
        object.__setattr__(self, "probe_widths", w)
        object.__setattr__(self, "factory", _Factory(fn, f"{getattr(fn, '__qualname__', type(fn).__name__)}"))
        a, b = (_structure(self.factory, self.d_in, v) for v in w)
        if a.paths != b.paths or any(len(s) != len(t) for s, t in zip(a.shapes, b.shapes)):
            raise ValueError(f"FlaxModel's factory builds different parameters at widths {w[0]} and {w[1]}; only "
                             f"their sizes may change with width.")
        if a.shapes == b.shapes:
            raise ValueError(f"FlaxModel's factory gives the same parameter shapes at widths {w[0]} and {w[1]}, so "
                             f"no layer grows with width: build the module's layers from the factory's argument.")
        x = jax.ShapeDtypeStruct((3, self.d_in), jnp.result_type(float))
        texts = []
        for s in (a, b):
            tree = jax.tree.unflatten(s.treedef, [jax.ShapeDtypeStruct(t, x.dtype) for t in s.shapes])
            try:
                jaxpr = jax.make_jaxpr(s.forward)(tree, x)
            except Exception as e:  # the module's own error, e.g. a first layer built for another d_in
                raise ValueError(f"FlaxModel's module fails on inputs [batch, d_in] = [3, {self.d_in}]: "
                                 f"{str(e).splitlines()[0]}") from None
            out = jaxpr.out_avals[0].shape if len(jaxpr.out_avals) == 1 else None
            if out != (3, self.d_out):
                raise ValueError(f"FlaxModel's module maps inputs [3, {self.d_in}] to {out}; it must return one "
                                 f"array [batch, d_out] = [3, {self.d_out}].")
            texts.append(re.sub(r" at 0x[0-9a-fA-F]+", "", str(jaxpr)))
        digest = hashlib.sha256("\n".join([*a.paths, *texts]).encode()).hexdigest()[:16]
        name = f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', type(fn).__name__)}"
        object.__setattr__(self, "factory", _Factory(fn, f"{name} {digest}"))

    @functools.cached_property
    def _leaves(self) -> tuple[_Leaf, ...]:
        """Each trained tensor's role, init factor and kind, from its shapes at the two probe widths."""
        w1, out = self.probe_widths[0], []
        a, b = (_structure(self.factory, self.d_in, v) for v in self.probe_widths)
        for s, t in zip(a.shapes, b.shapes):
            inf = [p != q for p, q in zip(s, t)]  # the infinite axes
            fan_in_inf, fan_out_inf = any(inf[:-1]), bool(inf) and inf[-1]
            role = (1 if fan_out_inf else 2) if fan_in_inf else 0
            if len(s) < 2:
                out.append(_Leaf(role, 0.0, False, fan_out_inf))
                continue
            # The finite part of the fan-in: its size over width^(number of infinite fan-in axes), at probe width w1.
            finite = math.prod(s[:-1]) / w1 ** sum(inf[:-1])
            out.append(_Leaf(role, (self.gain if fan_in_inf else 1.0) / math.sqrt(finite), True, fan_out_inf))
        return tuple(out)

    @property
    def depth(self) -> int:
        """Number of trained tensors (one per Flax parameter)."""
        return len(self._leaves)

    @property
    def roles(self) -> tuple[int, ...]:
        """Role of each parameter, inferred from its shapes at the two probe widths: 0 input, 1 hidden, 2 output."""
        return tuple(leaf.role for leaf in self._leaves)

    @property
    def decayed(self) -> tuple[bool, ...]:
        """Weight decay applies to the weights, not to biases and normalisation parameters."""
        return tuple(leaf.weight for leaf in self._leaves)

    def paths(self) -> tuple[str, ...]:
        """Each trained tensor's path in the Flax parameter tree, e.g. ``"hidden.kernel"``."""
        return _structure(self.factory, self.d_in, self.probe_widths[0]).paths

    def shapes(self, width: int) -> tuple[tuple[int, ...], ...]:
        """Each trained tensor's shape at width ``width`` (Flax's layout: the last axis is the fan-out)."""
        return _structure(self.factory, self.d_in, int(width)).shapes

    def loss(self, out, y):
        """Mean squared error ``0.5 * mean((f - y)^2)`` over outputs and samples."""
        return 0.5 * jnp.mean((out - y) ** 2)

    def activation_units(self, n_pad: int) -> int:
        """Hidden activations per sample, estimated as the fan-outs of the weights whose fan-out grows with width."""
        return sum(s[-1] for s, leaf in zip(self.shapes(n_pad), self._leaves) if leaf.weight and leaf.grows)

    def n_params(self, width: int) -> int:
        """Parameters at width ``width``."""
        return sum(math.prod(s) for s in self.shapes(width))

    def flops(self, width: int, n_samples: int) -> float:
        """About 6 FLOPs per parameter and sample for a forward and backward pass (2 forward, 4 backward)."""
        return 6.0 * n_samples * self.n_params(width)

    def scales(self, width, abc, init_scale) -> Scales:
        """Multipliers ``n^-a``, init stds ``init_scale * g * n^-b / sqrt(F)`` and lr multipliers ``n^-c`` of each
        trained tensor for a member of width ``width`` (may be traced)."""
        dtype = jnp.result_type(float)
        n = jnp.asarray(width, dtype)
        abc = jnp.asarray(abc, dtype)
        roles = jnp.asarray(self.roles)
        a, b, c = abc[0, roles], abc[1, roles], abc[2, roles]
        fan0 = jnp.asarray([leaf.fan0 for leaf in self._leaves], dtype)
        return Scales(mult=n ** (-a), std=init_scale * fan0 * n ** (-b), lr=n ** (-c))

    def init(self, key, n_pad: int, width, std) -> tuple[jax.Array, ...]:
        """Initial trained tensors at width ``n_pad`` (a :class:`FlaxModel` is never padded: ``n_pad`` is the
        member's width): tensor ``l`` is ``std[l]`` times standard normal numbers, all tensors cut in order from one
        draw from ``key`` (one random-number program to compile instead of one per tensor shape)."""
        del width  # equal to n_pad
        shapes = self.shapes(n_pad)
        sizes = [math.prod(s) for s in shapes]
        z = jax.random.normal(key, (sum(sizes),), jnp.result_type(float))
        ends = np.cumsum(sizes)
        return tuple(std[i] * z[end - size:end].reshape(shape)
                     for i, (shape, size, end) in enumerate(zip(shapes, sizes, ends)))

    def width_of(self, params) -> int:
        """The width whose parameter shapes ``params`` has."""
        a, b = (self.shapes(v) for v in self.probe_widths)
        (w1, w2), shapes = self.probe_widths, tuple(tuple(p.shape) for p in params)
        i, axis = next((i, k) for i, (s, t) in enumerate(zip(a, b)) for k in range(len(s)) if s[k] != t[k])
        slope = (b[i][axis] - a[i][axis]) / (w2 - w1)
        width = round(w1 + (shapes[i][axis] - a[i][axis]) / slope)
        if width < 1 or self.shapes(width) != shapes:
            raise ValueError(f"FlaxModel: parameters of shapes {shapes} are not those of any width.")
        return width

    def apply(self, params, x, mult, mask):
        """Outputs ``[d_out, P]`` on inputs ``[d_in, P]``: the module on ``x.T`` with parameters ``n^-a w`` (plus the
        module's initial value for vector-like ones). ``mask`` is all ones (never padded) and unused."""
        del mask
        s = _structure(self.factory, self.d_in, self.width_of(params))
        start = iter(s.start() if any(s.vector) else ())
        eff = [next(start).astype(w.dtype) + mult[i] * w if vector else mult[i] * w
               for i, (w, vector) in enumerate(zip(params, s.vector))]
        return s.forward(jax.tree.unflatten(s.treedef, eff), x.T).T
