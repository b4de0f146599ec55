"""A model trained on its task's loss: :class:`WithLoss` wraps any model and replaces its :meth:`~Model.loss`.

A task that chooses its loss (:attr:`dynsim.tasks.Task.loss`, e.g. softmax cross-entropy for
:class:`dynsim.tasks.Classification`) gets its model wrapped by :func:`dynsim.run`; a task that leaves it ``None``
trains the model unchanged, on the model's own loss (the squared error of :class:`MLP`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from ._base import Model, Scales

__all__ = ["WithLoss"]


@dataclasses.dataclass(frozen=True)
class WithLoss(Model):
    """``base`` with ``loss`` in place of its own; everything else is ``base``'s.

    Attributes:
      base: the model.
      objective: the loss ``(outputs [d_out, P], targets [d_out, P]) -> scalar``, hashable by value (a frozen
        dataclass with ``__call__``), since it keys compiled programs with the model.
    """

    base: Model
    objective: Callable

    packable = False  # the packed layout's loss is its own; this wrapper runs in the vmap layout
    d_in = property(lambda self: self.base.d_in)
    d_out = property(lambda self: self.base.d_out)
    depth = property(lambda self: self.base.depth)
    roles = property(lambda self: self.base.roles)
    decayed = property(lambda self: self.base.decayed)
    smooth = property(lambda self: self.base.smooth)
    paddable = property(lambda self: getattr(self.base, "paddable", True))
    parametrized = property(lambda self: self.base.parametrized)
    returns_preacts = property(lambda self: self.base.returns_preacts)
    feature_directions = property(lambda self: self.base.feature_directions)
    custom_decay = property(lambda self: self.base.custom_decay)
    width_name = property(lambda self: self.base.width_name)

    def __getattr__(self, name):  # anything else a layout or observable reads of the base model (e.g. shapes)
        if name in ("base", "objective") or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.base, name)

    def loss(self, out, y):
        """The task's loss."""
        return self.objective(out, y)

    def decay_term(self, params, coefficient):
        return self.base.decay_term(params, coefficient)

    def scales(self, width, abc, init_scale) -> Scales:
        return self.base.scales(width, abc, init_scale)

    def init(self, key, n_pad: int, width, std) -> tuple:
        return self.base.init(key, n_pad, width, std)

    def apply(self, params, x, mult, mask, **kwargs):
        return self.base.apply(params, x, mult, mask, **kwargs)

    def activation_units(self, n_pad: int) -> int:
        return self.base.activation_units(n_pad)

    def n_params(self, width: int) -> int:
        return self.base.n_params(width)

    def flops(self, width: int, n_samples: int) -> float:
        return self.base.flops(width, n_samples)
