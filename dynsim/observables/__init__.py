"""Observables: quantities recorded inside the compiled program at record points, one value per member.

Built in (``names()`` lists them): losses and outputs (``loss``, ``test_loss``, ``outputs``, ``output_rms``,
``preact_rms``), sharpness (``sharpness``, ``preconditioned_sharpness`` and their ``_err`` twins), the Hessian
spectrum (``hessian_topk``, ``hessian_trace``, ``hessian_density_nodes`` / ``_weights``), the empirical NTK
(``ntk_eigs``, ``ntk_distance``, ``output_distance``), superposition geometry (``represented_fraction``,
``mean_sq_overlap``, ``feature_loss``, ``dims_per_feature``), weight spectra (``top_singular_value``) and gradient
noise (``gradient_noise``).

An observable is defined once, as an :class:`Observable` whose ``compute(ctx, params, extra)`` reads a
:class:`Context`; the executor runs it in the vmapped layout, and in the packed layout when it reads only the
member's outputs (``outputs_only``). A new one is registered with :func:`register`; the factories
(:func:`sharpness_observable`, :func:`ntk_observables`, ...) make variants of the built-in ones.
"""

from . import _basic, _geometry, _noise, _ntk, _sharpness, _spectrum, _weights
from ._geometry import REPRESENTED_NORM as REPRESENTED_NORM
from ._geometry import mean_sq_overlap as mean_sq_overlap
from ._geometry import represented as represented
from ._ntk import empirical_ntk as empirical_ntk
from ._ntk import ntk_observables as ntk_observables
from ._registry import Context as Context
from ._registry import Observable as Observable
from ._registry import Shared as Shared
from ._registry import builtin as builtin
from ._registry import get as get
from ._registry import init_extras as init_extras
from ._registry import names as names
from ._registry import record as record
from ._registry import register as register
from ._registry import seal as _seal
from ._registry import version as version
from ._sharpness import HVP_METHODS as HVP_METHODS
from ._sharpness import hessian_matvec as hessian_matvec
from ._sharpness import sharpness_observable as sharpness_observable
from ._sharpness import top_eigenpair as top_eigenpair
from ._spectrum import density as density
from ._spectrum import density_observable as density_observable
from ._spectrum import lanczos as lanczos
from ._spectrum import topk_observable as topk_observable
from ._spectrum import trace_observable as trace_observable

# dynsim's own observables, one table per family, registered here and not replaceable.
BUILTIN = (*_basic.OBSERVABLES, *_sharpness.OBSERVABLES, *_spectrum.OBSERVABLES, *_ntk.OBSERVABLES,
           *_geometry.OBSERVABLES, *_weights.OBSERVABLES, *_noise.OBSERVABLES)
_seal(BUILTIN)

__all__ = ["Observable", "Shared", "Context", "BUILTIN", "register", "get", "names", "record", "init_extras",
           "version", "builtin", "HVP_METHODS", "sharpness_observable", "ntk_observables", "topk_observable",
           "trace_observable", "density_observable", "top_eigenpair", "hessian_matvec", "lanczos", "density",
           "empirical_ntk", "represented", "mean_sq_overlap", "REPRESENTED_NORM"]
