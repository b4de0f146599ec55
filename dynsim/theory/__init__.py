"""Analytic laws, one module per family. Every function documents its formula, reference and regime of validity."""

from . import kernels as kernels
from . import ntk_regime as ntk_regime
from . import parametrization as parametrization
from . import stability as stability

__all__ = ["kernels", "ntk_regime", "parametrization", "stability"]
