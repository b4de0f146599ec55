"""Fully connected networks: :class:`MLP` (any depth; :func:`uv` and :func:`random_feature_model` are special cases)
and :class:`Linearized`.

Layout: activations are stored *width-major*, ``[features, samples]``. XLA:CPU runs the weight gradient of
``W @ X`` with ``X`` of shape ``[d, P]`` several times faster than the usual ``X @ W.T`` form
(``docs/measurements.md``), and on accelerators the layout is neutral.

Padding (:mod:`dynsim.padding`): a model is built at a *padded* width ``n_pad`` (static, shared by a bucket of
members) and a *true* width ``n`` (traced, per member). Unit ``i >= n`` is zero at init, is multiplied by a 0/1 mask
after its activation, and so receives zero gradient and zero update. Unit ``i``'s weights are drawn from a key folded
with ``i``, and each row is a 1-D draw whose prefix does not depend on its length (``jax_threefry_partitionable``),
so a member's initial weights do not depend on ``n_pad``. Every parametrization factor uses ``n``.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from ..padding import width_mask
from ._base import ACTIVATIONS, Model, Scales

__all__ = ["MLP", "Linearized", "uv", "random_feature_model", "normalise", "NORMS"]

NORMS = ("none", "rms", "layer")
# Added to the mean square before its root: it keeps a zero pre-activation finite and is negligible (below 1e-6
# relative) for any RMS above 1e-3, so the block stays scale-invariant over the weight norms training reaches.
NORM_EPS = 1e-12


def normalise(h, mask, kind: str):
    """RMSNorm or LayerNorm without gain over the member's true units, at every sample.

    .. math::

        \\mathrm{rms}(h) = \\frac{h}{\\sqrt{\\tfrac1n \\sum_{i<n} h_i^2 + \\epsilon}},\\qquad
        \\mathrm{layer}(h) = \\mathrm{rms}(h - \\bar h),\\quad \\bar h = \\tfrac1n \\sum_{i<n} h_i,

    with ``n`` the true width, ``n = sum(mask)``: the statistics run over real units only, so padding does not
    change them (padded units of ``h`` are zero, and LayerNorm's centred padded units are masked back to zero).
    Zhang & Sennrich (2019), "Root mean square layer normalization"; Ba, Kiros & Hinton (2016), "Layer
    normalization".

    Args:
      h: pre-activations ``[n_pad, P]``.
      mask: ``[n_pad]`` 0/1 width mask.
      kind: ``"rms"`` or ``"layer"``.
    """
    n = jnp.sum(mask)
    m = mask[:, None]
    if kind == "layer":
        h = (h - jnp.sum(h * m, axis=0, keepdims=True) / n) * m
    return h * jax.lax.rsqrt(jnp.sum(h * h, axis=0, keepdims=True) / n + NORM_EPS)


@dataclasses.dataclass(frozen=True, kw_only=True)
class MLP(Model):
    """A fully connected network ``d_in -> n -> ... -> n -> d_out`` with ``depth`` weight layers, no biases.

    .. math::

        h_1 = n^{-a_1} W_1 x,\\quad h_l = n^{-a_l} W_l\\,\\phi(h_{l-1}),\\quad f = n^{-a_L} W_L\\,\\phi(h_{L-1}).

    Attributes:
      d_in: input dimension ``d``.
      depth: number of weight layers ``L >= 2`` (2 is the two-layer network).
      act: ``"relu"``, ``"tanh"``, ``"erf"`` or ``"linear"``.
      d_out: output dimension (1 for a scalar output).
      frozen: indices of weight layers that keep their initial value: their learning-rate multiplier is 0 (so no
        optimizer, momentum or weight decay moves them) and the forward pass stops their gradient, so observables
        built on gradients (sharpness, the empirical NTK) see the trained layers only. ``frozen=(0,)`` with
        ``depth=2`` is random-feature regression (:func:`random_feature_model`).
      norm: ``"none"`` (the default), ``"rms"`` or ``"layer"``: normalise every hidden pre-activation over the
        member's units before the activation, without a gain (:func:`normalise`). Every weight matrix but the
        readout then feeds a scale-invariant block: the output does not change when the matrix is multiplied by a
        positive number, so its norm is set by the optimizer and weight decay alone (Fan et al. 2025).
      decay: which weight layers weight decay applies to: ``"all"`` (the default) or ``"hidden"``, the ``n x n``
        matrices only. The input and readout layers have one dimension that does not grow with width
        ("vector-like"); Fan et al. (2025) leave them undecayed.

    The spec hashes by value, so re-creating it never recompiles a program that takes it as a static argument.
    """

    d_in: int
    depth: int = 2
    act: str = "relu"
    d_out: int = 1
    frozen: tuple[int, ...] = ()
    norm: str = "none"
    decay: str = "all"

    returns_preacts = True

    def __post_init__(self):
        if not (isinstance(self.d_in, int) and self.d_in >= 1):
            raise ValueError(f"model d_in must be a positive integer, got {self.d_in!r}.")
        if not (isinstance(self.depth, int) and self.depth >= 2):
            raise ValueError(f"model depth must be an integer >= 2, got {self.depth!r}.")
        if self.act not in ACTIVATIONS:
            raise ValueError(f"model act must be one of {', '.join(ACTIVATIONS)}, got {self.act!r}.")
        if not (isinstance(self.d_out, int) and self.d_out >= 1):
            raise ValueError(f"model d_out must be a positive integer, got {self.d_out!r}.")
        object.__setattr__(self, "frozen", tuple(sorted(set(self.frozen))))
        if not all(isinstance(i, int) and 0 <= i < self.depth for i in self.frozen):
            raise ValueError(f"model frozen must list layer indices in [0, {self.depth}), got {self.frozen!r}.")
        if len(self.frozen) == self.depth:
            raise ValueError("model frozen lists every layer; at least one layer must be trained.")
        if self.norm not in NORMS:
            raise ValueError(f"model norm must be one of {', '.join(NORMS)}, got {self.norm!r}.")
        if self.decay not in ("all", "hidden"):
            raise ValueError(f"model decay must be 'all' or 'hidden', got {self.decay!r}.")
        if self.decay == "hidden" and self.depth < 3:
            raise ValueError("model decay = 'hidden' needs a hidden n x n matrix, so depth >= 3.")

    @property
    def smooth(self) -> bool:
        """Whether the loss is smooth in the weights (no ReLU), as finite-difference Hessian products need."""
        return self.act != "relu"

    @property
    def roles(self) -> tuple[int, ...]:
        """Role index of each layer: 0 input, 1 hidden, 2 output (rows of a parametrization table)."""
        return (0,) + (1,) * (self.depth - 2) + (2,)

    @property
    def decayed(self) -> tuple[bool, ...]:
        """Which parameters weight decay applies to: every weight matrix (there are no biases), or the hidden
        ``n x n`` ones with ``decay="hidden"``."""
        if self.decay == "hidden":
            return tuple(role == 1 for role in self.roles)
        return (True,) * self.depth

    def activation_units(self, n_pad: int) -> int:
        """Hidden activations per sample at padded width ``n_pad`` (sizes group footprints and memory estimates)."""
        return (self.depth - 1) * n_pad

    def loss(self, out, y):
        """Mean squared error ``0.5 * mean((f - y)^2)`` over outputs and samples."""
        return 0.5 * jnp.mean((out - y) ** 2)

    def shapes(self, n_pad: int) -> tuple[tuple[int, int], ...]:
        """Weight shapes ``[fan_out, fan_in]`` at padded width ``n_pad``."""
        return ((n_pad, self.d_in),) + ((n_pad, n_pad),) * (self.depth - 2) + ((self.d_out, n_pad),)

    @property
    def packable(self) -> bool:
        """Whether the packed layout (:mod:`dynsim.executor`) can run this model: two-layer networks without a norm
        (the packed forward pass has no per-member statistics over units)."""
        return self.depth == 2 and self.norm == "none"

    def n_params(self, width: int) -> int:
        """Number of (unpadded) parameters at width ``width``, frozen ones included."""
        return sum(a * b for a, b in self.shapes(width))

    def flops(self, width: int, n_samples: int) -> float:
        """FLOPs of one forward + backward pass (weight gradients only) on ``n_samples`` at true width.

        Each weight matrix costs ``2 * size * P`` forward, the same for its weight gradient and again for the
        input gradient (not needed for the first layer).
        """
        sizes = [a * b for a, b in self.shapes(width)]
        return 2.0 * n_samples * (3 * sum(sizes) - sizes[0])

    def scales(self, width, abc, init_scale) -> Scales:
        """Multipliers, init stds and lr multipliers of each layer for a member of true width ``width``.

        Args:
          width: true width ``n`` (scalar, may be traced).
          abc: ``[3, 3]`` exponents, rows ``a, b, c`` and columns roles (see :mod:`dynsim.param`).
          init_scale: multiplies every layer's init std.
        """
        dtype = jnp.result_type(float)
        n = jnp.asarray(width, dtype)
        abc = jnp.asarray(abc, dtype)
        roles = jnp.asarray(self.roles)
        a, b, c = abc[0, roles], abc[1, roles], abc[2, roles]
        gain = ACTIVATIONS[self.act][1]
        # The input dimension is a constant of the task; it normalises the first layer only. Layers that read an
        # activation get the activation's gain (He init for ReLU).
        fan0 = jnp.asarray([1.0 / math.sqrt(self.d_in)] + [gain] * (self.depth - 1), dtype)
        trained = jnp.asarray([i not in self.frozen for i in range(self.depth)], dtype)
        return Scales(mult=n ** (-a), std=init_scale * fan0 * n ** (-b), lr=trained * n ** (-c))

    def init(self, key, n_pad: int, width, std) -> tuple[jax.Array, ...]:
        """Initial weights at padded width ``n_pad``; units ``>= width`` are zero.

        Unit ``i`` draws its input weights and its output weights from one key, ``fold_in(key, i)``
        (:meth:`unit_weights`); row ``i`` of hidden layer ``l`` draws from
        ``fold_in(fold_in(fold_in(key, 2**31 - 1), l), i)``. Each draw is 1-D, and a 1-D draw's prefix does not
        depend on its length, so nothing depends on ``n_pad``. Drawing a unit's input and output weights together
        halves the random-number programs XLA compiles for a two-layer network.

        Args:
          key: a PRNG key.
          n_pad: static padded width.
          width: true width (may be traced).
          std: per-layer init standard deviations, e.g. ``self.scales(...).std``.
        Returns:
          A tuple of ``depth`` weight matrices with shapes :meth:`shapes`.
        """
        dtype = jnp.result_type(float)
        mask = width_mask(width, n_pad)
        units = jnp.arange(n_pad)
        w_in, w_out = jax.vmap(lambda i: self.unit_weights(key, i))(units)
        w_in = std[0] * w_in * mask[:, None]
        w_out = std[-1] * w_out.T * mask[None, :]
        hidden = []
        for layer in range(1, self.depth - 1):
            # Hidden layers live under a key no unit index can reach (unit keys use i >= 0).
            layer_key = jax.random.fold_in(jax.random.fold_in(key, 2**31 - 1), layer)
            rows = jax.vmap(lambda i, k=layer_key: jax.random.normal(jax.random.fold_in(k, i), (n_pad,), dtype))(
                units
            )
            hidden.append(std[layer] * rows * mask[:, None] * mask[None, :])
        return (w_in, *hidden, w_out)

    def unit_weights(self, key, unit) -> tuple[jax.Array, jax.Array]:
        """Hidden unit ``unit``'s input weights ``[d_in]`` and output weights ``[d_out]``, standard normal (before
        the layers' init stds): one draw from ``fold_in(key, unit)``.

        :meth:`init` and the packed layout (:mod:`dynsim.executor`) both draw through this, so a member starts from
        the same weights in either layout.
        """
        ends = jax.random.normal(jax.random.fold_in(key, unit), (self.d_in + self.d_out,), jnp.result_type(float))
        return ends[: self.d_in], ends[self.d_in :]

    def apply(self, params, x, mult, mask, *, return_preacts: bool = False):
        """Forward pass on ``x`` of shape ``[d_in, P]``; returns ``[d_out, P]``.

        With ``return_preacts=True`` also returns the list of hidden pre-activations ``h_l`` (``[n_pad, P]`` each),
        the activation's inputs (after the norm, where there is one).
        """
        phi = ACTIVATIONS[self.act][0]
        z = x
        preacts = []
        params = [jax.lax.stop_gradient(w) if i in self.frozen else w for i, w in enumerate(params)]
        for layer, w in enumerate(params[:-1]):
            h = mult[layer] * (w @ z)
            if self.norm != "none":
                h = normalise(h, mask, self.norm)
            preacts.append(h)
            z = phi(h) * mask[:, None]
        out = mult[-1] * (params[-1] @ z)
        return (out, preacts) if return_preacts else out


def uv(d_in: int = 1) -> MLP:
    """The uv model of Lewkowycz et al. (2020), ``f = v . (u x) / sqrt(n)`` under :func:`dynsim.param.ntk`.

    It is the depth-2 linear network; with NTK parametrization ``u`` and ``v`` have unit-variance entries
    (``d^-1/2`` for ``u`` when ``d_in > 1``) and the output multiplier is ``n^-1/2``.
    """
    return MLP(d_in=d_in, depth=2, act="linear", d_out=1)


def random_feature_model(d_in: int, act: str = "relu", d_out: int = 1) -> MLP:
    """Random-feature regression (Rahimi & Recht 2007): a two-layer network whose first layer is frozen at init.

    .. math::

        f(x) = n^{-a_2} v^\\top \\phi(n^{-a_1} W x),\\qquad W \\text{ fixed at its random init},\\ v \\text{ trained}.

    The features ``phi(W x)`` of width ``n`` are fixed, so training the readout by gradient descent on the squared
    loss is linear regression on them: it converges to the minimum-norm (ridgeless) least-squares fit from
    ``v = 0``, and with weight decay ``wd`` under SGD to ridge regression with ridge ``wd``. As ``n -> inf`` the
    feature kernel ``phi(Wx) . phi(Wx') / n`` tends to the NNGP kernel of the activation
    (:mod:`dynsim.theory.kernels`).
    """
    return MLP(d_in=d_in, depth=2, act=act, d_out=d_out, frozen=(0,))


@dataclasses.dataclass(frozen=True, kw_only=True)
class Linearized(Model):
    """The linearization of a network around its initialization (Lee et al. 2019, "Wide neural networks of any
    depth evolve as linear models under gradient descent").

    .. math::

        f^{\\mathrm{lin}}_\\theta(x) = f_{\\theta_0}(x) + J_{\\theta_0}(x)\\,(\\theta - \\theta_0),

    evaluated with one ``jax.jvp`` of the base network around ``theta_0``. The parameters are the pair
    ``(theta, theta_0)`` (the base network's layers, then a frozen copy of their initial value), so ``theta_0``
    travels with the member through padding, chunking and divergence handling like any other weight, and the
    initial copy shares the base network's init (padding invariance included). Gradient descent on the squared
    loss is then kernel gradient descent with the fixed empirical NTK ``J_0 J_0^T`` of the member.

    Attributes:
      base: the network to linearize.
    """

    base: MLP

    def __post_init__(self):
        if not isinstance(self.base, MLP):
            raise ValueError(f"Linearized needs an MLP to linearize, got {self.base!r}.")

    smooth = True  # linear in its trained weights, whatever the activation
    returns_preacts = False
    d_in = property(lambda self: self.base.d_in)
    d_out = property(lambda self: self.base.d_out)
    depth = property(lambda self: self.base.depth)
    roles = property(lambda self: self.base.roles)

    @property
    def decayed(self) -> tuple[bool, ...]:
        """Weight decay applies to ``theta`` as in the base network, never to the frozen ``theta_0``."""
        return tuple(self.base.decayed) + (False,) * self.base.depth

    def activation_units(self, n_pad: int) -> int:
        """Hidden numbers per sample: the base network's activations and their tangents."""
        return 2 * self.base.activation_units(n_pad)

    def loss(self, out, y):
        """The base network's loss."""
        return self.base.loss(out, y)

    def shapes(self, n_pad: int) -> tuple[tuple[int, int], ...]:
        """Shapes of ``theta`` then of ``theta_0``."""
        return self.base.shapes(n_pad) * 2

    def n_params(self, width: int) -> int:
        """Stored parameters (``theta`` and ``theta_0``) at width ``width``."""
        return 2 * self.base.n_params(width)

    def flops(self, width: int, n_samples: int) -> float:
        """About twice the base network's: a JVP carries a tangent through every matmul of the forward pass."""
        return 2.0 * self.base.flops(width, n_samples)

    def scales(self, width, abc, init_scale) -> Scales:
        """The base network's scales; ``theta_0``'s learning-rate multipliers are 0."""
        s = self.base.scales(width, abc, init_scale)
        return s._replace(lr=jnp.concatenate([s.lr, jnp.zeros_like(s.lr)]))

    def init(self, key, n_pad: int, width, std) -> tuple[jax.Array, ...]:
        """``theta = theta_0 =`` the base network's init."""
        theta0 = self.base.init(key, n_pad, width, std)
        return theta0 + theta0

    def apply(self, params, x, mult, mask):
        """``f_{theta_0}(x) + J_{theta_0}(x) (theta - theta_0)`` on ``x`` of shape ``[d_in, P]``."""
        depth = self.base.depth
        theta, theta0 = params[:depth], jax.lax.stop_gradient(params[depth:])
        tangent = tuple(t - t0 for t, t0 in zip(theta, theta0))
        out0, dout = jax.jvp(lambda p: self.base.apply(p, x, mult, mask), (theta0,), (tangent,))
        return out0 + dout
