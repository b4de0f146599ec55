"""Analytic laws, one module per family. Every function documents its formula, reference and regime of validity."""

from . import parametrization as parametrization
from . import stability as stability

__all__ = ["parametrization", "stability"]
