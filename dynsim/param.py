"""Parametrizations as abc-exponent tables.

A parametrization (Yang & Hu, "Tensor Programs IV", 2021) fixes, for every weight layer ``l`` of a network of
width ``n``, three exponents:

.. math::

    W_l = n^{-a_l} w_l,\\qquad w_l \\sim \\mathcal N(0, \\sigma^2 n^{-2 b_l} / F_l^{0}),
    \\qquad \\eta_l = \\eta\\, n^{-c_l},

where ``w_l`` is the trained parameter, ``a_l`` a forward multiplier, ``b_l`` the init scale and ``c_l`` the
per-layer learning-rate exponent. ``F_l^{0}`` is the input dimension ``d`` for the first layer and 1 otherwise:
the input dimension is a constant of the task, not a width, so it only normalises the input layer.

Layers are grouped into three roles: ``input`` (d -> n), ``hidden`` (n -> n) and ``output`` (n -> k). Every factor
is evaluated from the member's *true* width ``n``; padding never enters.

Tables for SGD (``c``) and for Adam (``c_adam``) differ because Adam's update is scale-invariant: under the abc
symmetry ``a -> a + t, b -> b - t`` the SGD exponent shifts by ``-2t`` but Adam's by ``-t``.
"""

from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["Parametrization", "sp", "ntk", "mup", "mean_field", "get", "register", "NAMES"]

ROLES = ("input", "hidden", "output")


@dataclasses.dataclass(frozen=True)
class Parametrization:
    """An abc-parametrization: exponents per layer role ``(input, hidden, output)``.

    Attributes:
      name: short name used as the coordinate value in results (``"sp"``, ``"mup"``, ...).
      a: forward-multiplier exponents, ``W = n^-a w``.
      b: init exponents, ``std(w) = init_scale * n^-b`` (times ``d^-1/2`` for the input layer).
      c: SGD learning-rate exponents, ``lr_l = lr * n^-c``.
      c_adam: Adam learning-rate exponents.
    """

    name: str
    a: tuple[float, float, float]
    b: tuple[float, float, float]
    c: tuple[float, float, float]
    c_adam: tuple[float, float, float]

    def __post_init__(self):
        for field in ("a", "b", "c", "c_adam"):
            value = getattr(self, field)
            if len(value) != 3:
                raise ValueError(f"Parametrization.{field} needs 3 exponents (input, hidden, output), got {value!r}.")

    def table(self, optimizer: str = "sgd") -> np.ndarray:
        """The exponents as a ``[3, 3]`` array: rows ``a, b, c`` (``c`` for ``optimizer``), columns roles."""
        c = self.c_adam if optimizer in ("adam", "adamw") else self.c
        return np.array([self.a, self.b, c], dtype=np.float64)


def sp() -> Parametrization:
    """Standard parametrization: fan-in init, no multipliers, one global learning rate.

    Under SGD the NTK grows linearly with width, so the largest stable learning rate shrinks as ``1/n``.
    """
    return Parametrization("sp", a=(0.0, 0.0, 0.0), b=(0.0, 0.5, 0.5), c=(0.0, 0.0, 0.0), c_adam=(0.0, 0.0, 0.0))


def ntk() -> Parametrization:
    """NTK parametrization (Jacot et al. 2018): unit-variance weights, ``n^-1/2`` multipliers after the input layer.

    The kernel is ``O(1)`` and stays fixed as ``n -> inf`` (lazy regime). Adam exponents keep the per-entry update
    ``O(n^-1/2)`` in effect, which is again the kernel regime: ``c_adam = (1/2, 1, 1/2)``.
    """
    return Parametrization("ntk", a=(0.0, 0.5, 0.5), b=(0.0, 0.0, 0.0), c=(0.0, 0.0, 0.0), c_adam=(0.5, 1.0, 0.5))


def mup() -> Parametrization:
    """Maximal-update parametrization (Yang & Hu 2021, Table 3), abc form.

    SGD: ``a = (-1/2, 0, 1/2)``, ``b = (1/2, 1/2, 1/2)``, ``c = 0``. Adam (Yang et al. 2022, Tensor Programs V):
    ``c_adam = (1/2, 1, 1/2)``, i.e. the hidden and output learning rates scale as ``1/n`` in effective units.
    Every layer's features move by ``Theta(1)`` per step at every width, so the optimal learning rate transfers.
    """
    return Parametrization(
        "mup", a=(-0.5, 0.0, 0.5), b=(0.5, 0.5, 0.5), c=(0.0, 0.0, 0.0), c_adam=(0.5, 1.0, 0.5)
    )


def mean_field() -> Parametrization:
    """Mean-field parametrization (Mei, Montanari & Nguyen 2018; Chizat & Bach 2018), deep form.

    The output is an average, ``f = (1/n) sum_i v_i phi(h_i)`` with unit-variance weights and learning rates
    scaled up by ``n``. It is muP shifted by the abc symmetry with ``t = 1/2`` on every layer, so under SGD it
    produces exactly the same function trajectory as :func:`mup` (a test checks this).
    """
    return Parametrization(
        "mean_field", a=(0.0, 0.5, 1.0), b=(0.0, 0.0, 0.0), c=(-1.0, -1.0, -1.0), c_adam=(0.0, 0.5, 0.0)
    )


_REGISTRY = {"sp": sp, "ntk": ntk, "mup": mup, "mean_field": mean_field}
NAMES = tuple(_REGISTRY)  # the built-in parametrizations, the ones a spec file can name


def register(p: Parametrization) -> str:
    """Make a custom parametrization available by its name to sweeps and results (``Sweep(param=[p])`` calls
    this); returns the name. A custom name registered again takes the new table (a results directory keys on the
    exponents, so a changed table does not resume stored results); the built-in names cannot be replaced."""
    if not isinstance(p, Parametrization):
        raise ValueError(f"param.register takes a Parametrization, got {type(p).__name__}.")
    if p.name in NAMES and _REGISTRY[p.name]() != p:
        raise ValueError(f"parametrization name {p.name!r} is built in with other exponents; give yours another name.")
    _REGISTRY[p.name] = lambda: p
    return p.name


def get(name: str | Parametrization) -> Parametrization:
    """Look a parametrization up by name (``sp``, ``ntk``, ``mup``, ``mean_field`` or a registered one)."""
    if isinstance(name, Parametrization):
        return name
    try:
        return _REGISTRY[name]()
    except KeyError:
        raise ValueError(f"unknown parametrization {name!r}; choose one of {', '.join(_REGISTRY)}.") from None
