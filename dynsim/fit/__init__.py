"""Fits with confidence intervals: power laws and lines (one variable at a time), and the joint laws of the scaling
literature (:func:`law`).

* :func:`power_law`, :func:`slope`, :func:`mean_ci`, :func:`lr_optimum`: one-variable fits with bootstrap intervals
  (``dynsim/fit/_power.py``).
* :func:`agrees`, :func:`verdict`, :func:`regime`: a measured interval against theory and its competitors.
* :func:`law`: a named (:data:`FORMS`) or user-given functional form fitted to a table, Huber on log residuals with
  L-BFGS-B from a grid of starts, intervals by a bootstrap over whole runs, model comparison and the compute-optimal
  allocation (``dynsim/fit/_law.py``).

Sign convention: decaying laws have a *positive* exponent, ``y ~ x**(-alpha)``.
"""

from ._law import FORMS as FORMS
from ._law import Form as Form
from ._law import LawFit as LawFit
from ._law import annealing_areas as annealing_areas
from ._law import extrapolation_error as extrapolation_error
from ._law import get_form as get_form
from ._law import law as law
from ._power import LineFit as LineFit
from ._power import PowerLawFit as PowerLawFit
from ._power import Regime as Regime
from ._power import agrees as agrees
from ._power import lr_optimum as lr_optimum
from ._power import mean_ci as mean_ci
from ._power import percentile_ci as percentile_ci
from ._power import power_law as power_law
from ._power import regime as regime
from ._power import slope as slope
from ._power import verdict as verdict

__all__ = ["lr_optimum", "PowerLawFit", "LineFit", "Regime", "power_law", "slope", "mean_ci", "percentile_ci", "agrees",
           "verdict", "regime", "law", "LawFit", "Form", "FORMS", "get_form", "extrapolation_error", "annealing_areas"]
