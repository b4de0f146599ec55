"""Classification with softmax cross-entropy, and the z-loss (Wortsman et al. 2023, "Small-scale proxies for
large-scale Transformer training instabilities", section 3.2)."""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import NamedTuple

import jax
import jax.numpy as jnp

from ._base import Task

__all__ = ["Classification", "ClassData", "SoftmaxCrossEntropy"]


@dataclasses.dataclass(frozen=True)
class SoftmaxCrossEntropy:
    r"""Softmax cross-entropy on logits ``[k, P]`` and one-hot targets ``[k, P]``, averaged over samples, plus the
    z-loss :math:`c \log^2 Z` that pulls the log-partition function :math:`\log Z = \log\sum_j e^{f_j}` to 0:

    .. math::

        \ell = \frac1P \sum_{\mu} \Big[\log Z_\mu - \sum_j y_{j\mu} f_{j\mu} + c\, (\log Z_\mu)^2\Big].

    Cross-entropy is unchanged when every logit of a sample moves by the same amount, so nothing in it holds
    :math:`\log Z` in place; at high learning rates Adam's per-coordinate steps let it drift ("output logit
    divergence"), which the z-loss (``c = 1e-4`` in the paper) removes.

    Attributes:
      z_loss: the coefficient ``c >= 0`` (0: plain cross-entropy, with no z-loss term computed).
    """

    z_loss: float = 0.0

    def __call__(self, out, y):
        log_z = jax.nn.logsumexp(out, axis=0)
        loss = jnp.mean(log_z - jnp.sum(y * out, axis=0))
        return loss + self.z_loss * jnp.mean(log_z**2) if self.z_loss else loss


class ClassData(NamedTuple):
    """Arrays of :class:`Classification` (arguments of the compiled programs).

    Attributes:
      x_train, y_train: inputs ``[d, P]`` and one-hot labels ``[k, P]``.
      x_test, y_test: the held-out set.
      key: key data of the minibatch order.
    """

    x_train: jax.Array
    y_train: jax.Array
    x_test: jax.Array
    y_test: jax.Array
    key: jax.Array


@dataclasses.dataclass(frozen=True, kw_only=True)
class Classification(Task):
    """Gaussian inputs in ``k`` classes, the class of ``x`` the argmax of a random linear teacher's logits
    ``W x / sqrt(d)``; trained on softmax cross-entropy with an optional z-loss (:class:`SoftmaxCrossEntropy`).

    Attributes:
      d_in: input dimension.
      n_classes: ``k`` (the model's output dimension).
      n_train: training-set size (> 0).
      n_test: held-out set size.
      z_loss: the z-loss coefficient (0: none).
      seed: seed of the data, the teacher and the minibatch order.
    """

    d_in: int
    n_classes: int = 8
    n_train: int = 256
    n_test: int = 1024
    z_loss: float = 0.0
    seed: int = 0

    def __post_init__(self):
        for name in ("d_in", "n_train", "n_test"):
            value = getattr(self, name)
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
                raise ValueError(f"task {name} must be a positive integer, got {value!r}.")
        if not (isinstance(self.n_classes, int) and not isinstance(self.n_classes, bool) and self.n_classes >= 2):
            raise ValueError(f"task n_classes must be an integer >= 2, got {self.n_classes!r}.")
        z = self.z_loss
        if isinstance(z, bool) or not isinstance(z, numbers.Real) or not (math.isfinite(z) and z >= 0):
            raise ValueError(f"task z_loss must be a non-negative number, got {z!r}.")
        if isinstance(self.seed, bool) or not isinstance(self.seed, numbers.Integral) or not 0 <= self.seed < 2**32:
            raise ValueError(f"task seed must be an integer in [0, 2**32), got {self.seed!r}.")

    d_out = property(lambda self: self.n_classes)
    online = False

    @property
    def loss(self) -> SoftmaxCrossEntropy:
        """Softmax cross-entropy with this task's z-loss (:func:`dynsim.run` trains the model on it)."""
        return SoftmaxCrossEntropy(float(self.z_loss))

    def program_task(self) -> Classification:
        """This task with ``seed = 0``: the seed only draws the arrays of :meth:`make`, which the programs take as
        arguments (the z-loss is part of the model's loss and keys the programs there)."""
        return dataclasses.replace(self, seed=0)

    def make(self) -> ClassData:
        dtype = jnp.result_type(float)
        k_teach, k_train, k_test, k_order = jax.random.split(jax.random.key(self.seed), 4)
        teacher = jax.random.normal(k_teach, (self.n_classes, self.d_in), dtype)

        def draw(key, n):
            x = jax.random.normal(key, (self.d_in, n), dtype)
            labels = jnp.argmax(teacher @ x, axis=0)
            return x, jax.nn.one_hot(labels, self.n_classes, dtype=dtype, axis=0)

        x_train, y_train = draw(k_train, self.n_train)
        x_test, y_test = draw(k_test, self.n_test)
        return ClassData(x_train, y_train, x_test, y_test, jax.random.key_data(k_order))

    def batch(self, data: ClassData, step, batch_size: int):
        """The full training set (``batch_size = 0``) or an epoch-shuffled minibatch, the same for every member."""
        if batch_size == 0 or batch_size >= self.n_train:
            return data.x_train, data.y_train
        per_epoch = self.n_train // batch_size
        epoch, pos = step // per_epoch, step % per_epoch
        perm = jax.random.permutation(jax.random.fold_in(jax.random.wrap_key_data(data.key), epoch), self.n_train)
        idx = jax.lax.dynamic_slice_in_dim(perm, pos * batch_size, batch_size)
        return data.x_train[:, idx], data.y_train[:, idx]

    def validate_batch_size(self, batch_size: int) -> None:
        if batch_size < 0:
            raise ValueError(f"train.batch_size must be >= 0 (0 = full batch), got {batch_size!r}.")
        if batch_size > self.n_train:
            raise ValueError(f"train.batch_size ({batch_size}) exceeds the training set (n_train = {self.n_train}); "
                             "use 0 for full batch.")
