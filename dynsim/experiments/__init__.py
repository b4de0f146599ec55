"""Named experiments: a default spec, a quick size, and an analysis that compares results with theory.

Each experiment writes into its output directory the results store (:mod:`dynsim.io`), ``summary.json``,
``report.md`` and PNG figures. :func:`run` strings the stages together; every stage is a plain function.
"""

from ._base import VERDICTS as VERDICTS
from ._base import Check as Check
from ._base import Experiment as Experiment
from ._base import Requirements as Requirements
from ._base import build as build
from ._base import get as get
from ._base import names as names
from ._base import register as register
from ._base import resolve_spec as resolve_spec
from ._base import run as run
from ._base import verdict_text as verdict_text
from . import lr_transfer as lr_transfer  # noqa: E402  (registers itself)
from . import edge_of_stability as edge_of_stability  # noqa: E402
from . import kernel_regime as kernel_regime  # noqa: E402
from . import catapult as catapult  # noqa: E402
from . import sharpness_width as sharpness_width  # noqa: E402
from . import sweep as sweep  # noqa: E402
from . import superposition as superposition  # noqa: E402
from . import width_scaling as width_scaling  # noqa: E402

__all__ = ["Check", "VERDICTS", "verdict_text", "Experiment", "Requirements", "build", "get", "names", "register",
           "resolve_spec", "run"]
