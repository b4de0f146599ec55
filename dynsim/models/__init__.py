"""Toy models as frozen, hashable specs with pure ``init`` / ``apply`` functions.

- :class:`MLP`: a fully connected network of any depth (ReLU, tanh, erf, linear), with frozen layers as an option;
  :func:`uv` (the two-layer linear network of Lewkowycz et al.) and :func:`random_feature_model` (first layer
  frozen) are special cases.
- :class:`Linearized`: a network's linearization around its init.
- :class:`Superposition`: the superposition toy model ``x' = ReLU(W^T W x + b)``.

A new model subclasses :class:`Model` (its methods and capabilities are listed there).
"""

from ._base import ACTIVATIONS as ACTIVATIONS
from ._base import Model as Model
from ._base import Scales as Scales
from ._mlp import MLP as MLP
from ._mlp import Linearized as Linearized
from ._mlp import random_feature_model as random_feature_model
from ._mlp import uv as uv
from ._superposition import Superposition as Superposition

__all__ = ["Model", "Scales", "ACTIVATIONS", "MLP", "Linearized", "uv", "random_feature_model", "Superposition"]
