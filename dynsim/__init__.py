"""dynsim: training dynamics of toy models, simulated for thousands of widths, learning rates and seeds at once."""

__version__ = "0.1.0"

from . import fit as fit
from . import io as io
from . import models as models
from . import obs as obs
from . import param as param
from . import superposition as superposition
from . import random_features as random_features
from . import tasks as tasks
from . import theory as theory
from .engine import InputError as InputError
from .engine import run as run
from .sweep import Sweep as Sweep

__all__ = ["fit", "io", "models", "obs", "param", "random_features", "superposition", "tasks", "theory", "run", "Sweep",
           "InputError", "__version__"]
