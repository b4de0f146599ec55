"""dynsim: training dynamics of toy models, simulated for thousands of widths, learning rates and seeds at once.

The packages, in the order data flows through them (``docs/architecture.md``): :mod:`dynsim.models`,
:mod:`dynsim.tasks`, :mod:`dynsim.param` and :mod:`dynsim.optim` describe a member; :mod:`dynsim.executor` trains a
sweep of them (:func:`run`), recording :mod:`dynsim.observables` and writing :mod:`dynsim.io` stores;
:mod:`dynsim.fit` and :mod:`dynsim.theory` turn records into measurements and predictions;
:mod:`dynsim.experiments` strings it all together for the command line (:mod:`dynsim.cli`).
"""

from . import executor as executor
from . import fit as fit
from . import io as io
from . import models as models
from . import observables as observables
from . import optim as optim
from . import padding as padding
from . import param as param
from . import ridge as ridge
from . import sensitivity as sensitivity
from . import tasks as tasks
from . import theory as theory
from ._version import __version__ as __version__
from .executor import InputError as InputError
from .executor import Sweep as Sweep
from .executor import hypergrad as hypergrad
from .executor import run as run

__all__ = ["executor", "fit", "io", "models", "observables", "optim", "padding", "param", "ridge", "sensitivity",
           "tasks", "theory",
           "run", "hypergrad", "Sweep", "InputError", "__version__"]
