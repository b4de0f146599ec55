"""``width-scaling``: the four scaling regimes of Bahri et al. in the power-law random-feature model.

Random-feature ridge regression (:mod:`dynsim.random_features`, solved in closed form) is measured along four
curves, each over seeds:

============================  ============================  =========================================
curve                         held fixed                    regime and predicted exponent
============================  ============================  =========================================
test loss vs width ``N``      ``P = large >> N``            resolution-limited, ``min(2a + 2b - 1, 2a)``
test loss vs ``P``            ``N = large >> P``            resolution-limited, ``min(2a + 2b - 1, 4a)``
``L - L(N = inf)`` vs ``N``   ``P = small << N``            variance-limited, 1
``L - L(P = inf)`` vs ``P``   ``N = small << P``            variance-limited, 1
============================  ============================  =========================================

(``a = alpha``, ``b = beta``: :func:`dynsim.theory.kernel_regression.resolution_limited_exponent`.) The limits
``L(N = inf)`` and ``L(P = inf)`` are computed exactly for each seed's data or features, so the variance-limited
differences carry no extra noise from estimating them. In width, a draw's loss fluctuates by ``O(1/sqrt(N))``
around a mean that approaches the limit as ``1/N``; the zero-mean first-order part of that fluctuation
(``width_fluctuation`` of :func:`dynsim.random_features.member_losses`) is subtracted as a control variate, which
leaves the same mean with ``O(1/N)`` noise. Each curve gets a power-law fit with a bootstrap CI over
seeds, a regime label and the deterministic equivalent
(:func:`~dynsim.theory.kernel_regression.rf_excess_risk`) drawn through the points.
"""

from __future__ import annotations

import json
import time

import numpy as np
import xarray as xr

from .. import fit as _fit
from .. import io as _io
from .. import random_features as _rf
from ..engine import progress_bar, versions
from ..plot import plt, save
from ..spec import SpecError
from ..theory import kernel_regression as _kr
from ._base import Check, Experiment, register

# The asymptotic exponents hold as N, P -> infinity with N/P -> 0 or infinity; at the sizes swept the deterministic
# equivalent's own local slope differs from them by up to ~0.1 (finite-size sums and the finite ratio of the fixed
# side), so +-0.15 on the exponent (the band) is a statement about that model error; the CI covers seeds.
EXPONENT_TOLERANCE = 0.15
# The deterministic equivalent is exact up to O(1/n) at n = min(N, P): the tolerance on the mean relative deviation
# is 1/n at the curve's smallest n (at least 5%); the bootstrap CI covers the seed noise.
DE_TOLERANCE = 0.05
N_BOOT = 500

DEFAULTS = {
    "experiment": "width-scaling",
    "analysis": {"n_latent": 1024, "alpha": 1.25, "beta": 0.0, "noise_var": 0.0, "ridge": 0.0, "seeds": 16,
                 "large": 4096, "small": 32, "resolution_sizes": [16, 32, 64, 128, 256],
                 "variance_sizes": [512, 1024, 2048, 4096]},
}
QUICK = {"analysis": {"seeds": 8, "large": 2048, "resolution_sizes": [16, 32, 64, 128],
                      "variance_sizes": [256, 512, 1024, 2048]}}

# name -> (varied axis, which side is large, regime)
CURVES = {
    "width, P >> N": ("width", "large", "resolution-limited"),
    "n_train, N >> P": ("n_train", "large", "resolution-limited"),
    "width, N >> P": ("width", "small", "variance-limited"),
    "n_train, P >> N": ("n_train", "small", "variance-limited"),
}
_LIMIT = {"width": "infinite_width_loss", "n_train": "infinite_data_loss"}  # the variance-limited baselines


def _model(analysis: dict) -> _rf.PowerLawRF:
    return _rf.PowerLawRF(n_latent=analysis["n_latent"], alpha=analysis["alpha"], beta=analysis["beta"],
                          noise_var=analysis["noise_var"])


def curve_points(analysis: dict, curve: str) -> tuple[np.ndarray, np.ndarray]:
    """``(widths, n_trains)`` of the points of ``curve`` (see the module table)."""
    varied, side, _ = CURVES[curve]
    sizes = np.asarray(analysis["resolution_sizes" if side == "large" else "variance_sizes"])
    fixed = np.full(sizes.shape, analysis[side])
    return (sizes, fixed) if varied == "width" else (fixed, sizes)


def execute(spec: dict, out, progress=None) -> xr.Dataset:
    """Solve every member of the four curves and store ``test_loss`` and the limits over ``width x n_train x seed``.

    Cells of the grid that belong to no curve are NaN. One compiled program per curve.
    """
    analysis = spec["analysis"]
    model = _model(analysis)
    seeds = np.arange(analysis["seeds"])
    widths = sorted({int(n) for c in CURVES for n in curve_points(analysis, c)[0]})
    n_trains = sorted({int(p) for c in CURVES for p in curve_points(analysis, c)[1]})
    data = {name: np.full((len(widths), len(n_trains), len(seeds)), np.nan) for name in _rf.NAMES}
    t0 = time.perf_counter()
    bar = progress_bar(len(CURVES), progress, "width-scaling curves", unit="curve")
    for curve, (varied, side, _) in CURVES.items():
        n, p = curve_points(analysis, curve)
        limits = (_LIMIT[varied],) if side == "small" else ()
        losses = _rf.member_losses(model, n, p, seeds, [analysis["ridge"]], limits=limits)
        for k in range(len(n)):
            i, j = widths.index(int(n[k])), n_trains.index(int(p[k]))
            for name in _rf.NAMES:  # curves can share a cell (same members): keep the limits either computed
                data[name][i, j] = np.where(np.isnan(losses[name][k, :, 0]), data[name][i, j], losses[name][k, :, 0])
        bar.update()
    bar.close()
    dims = ("width", "n_train", "seed")
    ds = xr.Dataset({name: (dims, v, {"description": _rf.DESCRIPTIONS[name]}) for name, v in data.items()},
                    coords={"width": widths, "n_train": n_trains, "seed": seeds},
                    attrs={"spec": json.dumps(spec), "timing": json.dumps({"run_s": time.perf_counter() - t0}),
                           **{k: (int(v) if isinstance(v, bool) else v) for k, v in versions().items()}})
    _io._atomic_write_dataset(ds, out / "results.nc")
    return ds


def _theory(analysis: dict, curve: str, n, p):
    """The deterministic equivalent of what a curve plots: the loss, or for variance-limited curves its excess over
    the ridgeless ``N -> inf`` (or ``P -> inf``) limit."""
    varied, side, _ = CURVES[curve]
    lam, coefs = _model(analysis).spectrum()
    loss = _kr.rf_excess_risk(lam, coefs, n, p, analysis["ridge"], analysis["noise_var"])
    if side == "large":
        return loss
    if varied == "width":
        return loss - _kr.excess_risk(lam, coefs, p, 0.0, analysis["noise_var"])
    return loss - _kr.rf_excess_risk(lam, coefs, n, 1e15, 0.0, 0.0)


def _curve_values(ds: xr.Dataset, analysis: dict, curve: str):
    """``(x [K], y [S, K], theory [K], loss [S, K])`` of a curve: ``y`` is the loss (resolution-limited) or its
    excess over the limit (variance-limited), ``theory`` its deterministic equivalent."""
    varied, side, _ = CURVES[curve]
    n, p = curve_points(analysis, curve)
    sel = lambda name: np.stack([ds[name].sel(width=a, n_train=b).values for a, b in zip(n, p)], axis=1)
    y = loss = sel("test_loss")
    if side == "small":
        y = y - sel(_LIMIT[varied])
        if varied == "width":  # the control variate: zero mean, removes the O(1/sqrt(N)) draw-to-draw noise
            y = y - sel("width_fluctuation")
    x = n if varied == "width" else p
    return x.astype(float), y, _theory(analysis, curve, n, p), loss


def predicted_exponent(analysis: dict, curve: str) -> float:
    varied, _, regime = CURVES[curve]
    if regime == "variance-limited":
        return _kr.variance_limited_exponent()
    return float(_kr.resolution_limited_exponent(analysis["alpha"], analysis["beta"], varied))


def analyse(ds, spec, out):
    analysis = spec["analysis"]
    lam, coefs = _model(analysis).spectrum()
    checks, regimes, fits = [], {}, {}
    rng = np.random.default_rng(0)
    for curve, (varied, side, regime) in CURVES.items():
        x, y, theory, loss = _curve_values(ds, analysis, curve)
        fitted = _fit.power_law(x, y, n_boot=N_BOOT)
        fits[curve] = fitted
        predicted = predicted_exponent(analysis, curve)
        local = -np.polyfit(np.log(x), np.log(theory), 1)[0]
        checks.append(Check(f"exponent, {curve}", fitted.exponent, fitted.exponent_ci, predicted,
                            EXPONENT_TOLERANCE, _fit.agrees(fitted.exponent_ci, predicted, EXPONENT_TOLERANCE),
                            f"{regime}; asymptotic law, the deterministic equivalent's slope over these sizes is "
                            f"{local:.3f}: finite-size bias (module comment)"))
        laws = {"variance-limited": 1.0, "resolution-limited": float(_kr.resolution_limited_exponent(
            analysis["alpha"], analysis["beta"], varied))}
        found = _fit.regime(fitted.exponent, fitted.exponent_ci, laws, EXPONENT_TOLERANCE)
        note = ("; the CI does not tell the two laws apart" if found.ambiguous else
                "; the CI excludes both laws, nearest named" if not found.consistent else "")
        regimes[curve] = (f"{found.name or 'unresolved'} (exponent {fitted.exponent:.2f}, predicted "
                          f"{predicted:.2f} for {regime}{note})")
        if regime == "variance-limited":
            checks.append(_coefficient_check(analysis, curve, x, y, theory, rng))
        # Deterministic equivalent of the loss itself at each point, as a mean relative deviation over the curve.
        de = _kr.rf_excess_risk(lam, coefs, *curve_points(analysis, curve), analysis["ridge"],
                                analysis["noise_var"])
        deviation = lambda rows: float(np.mean(loss[rows].mean(axis=0) / de - 1))
        boot = [deviation(rng.integers(0, loss.shape[0], loss.shape[0])) for _ in range(N_BOOT)]
        ci = tuple(np.percentile(boot, [2.5, 97.5]))
        measured = deviation(np.arange(loss.shape[0]))
        tolerance = max(DE_TOLERANCE, 1.0 / np.min(np.minimum(*curve_points(analysis, curve))))
        checks.append(Check(f"deterministic equivalent, {curve}", measured, ci, 0.0, tolerance,
                            _fit.agrees(ci, 0.0, tolerance),
                            "mean relative deviation of the seed-mean loss from rf_excess_risk; O(1/min(N, P)) "
                            "bias of the equivalent at these sizes"))
    figure = _plot(ds, analysis, fits, out)
    report = ("N is the number of random features (the width), P the number of training samples; the excess test "
              "loss is the ridge readout's test risk above the noise floor. The deterministic equivalent is the "
              "closed-form large-N, P limit of that risk (dynsim.theory.kernel_regression.rf_excess_risk); the 1/n "
              "coefficient check compares the mean of n (L - L_inf) along a variance-limited curve with the "
              "equivalent's 1/N (or 1/P) prefactor (variance_limited_coefficient).\n\n"
              f"Power-law random features: M = {analysis['n_latent']} latent directions, lambda_j = j^-2alpha with "
              f"alpha = {analysis['alpha']}, target coefficients j^-beta with beta = {analysis['beta']}, ridge "
              f"{analysis['ridge']}, noise {analysis['noise_var']}, {analysis['seeds']} seeds. Fits are "
              f"least-squares power laws on the seed mean with {N_BOOT}-replicate seed-bootstrap 95% CIs; "
              "variance-limited curves are fitted to the loss minus its exact N -> inf (or P -> inf) limit for the "
              "same data (or features). Solid curves: the deterministic equivalent.")
    return {"checks": checks, "regimes": regimes, "figures": [figure], "report": report}


def _coefficient_check(analysis, curve, x, y, theory, rng) -> Check:
    """The prefactor ``C`` of ``L - L_inf = C / n``: measured as the curve's mean of ``n (L - L_inf)``."""
    varied, side, _ = CURVES[curve]
    lam, coefs = _model(analysis).spectrum()
    _, predicted = _kr.variance_limited_coefficient(lam, coefs, analysis[side], analysis["ridge"],
                                                    analysis["noise_var"],
                                                    vary="n_features" if varied == "width" else "n_train")
    scaled = y * x[None, :]  # [S, K]
    estimate = lambda rows: float(np.mean(scaled[rows].mean(axis=0)))
    boot = [estimate(rng.integers(0, len(scaled), len(scaled))) for _ in range(N_BOOT)]
    ci = tuple(np.percentile(boot, [2.5, 97.5]))
    # Next-order terms O(fixed / n): the deterministic equivalent's own n (E - E_inf) over these sizes strays from C
    # by up to the tolerance (at least 5% of C).
    own = theory * x
    tolerance = max(float(np.max(np.abs(own - predicted))), 0.05 * predicted)
    return Check(f"1/n coefficient, {curve}", estimate(np.arange(len(scaled))), ci, predicted, tolerance,
                 _fit.agrees(ci, predicted, tolerance),
                 f"variance_limited_coefficient; next-order O({analysis[side]} / n) terms: the equivalent's own "
                 f"n (E - E_inf) spans [{own.min():.3g}, {own.max():.3g}] over these sizes")


def _plot(ds, analysis, fits, out):
    fig, axes = plt.subplots(2, 2, figsize=(9, 7))
    for ax, (curve, (varied, side, regime)) in zip(axes.ravel(), CURVES.items()):
        x, y, theory, _ = _curve_values(ds, analysis, curve)
        mean, sem = np.nanmean(y, axis=0), np.nanstd(y, axis=0, ddof=1) / np.sqrt(y.shape[0])
        ax.errorbar(x, mean, yerr=sem, fmt="o", capsize=3, label="measured (seed mean)")
        grid = np.geomspace(x.min(), x.max(), 50)
        n, p = (grid, np.full_like(grid, analysis[side])) if varied == "width" else (
            np.full_like(grid, analysis[side]), grid)
        ax.plot(grid, _theory(analysis, curve, n, p), "-", color="k", lw=1.2, label="deterministic equivalent")
        f = fits[curve]
        ax.plot(grid, f.predict(grid), "--", color="C1", label=f"fit: exponent {f.exponent:.2f}")
        predicted = predicted_exponent(analysis, curve)
        ax.plot(grid, theory[0] * (grid / x[0]) ** -predicted, ":", color="C2", label=f"theory: {predicted:.2f}")
        fixed = "P" if varied == "width" else "N"
        ax.set(xscale="log", yscale="log", xlabel="width N" if varied == "width" else "n_train P",
               ylabel="excess test loss" if side == "large" else "loss - its limit",
               title=f"{regime}: {fixed} = {analysis[side]}")
        ax.xaxis.set_minor_formatter(plt.NullFormatter())
        ax.legend(fontsize=7)
    return save(fig, out / "width_scaling.png")


_KEYS = {"n_latent": int, "alpha": float, "beta": float, "noise_var": float, "ridge": float, "seeds": int,
         "large": int, "small": int, "resolution_sizes": list, "variance_sizes": list}


def validate(spec):
    analysis = spec.get("analysis", {})
    for key in spec:
        if key not in ("experiment", "analysis"):
            raise SpecError(f"spec key {key!r} is not used by width-scaling; its settings live in [analysis].")
    for key, value in analysis.items():
        if key not in _KEYS:
            raise SpecError(f"unknown spec key 'analysis.{key}'; width-scaling takes "
                            f"{', '.join('analysis.' + k for k in _KEYS)}.")
        kind = _KEYS[key]
        ok = (isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0
              and (kind is float or isinstance(value, int)))
        if kind is list:
            ok = (isinstance(value, list) and len(value) >= 3
                  and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value))
        if not ok or (kind is int and value < 1):
            what = {int: "a positive integer", float: "a non-negative number",
                    list: "a list of at least 3 positive integers"}[kind]
            raise SpecError(f"spec key 'analysis.{key}' must be {what}, got {value!r}.")
    if analysis["alpha"] <= 0.5 or 2 * analysis["alpha"] + 2 * analysis["beta"] <= 1:
        raise SpecError("spec keys 'analysis.alpha' and 'analysis.beta' need alpha > 1/2 and 2 alpha + 2 beta > 1 "
                        "for the scaling laws to hold.")
    if analysis["seeds"] < 2:
        raise SpecError("spec key 'analysis.seeds' must be at least 2 for a bootstrap over seeds.")
    if max(analysis["resolution_sizes"]) * 4 > analysis["large"]:
        raise SpecError("spec key 'analysis.large' must be at least 4x the largest of analysis.resolution_sizes.")
    if min(analysis["variance_sizes"]) < 4 * analysis["small"]:
        raise SpecError("spec key 'analysis.small' must be at most 1/4 of the smallest of analysis.variance_sizes.")
    if analysis["small"] >= analysis["n_latent"]:
        raise SpecError("spec key 'analysis.small' must be below analysis.n_latent for the limits to be computed.")


EXPERIMENT = register(Experiment("width-scaling", "the four scaling regimes (variance/resolution-limited in width "
                                 "and data) of random-feature regression, against their exponents and the "
                                 "deterministic equivalent", DEFAULTS, QUICK, analyse, validate, execute))
