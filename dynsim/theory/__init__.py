"""Analytic laws, one module per family. Every function documents its formula, reference and regime of validity."""

from . import parametrization as parametrization
from . import stability as stability
from . import superposition as superposition

__all__ = ["parametrization", "stability", "superposition"]
