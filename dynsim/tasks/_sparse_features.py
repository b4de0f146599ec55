"""Sparse features with power-law frequencies, the task of the superposition toy model
(:class:`dynsim.models.Superposition`; Liu, Liu & Gore 2025, "Superposition yields robust neural scaling")."""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ._base import Task

__all__ = ["SparseFeatures", "FeatureData", "feature_probabilities"]


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
class SparseFeatures(Task):
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

    def program_task(self) -> SparseFeatures:
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
