"""Superposition toy models and the sparse power-law features they reconstruct.

:class:`Superposition` is the toy model of Elhage et al. (2022), "Toy models of superposition", in the form used by
Liu, Liu & Gore (2025), "Superposition yields robust neural scaling" (arXiv 2505.10465): ``n`` features are
embedded in ``m`` hidden dimensions by ``W`` and read back through ``W^T``,

.. math::

    h = W x \\in \\mathbb R^m,\\qquad x' = \\mathrm{ReLU}(W^\\top h + b),\\qquad
    L = \\tfrac12\\,\\mathbb E\\Big[\\tfrac1n \\textstyle\\sum_i I_i\\,(x'_i - x_i)^2\\Big].

Column ``W_{:,i}`` is feature ``i``'s direction. When at most ``m`` features have non-zero, nearly orthogonal
directions the model is in *weak superposition*; when all ``n >> m`` are represented, with overlaps, in *strong
superposition*.

:class:`SparseFeatures` draws ``x_i = u_i v_i`` with ``u_i ~ Bernoulli(p_i)``, ``p_i \\propto i^{-alpha}`` and
``v_i ~ U(0, 2)``, a fresh batch every step; the target is the input.

Both implement the engine's model and task interfaces (:func:`dynsim.run`): ``m`` is the engine's ``width`` axis,
bucketed, padded and masked like any width, so a sweep over ``m``, weight decay, learning rate and seed runs as a
few vectorised programs. Activations are width-major (``x`` is ``[n, B]``, ``W`` is ``[m, n]``), as everywhere in
dynsim.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .models import Scales, width_mask

__all__ = ["Superposition", "SparseFeatures", "FeatureData", "feature_probabilities"]

_NORM_EPS = 1e-8  # keeps w / |w| finite for a direction at exactly 0 (as Adam's epsilon keeps its ratio finite)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Superposition:
    """The ReLU-output superposition model ``x' = ReLU(W^T W x + b)`` with ``W`` of shape ``[m, n]``.

    Parameters are ``(W [m_pad, n], b [n])``; row ``r`` of ``W`` is hidden unit ``r`` of ``m``. Row ``r`` is drawn
    from ``fold_in(key, r)`` as ``N(0, init_scale^2 / m)`` with the member's true ``m`` (each feature's direction
    then has norm about ``init_scale``), so a member's initial weights do not depend on the padding; padded rows
    are zero, masked after the encoder, and receive zero gradient. ``b`` starts at 0.

    The parametrization's abc exponents are not used: the model has one natural scale (unit-norm feature
    directions). ``W``'s learning rate is ``lr * m^-lr_exponent`` and ``b``'s is ``lr``. Weight decay applies to
    ``W`` only, toward 0 for a positive coefficient and toward unit-norm directions for a negative one
    (:meth:`decay_term`).

    Attributes:
      n_features: number of features ``n`` (input and output dimension).
      importance_decay: feature importances ``I_i = importance_decay^i`` (``i = 0..n-1``) weight the loss, the
        variant of Elhage et al. (2022); 1 (the default) weights every feature equally, as Liu et al. (2025).
      lr_exponent: ``W``'s learning rate falls as ``m^-lr_exponent``. Liu et al.'s large runs use ``0.02 (8/m)^1/4``
        (their App. B.1), i.e. ``lr_exponent = 0.25`` with ``lr = 0.02 * 8^1/4``: at ``n = 2048``, ``alpha = 0``,
        ``gamma = -1``, 2000 AdamW steps of batch 256, a constant 0.02 leaves ``m = 256`` at 14 times the loss of
        the scaled rate (1.4e-4 against 9.2e-6) with ``m`` x mean squared overlap 2.2 against 0.91, while ``m = 128``
        is within 2% either way.
    """

    n_features: int
    importance_decay: float = 1.0
    lr_exponent: float = 0.0

    width_name = "m"  # the hidden dimension is the engine's width axis; experiments' results call it m
    parametrized = False  # the abc exponents are not used: a sweep over param would train identical copies

    def __post_init__(self):
        if not (isinstance(self.n_features, int) and self.n_features >= 2):
            raise ValueError(f"model n_features must be an integer >= 2, got {self.n_features!r}.")
        if not 0 < self.importance_decay <= 1:
            raise ValueError(f"model importance_decay must lie in (0, 1], got {self.importance_decay!r}.")
        if not 0 <= self.lr_exponent <= 1:
            raise ValueError(f"model lr_exponent must lie in [0, 1], got {self.lr_exponent!r}.")

    @property
    def d_in(self) -> int:
        return self.n_features

    @property
    def d_out(self) -> int:
        return self.n_features

    @property
    def depth(self) -> int:
        """Two weight layers, the encoder ``W`` and the tied decoder ``W^T``."""
        return 2

    @property
    def roles(self) -> tuple[int, ...]:
        return (0, 2)

    @property
    def decayed(self) -> tuple[bool, ...]:
        """Weight decay acts on ``W``, not on the bias ``b``."""
        return (True, False)

    def decay_term(self, params, coefficient):
        """Weight-decay term added to ``W``'s update (decoupled under ``adamw``): toward 0 or toward unit norms.

        .. math::

            \\Delta_\\gamma(w_i) = \\gamma\\, w_i\\ \\ (\\gamma \\ge 0),\\qquad
            \\Delta_\\gamma(w_i) = |\\gamma|\\,\\big(w_i - w_i/|w_i|\\big)\\ \\ (\\gamma < 0),

        for each feature direction ``w_i`` (a column of ``W``). The step subtracts ``lr * Delta``: a positive
        ``gamma`` shrinks every direction (unused features die: weak superposition), a negative one pulls every
        norm toward 1 (every feature is represented: strong superposition). This is the decay of Liu, Liu & Gore
        (2025); a plain negative decay would grow the weights without bound. ``b`` is not decayed. Padded rows
        are zero and stay zero; column norms only see true rows.
        """
        w, b = params
        norms = jnp.sqrt(jnp.sum(w**2, axis=0))
        toward = jnp.where(coefficient < 0, 1.0 / (norms + _NORM_EPS), 0.0)
        return jnp.abs(coefficient) * (w - w * toward[None, :]), jnp.zeros_like(b)

    def shapes(self, n_pad: int) -> tuple[tuple[int, ...], ...]:
        """Parameter shapes at padded hidden dimension ``n_pad``: ``W [n_pad, n]`` and ``b [n]``."""
        return ((n_pad, self.n_features), (self.n_features,))

    def n_params(self, width: int) -> int:
        return width * self.n_features + self.n_features

    def activation_units(self, n_pad: int) -> int:
        """Activations per sample: the hidden ``h`` and the ``n`` outputs (which dominate when ``n >> m``)."""
        return n_pad + self.n_features

    def flops(self, width: int, n_samples: int) -> float:
        """FLOPs of one forward + backward pass: ``W x`` and ``W^T h`` forward, each twice backward (``10 m n P``)."""
        return 10.0 * width * self.n_features * n_samples

    def importances(self, dtype=None) -> jax.Array:
        """``I_i = importance_decay^i``, shape ``[n]``."""
        dtype = dtype or jnp.result_type(float)
        return jnp.asarray(self.importance_decay, dtype) ** jnp.arange(self.n_features, dtype=dtype)

    def scales(self, width, abc, init_scale) -> Scales:
        """Init std ``init_scale / sqrt(m)`` for ``W`` (0 for ``b``); unit multipliers; lr factors ``m^-lr_exponent``
        for ``W`` and 1 for ``b``."""
        del abc
        dtype = jnp.result_type(float)
        m = jnp.asarray(width, dtype)
        std = jnp.asarray(init_scale, dtype) / jnp.sqrt(m)
        return Scales(mult=jnp.ones((2,), dtype), std=jnp.stack([std, jnp.zeros((), dtype)]),
                      lr=jnp.stack([m ** -jnp.asarray(self.lr_exponent, dtype), jnp.ones((), dtype)]))

    def init(self, key, n_pad: int, width, std) -> tuple[jax.Array, jax.Array]:
        """``(W, b)`` at padded hidden dimension ``n_pad``; rows ``>= width`` are zero.

        Args:
          key: a PRNG key.
          n_pad: static padded ``m``.
          width: the member's true ``m`` (may be traced).
          std: ``self.scales(...).std``; ``std[0]`` is the std of ``W``'s entries.
        """
        dtype = jnp.result_type(float)
        rows = jax.vmap(lambda r: jax.random.normal(jax.random.fold_in(key, r), (self.n_features,), dtype))(
            jnp.arange(n_pad))
        w = std[0] * rows * width_mask(width, n_pad, dtype)[:, None]
        return w, jnp.zeros((self.n_features,), dtype)

    def apply(self, params, x, mult, mask):
        """``ReLU(W^T (W x) + b)`` on ``x`` of shape ``[n, P]``; returns ``[n, P]``."""
        del mult
        w, b = params
        h = (w @ x) * mask[:, None]
        return jax.nn.relu(w.T @ h + b[:, None])

    def loss(self, out, y):
        """``0.5 * mean_{i, samples}(I_i (x'_i - x_i)^2)``; the plain mean squared error when importances are 1."""
        if self.importance_decay == 1.0:
            return 0.5 * jnp.mean((out - y) ** 2)
        return 0.5 * jnp.mean(self.importances(out.dtype)[:, None] * (out - y) ** 2)


def feature_probabilities(n_features: int, alpha: float, p_active: float) -> np.ndarray:
    """Activation probabilities ``p_i = p_active * i^-alpha / sum_j j^-alpha``, ``i = 1..n``.

    ``p_active = sum_i p_i`` is the expected number of active features per sample.
    """
    p = np.arange(1, n_features + 1, dtype=np.float64) ** (-float(alpha))
    return p_active * p / p.sum()


class FeatureData(NamedTuple):
    """Arrays of :class:`SparseFeatures` (arguments of the compiled programs, never constants).

    Attributes:
      x_train, y_train: empty ``[n, 0]`` (the task is online).
      x_test, y_test: a fixed evaluation set ``[n, n_test]`` (``y = x``).
      probs: ``[n]`` activation probabilities ``p_i``.
      key: key data of the batch stream.
    """

    x_train: jax.Array
    y_train: jax.Array
    x_test: jax.Array
    y_test: jax.Array
    probs: jax.Array
    key: jax.Array


@dataclasses.dataclass(frozen=True, kw_only=True)
class SparseFeatures:
    """Sparse features with power-law frequencies, reconstructed by an autoencoder (``y = x``).

    .. math::

        x_i = u_i v_i,\\qquad u_i \\sim \\mathrm{Bernoulli}(p_i),\\quad
        p_i = E\\,\\frac{i^{-\\alpha}}{\\sum_{j=1}^n j^{-\\alpha}},\\qquad v_i \\sim U(0, 2),

    with ``E = p_active`` the expected number of active features per sample (not a "sparsity"). A fresh batch is
    drawn every step from the task's key and the step, so every member of a run sees the same stream; the
    population loss is measured on a fixed set of ``n_test`` samples.

    Attributes:
      n_features: ``n``.
      alpha: frequency exponent ``alpha >= 0``.
      p_active: expected number of active features ``E``; every ``p_i`` must be at most 1.
      n_test: evaluation samples.
      seed: seed of the batch stream and the evaluation set.
    """

    n_features: int
    alpha: float = 1.5
    p_active: float = 1.0
    n_test: int = 4096
    seed: int = 0

    def __post_init__(self):
        if not (isinstance(self.n_features, int) and self.n_features >= 2):
            raise ValueError(f"task n_features must be an integer >= 2, got {self.n_features!r}.")
        if not (math.isfinite(self.alpha) and self.alpha >= 0):
            raise ValueError(f"task alpha must be a finite number >= 0, got {self.alpha!r}.")
        if not (isinstance(self.n_test, int) and self.n_test >= 1):
            raise ValueError(f"task n_test must be a positive integer, got {self.n_test!r}.")
        if not (math.isfinite(self.p_active) and self.p_active > 0):
            raise ValueError(f"task p_active must be a positive number, got {self.p_active!r}.")
        top = feature_probabilities(self.n_features, self.alpha, self.p_active)[0]
        if top > 1:
            raise ValueError(f"task p_active = {self.p_active} gives feature 1 probability {top:.3g} > 1; lower "
                             f"p_active or alpha.")

    d_out = property(lambda self: self.n_features)
    d_in = property(lambda self: self.n_features)
    online = True
    n_train = 0

    def program_task(self) -> "SparseFeatures":
        """This task as the compiled programs see it: ``alpha``, ``p_active`` and ``seed`` at fixed values.

        They only set the arrays of :meth:`make` (``probs``, the stream key, the evaluation set), which the programs
        take as arguments, so runs that differ only in them (one per value of ``sweep.alpha``) share their compiled
        programs instead of compiling the same code again.
        """
        return dataclasses.replace(self, alpha=0.0, p_active=1.0, seed=0)

    def probabilities(self) -> np.ndarray:
        """``p_i``, shape ``[n]`` (float64)."""
        return feature_probabilities(self.n_features, self.alpha, self.p_active)

    def _draw(self, key, probs, n):
        k_u, k_v = jax.random.split(key)
        active = jax.random.uniform(k_u, (self.n_features, n), probs.dtype) < probs[:, None]
        return jnp.where(active, jax.random.uniform(k_v, (self.n_features, n), probs.dtype, 0.0, 2.0), 0.0)

    def make(self) -> FeatureData:
        """The activation probabilities, the evaluation set and the batch-stream key."""
        dtype = jnp.result_type(float)
        k_test, k_stream = jax.random.split(jax.random.key(self.seed))
        probs = jnp.asarray(self.probabilities(), dtype)
        x_test = self._draw(k_test, probs, self.n_test)
        empty = jnp.zeros((self.n_features, 0), dtype)
        return FeatureData(empty, empty, x_test, x_test, probs, jax.random.key_data(k_stream))

    def batch(self, data: FeatureData, step, batch_size: int):
        """A fresh batch ``(x, x)`` of ``batch_size`` samples for ``step`` (the same for every member)."""
        x = self._draw(jax.random.fold_in(jax.random.wrap_key_data(data.key), step), data.probs, batch_size)
        return x, x

    def validate_batch_size(self, batch_size: int) -> None:
        if batch_size <= 0:
            raise ValueError("the sparse-features task draws fresh batches: train.batch_size must be positive.")
