"""Tasks: where the training data come from.

:class:`TeacherStudent` draws Gaussian inputs, optionally with a power-law covariance, and labels them with a fixed
random teacher plus Gaussian label noise. It holds either a fixed training set of ``n_train`` samples or draws a
fresh batch every step (``n_train = 0``, online). Data are stored width-major, ``[d, P]``.

Every member of a sweep sees the same data and the same minibatch order: the task's ``seed`` is a property of the
task, while the ``seed`` axis of a sweep sets each member's initialisation. This keeps comparisons across
learning rates and widths paired, and lets members of one width share the input matrix in one matmul.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ._base import Task

__all__ = ["TeacherStudent", "Data"]


class Data(NamedTuple):
    """Arrays of a task, passed to compiled programs as arguments (never baked in as constants).

    Attributes:
      x_train, y_train: ``[d, P]`` and ``[k, P]`` (``P = 0`` for online tasks).
      x_test, y_test: ``[d, P_test]`` and ``[k, P_test]``.
      input_scale: ``[d]`` square roots of the input covariance eigenvalues.
      teacher: teacher weights ``(W1 [t, d], w2 [k, t])`` (``W1`` is ``[k, d]`` and ``w2`` is unused for a
        linear teacher).
      target_scale: scalar normalising the teacher output to unit variance.
      key: key for minibatch order / online batches.
    """

    x_train: jax.Array
    y_train: jax.Array
    x_test: jax.Array
    y_test: jax.Array
    input_scale: jax.Array
    teacher: tuple
    target_scale: jax.Array
    key: jax.Array


@dataclasses.dataclass(frozen=True, kw_only=True)
class TeacherStudent(Task):
    """Teacher-student regression.

    .. math::

        x \\sim \\mathcal N(0, \\mathrm{diag}(\\lambda)),\\ \\lambda_j \\propto j^{-\\alpha}\\ (\\text{mean } 1),\\qquad
        y = s\\, T(x) + \\sigma \\varepsilon,

    with ``T`` a linear map ``x -> W x / sqrt(d)`` or a two-layer ReLU network of width ``teacher_width``, and ``s``
    chosen so that ``s T(x)`` has unit variance.

    Attributes:
      d_in: input dimension.
      n_train: training-set size ``P``; 0 draws a fresh batch every step (online).
      n_test: held-out test-set size.
      teacher: ``"linear"`` or ``"mlp"``.
      teacher_width: hidden width of an ``"mlp"`` teacher.
      d_out: output dimension.
      noise: label-noise standard deviation ``sigma`` (training labels only; the test set is noiseless).
      input_alpha: power-law exponent ``alpha`` of the input covariance (0: isotropic).
      seed: seed of the data, the teacher and the minibatch order.
    """

    d_in: int
    n_train: int = 256
    n_test: int = 1024
    teacher: str = "mlp"
    teacher_width: int = 64
    d_out: int = 1
    noise: float = 0.0
    input_alpha: float = 0.0
    seed: int = 0

    def __post_init__(self):
        for name in ("d_in", "n_test", "teacher_width", "d_out"):
            value = getattr(self, name)
            if not (isinstance(value, int) and value >= 1):
                raise ValueError(f"task {name} must be a positive integer, got {value!r}.")
        if not (isinstance(self.n_train, int) and self.n_train >= 0):
            raise ValueError(f"task n_train must be a non-negative integer (0 = online), got {self.n_train!r}.")
        if self.teacher not in ("linear", "mlp"):
            raise ValueError(f"task teacher must be 'linear' or 'mlp', got {self.teacher!r}.")
        for name in ("noise", "input_alpha"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
                raise ValueError(f"task {name} must be a finite number, got {value!r}.")
        if self.noise < 0:
            raise ValueError(f"task noise must be >= 0, got {self.noise!r}.")
        if isinstance(self.seed, bool) or not isinstance(self.seed, numbers.Integral) or not 0 <= self.seed < 2**32:
            raise ValueError(f"task seed must be an integer in [0, 2**32), got {self.seed!r}.")

    @property
    def online(self) -> bool:
        return self.n_train == 0

    def program_task(self) -> TeacherStudent:
        """This task with ``seed = 0``: the seed only draws the arrays of :meth:`make` (the teacher, the data and the
        key of the batch order or stream), which the programs take as arguments."""
        return dataclasses.replace(self, seed=0)

    def _teacher_apply(self, teacher, x):
        if self.teacher == "linear":
            return teacher[0] @ x / math.sqrt(self.d_in)
        h = jax.nn.relu(teacher[0] @ x / math.sqrt(self.d_in))
        return teacher[1] @ h * math.sqrt(2.0 / self.teacher_width)

    def _inputs(self, key, scale, n):
        return scale[:, None] * jax.random.normal(key, (self.d_in, n), dtype=scale.dtype)

    def make(self) -> Data:
        """Draw the data set, the teacher and the test set."""
        dtype = jnp.result_type(float)
        key = jax.random.key(self.seed)
        k_teach, k_norm, k_train, k_noise, k_test, k_order = jax.random.split(key, 6)
        eig = np.arange(1, self.d_in + 1, dtype=np.float64) ** (-float(self.input_alpha))
        eig = eig / eig.mean()
        scale = jnp.asarray(np.sqrt(eig), dtype)
        k1, k2 = jax.random.split(k_teach)
        if self.teacher == "linear":
            teacher = (jax.random.normal(k1, (self.d_out, self.d_in), dtype), jnp.zeros((1, 1), dtype))
        else:
            teacher = (
                jax.random.normal(k1, (self.teacher_width, self.d_in), dtype),
                jax.random.normal(k2, (self.d_out, self.teacher_width), dtype),
            )
        probe = self._teacher_apply(teacher, self._inputs(k_norm, scale, 8192))
        target_scale = 1.0 / jnp.sqrt(jnp.mean(probe**2))
        x_test = self._inputs(k_test, scale, self.n_test)
        y_test = target_scale * self._teacher_apply(teacher, x_test)
        x_train = self._inputs(k_train, scale, self.n_train)
        y_train = target_scale * self._teacher_apply(teacher, x_train)
        y_train = y_train + self.noise * jax.random.normal(k_noise, y_train.shape, dtype)
        return Data(x_train, y_train, x_test, y_test, scale, teacher, target_scale, jax.random.key_data(k_order))

    def batch(self, data: Data, step, batch_size: int):
        """The batch used at ``step``: the full training set, an epoch-shuffled minibatch, or a fresh online batch.

        ``batch_size = 0`` means full batch. The batch depends only on the task and the step, so every member of a
        sweep sees the same one.
        """
        key = jax.random.wrap_key_data(data.key)
        if self.online:
            k_x, k_e = jax.random.split(jax.random.fold_in(key, step))
            x = self._inputs(k_x, data.input_scale, batch_size)
            y = data.target_scale * self._teacher_apply(data.teacher, x)
            return x, y + self.noise * jax.random.normal(k_e, y.shape, y.dtype)
        if batch_size == 0 or batch_size >= self.n_train:
            return data.x_train, data.y_train
        per_epoch = self.n_train // batch_size
        epoch, pos = step // per_epoch, step % per_epoch
        perm = jax.random.permutation(jax.random.fold_in(key, epoch), self.n_train)
        idx = jax.lax.dynamic_slice_in_dim(perm, pos * batch_size, batch_size)
        return data.x_train[:, idx], data.y_train[:, idx]

    def validate_batch_size(self, batch_size: int) -> None:
        if self.online and batch_size <= 0:
            raise ValueError("an online task (n_train = 0) needs train.batch_size > 0.")
        if batch_size < 0:
            raise ValueError(f"train.batch_size must be >= 0 (0 = full batch), got {batch_size!r}.")
        if not self.online and batch_size > self.n_train:
            raise ValueError(f"train.batch_size ({batch_size}) exceeds the training set (n_train = {self.n_train}); "
                             "use 0 for full batch.")
