"""Analytic laws, one module per family. Every function documents its formula, reference and regime of validity."""

from . import kernel_regression as kernel_regression
from . import kernels as kernels
from . import ntk_regime as ntk_regime
from . import parametrization as parametrization
from . import stability as stability
from . import superposition as superposition

__all__ = ["kernel_regression", "kernels", "ntk_regime", "parametrization", "stability", "superposition"]
