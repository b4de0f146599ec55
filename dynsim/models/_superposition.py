"""The superposition toy model (the sparse power-law features it reconstructs are :class:`dynsim.tasks.SparseFeatures`).

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

Model and task implement the executor's interfaces (:func:`dynsim.run`): ``m`` is the executor's ``width`` axis,
bucketed, padded and masked like any width, so a sweep over ``m``, weight decay, learning rate and seed runs as a
few vectorised programs. Activations are width-major (``x`` is ``[n, B]``, ``W`` is ``[m, n]``), as everywhere in
dynsim.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from ..padding import width_mask
from ._base import Model, Scales

__all__ = ["Superposition"]

_NORM_EPS = 1e-8  # keeps w / |w| finite for a direction at exactly 0 (as Adam's epsilon keeps its ratio finite)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Superposition(Model):
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

    width_name = "m"  # the hidden dimension is the executor's width axis; experiments' results call it m
    parametrized = False  # the abc exponents are not used: a sweep over param would train identical copies
    feature_directions = True  # column i of W is feature i's direction
    custom_decay = True  # decay toward 0 or toward unit-norm directions (decay_term)

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
