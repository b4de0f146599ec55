"""The model contract: :class:`Model`, its capabilities with their defaults, per-layer :class:`Scales`, activations."""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

__all__ = ["Model", "Scales", "ACTIVATIONS"]

# Activation and its init gain. ReLU's sqrt(2) (He) and erf's 1 / sqrt(E[erf(z)^2]) = 1 / sqrt((2/pi) arcsin(2/3))
# (z ~ N(0, 1), Williams 1997) keep the second moment of a unit-variance pre-activation through the layer.
ACTIVATIONS = {
    "relu": (jax.nn.relu, math.sqrt(2.0)),
    "tanh": (jnp.tanh, 1.0),
    "erf": (jax.scipy.special.erf, 1.0 / math.sqrt(2.0 / math.pi * math.asin(2.0 / 3.0))),
    "linear": (lambda h: h, 1.0),
}


class Scales(NamedTuple):
    """Per-layer factors of one member, evaluated from its true width.

    Attributes:
      mult: forward multipliers ``n^-a`` per layer, shape ``[depth]``.
      std: init standard deviations per layer, shape ``[depth]``.
      lr: learning-rate multipliers ``n^-c`` per layer, shape ``[depth]``.
    """

    mult: jax.Array
    std: jax.Array
    lr: jax.Array


class Model:
    """What the executor needs of a model. :class:`~dynsim.models.MLP`, :class:`~dynsim.models.Linearized` and
    :class:`~dynsim.models.Superposition` are examples; a new model subclasses this, as a frozen dataclass (hashable
    by value: it keys compiled programs), and implements the methods below. Its width axis is padded to a static
    ``n_pad`` with the member's true ``width`` traced (:mod:`dynsim.padding`).

    Capabilities, class attributes with defaults that a subclass overrides where it can do more:

    - ``smooth = False``: the loss is smooth in the weights, so Hessian-vector products may be forward differences
      of gradients (``hvp="fd"``).
    - ``packable = False``: the packed layout can run it (two-layer networks whose units are independent).
    - ``paddable = True``: padded units are provably inert (zero at init, masked in the forward pass, no width
      factor read from ``n_pad``), so members of several widths may share a program; ``False`` compiles each
      width at its exact size (:func:`dynsim.executor.plan` gives every width its own bucket).
    - ``parametrized = True``: it reads the parametrization's exponents (``False`` refuses a sweep over ``param``,
      which would train identical copies).
    - ``returns_preacts = False``: ``apply(..., return_preacts=True)`` also returns the hidden pre-activations.
    - ``feature_directions = False``: its first weight matrix holds one direction per input feature (the
      superposition geometry observables read them).
    - ``custom_decay = False``: weight decay is :meth:`decay_term`, not ``coefficient * w`` on :attr:`decayed`.
    - ``width_name = "width"``: what experiments call the width axis.
    """

    smooth: bool = False
    packable: bool = False
    paddable: bool = True
    parametrized: bool = True
    returns_preacts: bool = False
    feature_directions: bool = False
    custom_decay: bool = False
    width_name: str = "width"

    d_in: int
    d_out: int

    @property
    def depth(self) -> int:
        """Number of weight layers (rows of :meth:`scales`' outputs)."""
        raise NotImplementedError

    @property
    def roles(self) -> tuple[int, ...]:
        """Parametrization role of each layer: 0 input, 1 hidden, 2 output."""
        raise NotImplementedError

    @property
    def decayed(self) -> tuple[bool, ...]:
        """Which parameters weight decay applies to (default: all of them)."""
        return (True,) * self.depth

    def decay_term(self, params, coefficient):
        """The weight-decay term added to the updates, where ``custom_decay`` is true."""
        raise NotImplementedError

    def scales(self, width, abc, init_scale) -> Scales:
        """Per-layer multipliers, init stds and lr multipliers of a member of true width ``width``."""
        raise NotImplementedError

    def init(self, key, n_pad: int, width, std) -> tuple:
        """Initial parameters at padded width ``n_pad``, padded units zero and independent of ``n_pad``."""
        raise NotImplementedError

    def apply(self, params, x, mult, mask):
        """Outputs ``[d_out, P]`` on inputs ``[d_in, P]``; ``mask`` zeroes padded units."""
        raise NotImplementedError

    def loss(self, out, y):
        """The training objective on outputs and targets."""
        raise NotImplementedError

    def activation_units(self, n_pad: int) -> int:
        """Activations per sample at ``n_pad`` (sizes groups and the memory estimate)."""
        raise NotImplementedError

    def n_params(self, width: int) -> int:
        """Parameters at true width ``width``."""
        raise NotImplementedError

    def flops(self, width: int, n_samples: int) -> float:
        """FLOPs of one forward and backward pass on ``n_samples`` at true width."""
        raise NotImplementedError
