"""Toy models as frozen, hashable specs with pure ``init`` / ``apply`` functions.

- :class:`MLP`: a fully connected network of any depth (ReLU, tanh, erf, linear), with frozen layers as an option;
  :func:`uv` (the two-layer linear network of Lewkowycz et al.) and :func:`random_feature_model` (first layer
  frozen) are special cases.
- :class:`Linearized`: a network's linearization around its init.
- :class:`Superposition`: the superposition toy model ``x' = ReLU(W^T W x + b)``.
- :class:`WithLoss`: any model trained on its task's loss (:attr:`dynsim.tasks.Task.loss`) instead of its own.
- :class:`FlaxModel`: a user's Flax network (``flax.nnx`` or ``flax.linen``) built by a factory ``width -> module``
  (the optional extra ``dynsim[flax]``).

A new model subclasses :class:`Model` (its methods and capabilities are listed there).
"""

from ._base import ACTIVATIONS as ACTIVATIONS
from ._base import Model as Model
from ._base import Scales as Scales
from ._flax import FlaxModel as FlaxModel
from ._loss import WithLoss as WithLoss
from ._mlp import MLP as MLP
from ._mlp import Linearized as Linearized
from ._mlp import random_feature_model as random_feature_model
from ._mlp import uv as uv
from ._superposition import Superposition as Superposition

__all__ = ["Model", "Scales", "ACTIVATIONS", "MLP", "Linearized", "uv", "random_feature_model", "Superposition",
           "FlaxModel", "WithLoss"]
