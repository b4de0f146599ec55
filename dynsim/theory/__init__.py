"""Analytic laws, one module per family. Every function documents its formula, reference and regime of validity."""

from . import annealing as annealing
from . import batch_size as batch_size
from . import data_pruning as data_pruning
from . import kernel_regression as kernel_regression
from . import kernels as kernels
from . import linear_gd as linear_gd
from . import ntk_regime as ntk_regime
from . import parametrization as parametrization
from . import stability as stability
from . import superposition as superposition
from . import weight_decay as weight_decay

__all__ = ["annealing", "batch_size", "data_pruning", "kernel_regression", "kernels", "linear_gd", "ntk_regime",
           "parametrization", "stability", "superposition", "weight_decay"]
