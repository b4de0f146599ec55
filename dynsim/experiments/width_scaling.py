"""``width-scaling``: the four scaling regimes of Bahri et al. in the power-law random-feature model.

Random-feature ridge regression (:mod:`dynsim.ridge`, solved in closed form) is measured along four
curves, each over seeds:

============================  ============================  =========================================
curve                         held fixed                    regime and predicted exponent
============================  ============================  =========================================
test loss vs width ``N``      ``P = large >> N``            resolution-limited, ``min(2a + 2b - 1, 2a)``
test loss vs ``P``            ``N = large >> P``            resolution-limited, ``min(2a + 2b - 1, 4a)``
``L - L(N = inf)`` vs ``N``   ``P = small << N``            variance-limited, 1
``L - L(P = inf)`` vs ``P``   ``N = small << P``            variance-limited, 1
============================  ============================  =========================================

(``a = alpha``, ``b = beta``: :func:`dynsim.theory.kernel_regression.resolution_limited_exponent`.) Ridgeless
throughout (``analysis.ridge = 0``): the limits ``L(N = inf)`` (minimum-norm regression in the latent space) and
``L(P = inf)`` (least squares on the features) are ridgeless, and with a ridge the loss in ``P`` would approach
another limit.

Estimators. Each seed's draws are nested (the first ``N`` features and the first ``P`` samples of the largest), and
every point also has a *one-side-infinite* loss ``z`` of the same draws: ``L(P = inf)`` on the curves in width
(same projection), ``L(N = inf)`` on the curves in ``P`` (same samples). ``z`` is exact and cheap
(:func:`dynsim.ridge.limit_losses`: one factorisation, no eigendecomposition of the finite problem), so it
is drawn for ``limit_seeds`` seeds, many more than the ``seeds`` (``variance_seeds``) full solves. The mean of the
plotted quantity ``y`` at a point is the control-variate (double-sampling) estimate

.. math::

    \\hat m = \\overline{(y - b\\, z)}_{\\text{full seeds}} + b\\,\\overline{z}_{\\text{all seeds}},

unbiased for any fixed ``b``; ``b`` is chosen from an exact relation so that ``y - b z`` is nearly free of the
draw-to-draw noise of ``z``. Least squares on ``N`` Gaussian features with ``P`` samples has, given the
projection, ``E[L | W] = z + (z + sigma^2) N / (P - N - 1)`` (the part of the target outside the features is
Gaussian and independent of them, so it acts as noise): ``b = (P - 1) / (P - N - 1)`` on the curve in width at
``P >> N``, and ``b = N / (P - N - 1)`` for ``y = L - z`` on the curve in ``P`` at ``N >> P``. On the curve in ``P``
at ``N >> P``, ``b = 1`` (``L - z`` is the ``O(P / N)`` finite-width part). On the curve in width at ``N >> P``,
``y = L - z - width_fluctuation`` (the zero-mean first-order part of ``L - z`` in the fluctuation of ``W W^T``,
:func:`dynsim.ridge.member_losses`) and ``b = 0``. Confidence intervals: a stratified seed bootstrap
(full-solve seeds and limit-only seeds resampled separately), Student-t at the Welch-Satterthwaite degrees of
freedom of the two strata's variances, each inflated by ``n / (n - 1)`` as in :func:`dynsim.fit.power_law`.

Checks, each against a competing law (``Check``):

- exponent of each curve (least squares of ``log m`` on ``log n``): the asymptotic exponent; model error = the
  deterministic equivalent's (:func:`~dynsim.theory.kernel_regression.rf_excess_risk`) own slope over the same sizes
  minus the asymptotic one; competitor = the other regime's exponent.
- variance-limited curves, the ``1/n`` coefficient in units of the limit, ``c`` in ``L - L_inf = c L_inf / n``,
  measured as ``mean_k n_k m_k / mean(z)``: the equivalent's ``C / E_inf``
  (:func:`~dynsim.theory.kernel_regression.variance_limited_coefficient`; the fixed count ``N`` or ``P`` without
  label noise). In units of the limit, the equivalent's ``O(1 / small)`` error on the limit (see the notes below)
  cancels to first order (exactly on the curve in ``P``, by the least-squares relation above). Model error = the
  next-order terms at these sizes, estimated from the equivalent's own curve alone: its ``n (E - E_inf) / E_inf``
  fitted as ``c0 + c1 / n``, the mean of ``c1 / n`` over the points (not its distance from ``C / E_inf``, which
  would absorb a wrong ``C``); competitor = label noise alone (the part of the target the fixed side cannot
  represent not acting as noise), the equivalent's coefficient for a zero target.
- resolution-limited curves, the deterministic equivalent itself: its error is ``O(1/n)`` (``n = min(N, P)``), so
  the relative deviation ``m / E - 1`` is fitted as ``a + b / n`` and ``a`` (what is left as ``n -> inf``) is
  compared with 0. Model error = the shift of ``a`` by an ``O(1/n^2)`` remainder ``c / n^2`` left out of the fit,
  with ``|c| = b^2`` (the next term of a series in ``b / n``), at most ``n_min^2`` (a remainder no larger than the
  loss at the smallest ``n``); competitor = truncation alone, the top ``n`` latent directions learned exactly and
  the rest missed (``sum_{j > n} lambda_j beta_j^2``), the picture behind the exponent, which a random projection
  does not achieve: about a third of the equivalent here.
  On the variance-limited curves the loss is the limit (this same one-side-infinite loss at ``n = small``) plus the
  excess that the coefficient check tests, so they have no separate check of the equivalent.

Measurement notes (alpha = 1.25, beta = 0, M = 1024, ``P = 2048``, ``N = 16 .. 128``; 64 full solves and 256
limit draws per point). The simulated ``L(P = inf)`` exceeds the deterministic equivalent by 7.9%, 5.5%, 3.0% and
1.7% (+-2.2, 1.6, 1.0, 0.8%) at ``N = 16, 32, 64, 128``: the equivalent's ``O(1/N)`` error on the projection side
(about ``+1.3 / N``; fitted as ``a + b / n`` it extrapolates to ``a = 0`` within 2%), while on the sample side
``L(N = inf)`` is within 1.5% of it at ``P = 16 .. 128``. That error makes the simulated width exponent (1.487 +-
0.02) steeper than the equivalent's slope over the same sizes (1.458), nearer the asymptotic 1.5: it is the
equivalent that is off at small ``N`` (``L(P = inf)`` is an exact projection of the same draws), not the
simulation. With 8 full solves and no control variate the exponent spread by 0.055 between disjoint blocks of 8
seeds, its bootstrap interval from 8 heavy-tailed draws (relative spread 35% at ``N = 16``) varied fourfold in
width, and seeds 0..7 gave 1.396 +- 0.046, excluding both 1.458 and 1.5; the control variate brings the seed noise
of a point to 1-3%. At quick size all eight checks agreed for each of five disjoint seed sets (seeds 0, 1000, ...,
4000 onwards); the closest call was the exponent in ``P`` at ``N >> P``, 1.114 [1.054, 1.174] against 1 + 0.056,
whose true finite-size slope is about 1.06 (``N / (P - N - 1)`` over these ``P``).

The report also fits one joint law ``L = E + A / N^alpha + B / P^beta`` (:func:`dynsim.fit.law`) to every full
solve of the four curves, with a bootstrap over seeds, and lists the fitted surface beside the deterministic
equivalent at each cell (:func:`joint_law`). At quick size: alpha 1.49 [1.40, 1.54], beta 1.46 [1.35, 1.55], the
resolution-limited 1.5 on both axes, and the surface within 8% of the equivalent at every cell.
"""

from __future__ import annotations

import dataclasses
import json
import time

import numpy as np
import scipy.stats
import xarray as xr

from .. import fit as _fit
from .. import io as _io
from .. import ridge as _rf
from ..executor import versions
from ..plot import log_ticks, save, subplots
from ..progress import tracker
from ..spec import SpecError
from ..theory import kernel_regression as _kr
from ._contract import Check, Experiment, Requirements
from ._report import ci_errors, table

N_BOOT = 1000
LEVEL = 0.95
# Exponents closer than this cannot be told apart by these curves: the exponent's CI (+-0.1 to 0.15 at quick size)
# plus the model error on each side (0.04 to 0.06).
MIN_EXPONENT_GAP = 0.25

DEFAULTS = {
    "experiment": "width-scaling",
    "analysis": {"n_latent": 1024, "alpha": 1.25, "beta": 0.0, "noise_var": 0.0, "ridge": 0.0, "seeds": 16,
                 "variance_seeds": 64, "limit_seeds": 1024, "large": 4096, "small": 32,
                 "resolution_sizes": [16, 32, 64, 128, 256], "variance_sizes": [512, 1024, 2048, 4096]},
}
QUICK = {"analysis": {"seeds": 8, "variance_seeds": 24, "limit_seeds": 256, "large": 2048,
                      "resolution_sizes": [16, 32, 64, 128], "variance_sizes": [256, 512, 1024, 2048]}}

# name -> (varied axis, which side is large, regime)
CURVES = {
    "width, P >> N": ("width", "large", "resolution-limited"),
    "n_train, N >> P": ("n_train", "large", "resolution-limited"),
    "width, N >> P": ("width", "small", "variance-limited"),
    "n_train, P >> N": ("n_train", "small", "variance-limited"),
}
_LIMIT = {"width": "infinite_width_loss", "n_train": "infinite_data_loss"}  # the loss with that axis at infinity


def _model(analysis: dict) -> _rf.PowerLawRF:
    return _rf.PowerLawRF(n_latent=analysis["n_latent"], alpha=analysis["alpha"], beta=analysis["beta"],
                          noise_var=analysis["noise_var"])


def curve_points(analysis: dict, curve: str) -> tuple[np.ndarray, np.ndarray]:
    """``(widths, n_trains)`` of the points of ``curve`` (see the module table)."""
    varied, side, _ = CURVES[curve]
    sizes = np.asarray(analysis["resolution_sizes" if side == "large" else "variance_sizes"])
    fixed = np.full(sizes.shape, analysis[side])
    return (sizes, fixed) if varied == "width" else (fixed, sizes)


def curve_limit(curve: str) -> str:
    """The one-side-infinite loss of a curve's draws: its large side sent to infinity (resolution-limited) or its
    varied side (variance-limited)."""
    varied, side, _ = CURVES[curve]
    other = "n_train" if varied == "width" else "width"
    return _LIMIT[other if side == "large" else varied]


def curve_seeds(analysis: dict, curve: str) -> int:
    """The number of full solves per point of ``curve``."""
    return analysis["seeds" if CURVES[curve][1] == "large" else "variance_seeds"]


def execute(spec: dict, out, progress=None) -> xr.Dataset:
    """Solve the four curves' members and draw their one-side-infinite losses; store ``test_loss``, the limits and
    ``width_fluctuation`` over ``width x n_train x seed``.

    ``seed`` runs over ``limit_seeds``: a curve's full solves fill its first ``seeds`` (``variance_seeds``), its
    limit every seed. Cells of the grid that belong to no curve are NaN. One compiled program per curve.
    """
    analysis = spec["analysis"]
    model = _model(analysis)
    seeds = np.arange(analysis["limit_seeds"])
    widths = sorted({int(n) for c in CURVES for n in curve_points(analysis, c)[0]})
    n_trains = sorted({int(p) for c in CURVES for p in curve_points(analysis, c)[1]})
    data = {name: np.full((len(widths), len(n_trains), len(seeds)), np.nan) for name in _rf.NAMES}
    t0 = time.perf_counter()

    def fill(name, n, p, values):  # curves can share a cell (same members): keep what either computed
        i, j = widths.index(int(n)), n_trains.index(int(p))
        data[name][i, j, :len(values)] = np.where(np.isnan(values), data[name][i, j, :len(values)], values)

    points = {curve: curve_points(analysis, curve) for curve in CURVES}
    size = lambda curve: points[curve][0 if curve_limit(curve) == "infinite_data_loss" else 1]
    needed = {limit: sorted({int(v) for c in CURVES if curve_limit(c) == limit for v in size(c)})
              for limit in sorted(set(_LIMIT.values()))}
    bar = tracker(len(needed) + len(CURVES), progress, "width-scaling limits and curves", unit="step")
    drawn = {}
    for limit, sizes in needed.items():  # one program per kind of limit, all its sizes from one draw per seed
        drawn[limit] = dict(zip(sizes, _rf.limit_losses(model, sizes, seeds, limit)))
        bar.update()
    for curve, (_, side, _) in CURVES.items():
        n, p = points[curve]
        limit = curve_limit(curve)
        losses = _rf.member_losses(model, n, p, seeds[:curve_seeds(analysis, curve)], [analysis["ridge"]],
                                   limits=(limit,) if side == "small" else ())
        for k in range(len(n)):
            for name in _rf.NAMES:
                fill(name, n[k], p[k], losses[name][k, :, 0])
            fill(limit, n[k], p[k], drawn[limit][int(size(curve)[k])])
        bar.update()
    bar.close()
    dims = ("width", "n_train", "seed")
    ds = xr.Dataset({name: (dims, v, {"description": _rf.DESCRIPTIONS[name]}) for name, v in data.items()},
                    coords={"width": widths, "n_train": n_trains, "seed": seeds},
                    attrs={"spec": json.dumps(spec), "timing": json.dumps({"run_s": time.perf_counter() - t0}),
                           **{k: (int(v) if isinstance(v, bool) else v) for k, v in versions().items()}})
    _io.write_results(ds, out / "results.nc")
    return ds


@dataclasses.dataclass(frozen=True)
class Samples:
    """A curve's draws for the control-variate estimate of its means (module docstring).

    Attributes:
      x: the varied size at each point, ``[K]``.
      y: the plotted quantity per full-solve seed, ``[S, K]``.
      z: the one-side-infinite loss per seed, ``[S', K]``; rows ``< S`` are the full-solve seeds' own.
      b: the control-variate coefficient per point, ``[K]``.
    """

    x: np.ndarray
    y: np.ndarray
    z: np.ndarray
    b: np.ndarray

    def means(self, full=None, extra=None) -> tuple[np.ndarray, np.ndarray]:
        """``(m, zbar)``, each ``[B, K]``: the estimate of the mean of ``y`` and the mean of ``z`` over all seeds,
        for full-solve seed indices ``full [B, S]`` and limit-only ones ``extra [B, S' - S]`` (default: each seed
        once, ``B = 1``)."""
        s, s_all = self.y.shape[0], self.z.shape[0]
        full = np.arange(s)[None] if full is None else full
        extra = np.arange(s, s_all)[None] if extra is None else extra
        rows = max(len(full), len(extra))
        full, extra = np.broadcast_to(full, (rows, s)), np.broadcast_to(extra, (rows, s_all - s))
        z_full = self.z[full]
        zbar = (z_full.sum(1) + self.z[extra].sum(1)) / s_all
        return (self.y[full] - self.b * z_full).mean(1) + self.b * zbar, zbar


def curve_samples(ds: xr.Dataset, analysis: dict, curve: str) -> Samples:
    """The :class:`Samples` of ``curve``: ``y`` is the loss (resolution-limited) or its excess over the limit
    (variance-limited), ``z`` the curve's one-side-infinite loss (:func:`curve_limit`)."""
    varied, side, _ = CURVES[curve]
    n, p = curve_points(analysis, curve)
    s = curve_seeds(analysis, curve)
    cell = lambda name: np.stack([ds[name].sel(width=a, n_train=c).values for a, c in zip(n, p)], axis=1)
    z = cell(curve_limit(curve))
    loss = cell("test_loss")[:s]
    if side == "large":  # in width: E[L | W] = z + (z + sigma^2) N / (P - N - 1), least squares on Gaussian features
        y, b = loss, ((p - 1) / (p - n - 1) if varied == "width" else np.ones(len(n)))
    elif varied == "width":  # the first-order fluctuation is the control variate; z is the same for every point
        y, b = loss - z[:s] - cell("width_fluctuation")[:s], np.zeros(len(n))
    else:  # E[L - z | W] = (z + sigma^2) N / (P - N - 1)
        y, b = loss - z[:s], n / (p - n - 1)
    return Samples((n if varied == "width" else p).astype(float), y, z, np.asarray(b, dtype=float))


def estimate(samples: Samples, statistic, rng) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``statistic(m, zbar)`` (rows of replicates in, ``[B]`` or ``[B, q]`` out) at the estimated means, and its
    confidence interval at ``LEVEL``: ``(point, lo, hi)``.

    The full-solve seeds and the limit-only seeds are resampled separately (``N_BOOT`` replicates each, the other
    stratum held at its sample); each stratum's bootstrap variance, inflated by ``n / (n - 1)``, has ``n - 1``
    degrees of freedom, and the interval is Student-t at the Welch-Satterthwaite degrees of freedom of their sum.
    Replicates where the statistic is NaN (a non-positive mean in a log) are left out.
    """
    point = np.asarray(statistic(*samples.means()), dtype=float)[0]
    s, extra = samples.y.shape[0], samples.z.shape[0] - samples.y.shape[0]
    strata = [(s, samples.means(full=rng.integers(0, s, (N_BOOT, s))))]
    if extra >= 2:
        strata.append((extra, samples.means(extra=s + rng.integers(0, extra, (N_BOOT, extra)))))
    variances, dfs = [], []
    with np.errstate(divide="ignore", invalid="ignore"):
        for n, (m, zbar) in strata:
            values = np.asarray(statistic(m, zbar), dtype=float)
            ok = np.isfinite(values)
            count = ok.sum(axis=0)
            centred = np.where(ok, values - np.where(ok, values, 0).sum(axis=0) / count, 0.0)
            variances.append(np.where(count >= 2, (centred**2).sum(axis=0) / (count - 1), np.nan) * n / (n - 1))
            dfs.append(n - 1)
        total = sum(variances)
        df = total**2 / sum(np.where(v > 0, v**2 / d, 0.0) for v, d in zip(variances, dfs))
        half = scipy.stats.t.ppf(0.5 + LEVEL / 2, df) * np.sqrt(total)
    return point, point - half, point + half


def _exponent(x, m):
    """Minus the least-squares slope of ``log m`` on ``log x``, per row of ``m`` (NaN where a mean is <= 0)."""
    lx = np.log(x) - np.log(x).mean()
    with np.errstate(invalid="ignore", divide="ignore"):
        ly = np.log(np.where(m > 0, m, np.nan))
    return -(ly * lx).sum(-1) / (lx**2).sum()


def _log_prefactor(x, m):
    """The least-squares intercept of ``log m`` on ``log x``."""
    return np.log(m).mean(-1) + _exponent(x, m) * np.log(x).mean()


def _inverse_fit(x, d):
    """``(a, b)`` of the least-squares fit ``d = a + b / x``, per row of ``d``."""
    u = 1.0 / np.asarray(x, dtype=float)
    uc = u - u.mean()
    slope = (d * uc).sum(-1) / (uc**2).sum()
    return d.mean(-1) - slope * u.mean(), slope


def _equivalent(analysis: dict, n, p):
    lam, coefs = _model(analysis).spectrum()
    return _kr.rf_excess_risk(lam, coefs, n, p, analysis["ridge"], analysis["noise_var"])


def _theory(analysis: dict, curve: str, n, p):
    """The deterministic equivalent of what a curve plots: the loss, or for variance-limited curves its excess over
    the ridgeless ``N -> inf`` (or ``P -> inf``) limit."""
    varied, side, _ = CURVES[curve]
    lam, coefs = _model(analysis).spectrum()
    loss = _equivalent(analysis, n, p)
    if side == "large":
        return loss
    if varied == "width":
        return loss - _kr.excess_risk(lam, coefs, p, 0.0, analysis["noise_var"])
    return loss - _kr.rf_excess_risk(lam, coefs, n, 1e15, 0.0, 0.0)


def truncation_loss(analysis: dict, n) -> np.ndarray:
    """The competitor of the equivalent on the resolution-limited curves: the top ``n`` latent directions learned
    exactly, the rest missed, ``sum_{j > n} lambda_j beta*_j^2``."""
    lam, coefs = _model(analysis).spectrum()
    tail = np.concatenate([np.cumsum((lam * coefs**2)[::-1])[::-1], [0.0]])
    return tail[np.minimum(np.asarray(n, dtype=int), lam.size)]


def predicted_exponent(analysis: dict, curve: str) -> float:
    varied, _, regime = CURVES[curve]
    return _exponents(analysis, varied)[regime]


def _exponents(analysis: dict, varied: str) -> dict:
    """The two regimes' exponents for a curve in ``varied``."""
    return {"variance-limited": _kr.variance_limited_exponent(),
            "resolution-limited": float(_kr.resolution_limited_exponent(analysis["alpha"], analysis["beta"], varied))}


def analyse(ds, spec, out):
    analysis = spec["analysis"]
    rng = np.random.default_rng(0)
    checks, regimes, fits, rows = [], {}, {}, []
    for curve, (varied, side, regime) in CURVES.items():
        samples = curve_samples(ds, analysis, curve)
        x = samples.x
        n, p = curve_points(analysis, curve)
        theory = _theory(analysis, curve, n, p)
        laws = _exponents(analysis, varied)
        other = next(k for k in laws if k != regime)
        predicted = laws[regime]
        measured, lo, hi = estimate(samples, lambda m, z, x=x: _exponent(x, m), rng)
        own = float(_exponent(x, theory))
        tolerance = abs(own - predicted)
        check = Check(name=f"exponent, {curve}", measured=float(measured), ci=(float(lo), float(hi)),
                      predicted=predicted, competitor=other, competing=laws[other],
                      tolerance=tolerance,
                      reason=f"{regime}; model error: the deterministic equivalent's own slope over these sizes is "
                             f"{own:.3f} against the asymptotic {predicted:g}; CI: stratified seed bootstrap of the "
                             "control-variate means")
        checks.append(check)
        regimes[curve] = _regime_text(check, regime, other, laws)
        fits[curve] = (float(measured), float(_log_prefactor(x, samples.means()[0][0])))
        point, plo, phi = estimate(samples, lambda m, z: m, rng)
        rows.append([curve, f"{check.measured:.3f} [{lo:.3f}, {hi:.3f}]", f"{own:.3f}", f"{predicted:g}",
                     f"{float(np.max(np.abs(phi - point) / point)):.1%}"])
        if side == "small":
            checks.append(_coefficient_check(analysis, curve, samples, theory, rng))
        else:
            checks.append(_equivalent_check(analysis, curve, samples, rng))
    figure = _plot(ds, analysis, fits, out, rng)
    report = ("N is the number of random features (the width), P the number of training samples; the excess test "
              "loss is the ridgeless readout's test risk above the noise floor. The deterministic equivalent is the "
              "closed-form large-N, P limit of that risk (dynsim.theory.kernel_regression.rf_excess_risk).\n\n"
              f"Power-law random features: M = {analysis['n_latent']} latent directions, lambda_j = j^-2alpha with "
              f"alpha = {analysis['alpha']}, target coefficients j^-beta with beta = {analysis['beta']}, noise "
              f"{analysis['noise_var']}; {analysis['seeds']} full solves per point on the resolution-limited curves, "
              f"{analysis['variance_seeds']} on the variance-limited ones, and {analysis['limit_seeds']} draws of "
              "each point's one-side-infinite loss (the same projection with P -> inf, or the same samples with "
              "N -> inf), which enter as a control variate (module docstring of "
              "dynsim.experiments.width_scaling). Means and fits carry 95% stratified seed-bootstrap CIs. Solid "
              "curves: the deterministic equivalent; dotted: the asymptotic law through the first point; grey "
              "dash-dotted (resolution-limited panels): truncation alone, the equivalent's competitor.\n\n"
              + table(["curve", "fitted exponent [95% CI]", "equivalent's slope, same sizes", "asymptotic",
                       "largest relative CI half-width of a mean"], rows)
              + _joint_report(*joint_law(ds, analysis), analysis))
    return {"checks": checks, "regimes": regimes, "figures": [figure], "report": report}


# Starts of the joint fit: the default grid's floor E (0.4 to 2.7) and amplitudes suit language-model losses of a
# few nats, not excess losses of 1e-3 to 0.1.
JOINT_STARTS = {"E": [1e-4, 1e-3, 1e-2], "A": [0.1, 1.0, 10.0], "B": [0.1, 1.0, 10.0]}
JOINT_BOOT = 100


def joint_law(ds, analysis: dict):
    """The joint law ``L = E + A / N^alpha + B / P^beta`` (``dynsim.fit.law``'s chinchilla form, ``D = P``) fitted to
    every full solve of the four curves at once, with intervals from a bootstrap over seeds (a seed's draws are
    nested across sizes, so its points are one run). Returns ``(fit, rows)``, a row per cell: ``N, P``, the mean
    measured loss, the fitted law and the deterministic equivalent there."""
    loss = ds["test_loss"].transpose("width", "n_train", "seed").values
    n, p, seed = np.meshgrid(ds["width"].values, ds["n_train"].values, ds["seed"].values, indexing="ij")
    ok = np.isfinite(loss)
    data = {"N": n[ok].astype(float), "D": p[ok].astype(float), "loss": loss[ok], "seed": seed[ok]}
    law = _fit.law("chinchilla", data, runs="seed", bootstrap=JOINT_BOOT, starts=JOINT_STARTS)
    cells = np.argwhere(ok.any(axis=-1))
    rows = []
    for i, j in cells:
        n_i, p_j = float(ds["width"].values[i]), float(ds["n_train"].values[j])
        rows.append((n_i, p_j, float(np.nanmean(loss[i, j])), float(law.predict(N=n_i, D=p_j)),
                     float(_equivalent(analysis, np.array([n_i]), np.array([p_j]))[0])))
    return law, rows


def _joint_report(law, rows, analysis) -> str:
    p = law.params
    text = lambda k: f"{p[k]:.3g} [{law.ci[k][0]:.3g}, {law.ci[k][1]:.3g}]"
    res = {v: _kr.resolution_limited_exponent(analysis["alpha"], analysis["beta"], v) for v in ("width", "n_train")}
    table_rows = [[f"{n:g}", f"{q:g}", f"{m:.4g}", f"{f:.4g}", f"{e:.4g}", f"{f / e - 1:+.1%}"]
                  for n, q, m, f, e in sorted(rows)]
    return ("\n\n### Joint law in (N, P)\n\nOne law for the loss over all four curves' full solves, "
            "L = E + A / N^alpha + B / P^beta (dynsim.fit.law, chinchilla form with D = P: Huber loss on log "
            f"residuals, L-BFGS from a grid of starts; 95% intervals from a bootstrap over seeds, {law.n_boot} "
            f"refits): alpha = {text('alpha')}, beta = {text('beta')}, A = {text('A')}, B = {text('B')}, E = "
            f"{p['E']:.2g} (the loss is the excess over the noise floor, so its floor is 0); resolution-limited "
            f"exponents {res['width']:g} in N and {res['n_train']:g} in P. An additive law has one exponent per "
            "axis: it finds the resolution-limited exponents, and describes the variance-limited cells' approach to "
            "their limit with those too rather than with 1/n; the last column shows how far the surface lies from "
            "the deterministic equivalent at each measured cell:\n\n"
            + table(["N", "P", "measured mean", "joint law", "deterministic equivalent", "law / equivalent - 1"],
                    table_rows))


def _regime_text(check: Check, regime: str, other: str, laws: dict) -> str:
    """The regime a curve's exponent check found, in words that follow its verdict."""
    lo, hi = check.ci
    measured = f"exponent {check.measured:.2f} [{lo:.2f}, {hi:.2f}]"
    if check.verdict == "agrees":
        return f"{regime} ({measured}; predicted {check.predicted:.2f}, {other} {check.competing:.2f})"
    if check.verdict == "inconclusive":
        return (f"undecided between {regime} ({check.predicted:.2f}) and {other} ({check.competing:.2f}): "
                f"{measured}")
    found = _fit.regime(check.measured, check.ci, laws, check.tolerance)
    return (f"{found.name or 'none of ' + ', '.join(laws)}, not {regime} as predicted ({measured}; predicted "
            f"{check.predicted:.2f})")


def _coefficient_check(analysis, curve, samples: Samples, theory, rng) -> Check:
    """``c`` of ``L - L_inf = c L_inf / n``: measured as ``mean_k n_k m_k / mean(z)``, against the equivalent's
    ``C / E_inf``."""
    varied, side, _ = CURVES[curve]
    lam, coefs = _model(analysis).spectrum()
    vary = "n_features" if varied == "width" else "n_train"
    limit, coefficient = _kr.variance_limited_coefficient(lam, coefs, analysis[side], analysis["ridge"],
                                                          analysis["noise_var"], vary=vary)
    _, noise_only = _kr.variance_limited_coefficient(lam, np.zeros_like(coefs), analysis[side], analysis["ridge"],
                                                     analysis["noise_var"], vary=vary)
    x = samples.x
    statistic = lambda m, z: np.mean(x * m, axis=-1) / np.mean(z, axis=-1)
    measured, lo, hi = estimate(samples, statistic, rng)
    # The next-order terms at these sizes from the equivalent's own curve alone (not from C, so that a wrong C is
    # not absorbed): its n (E - E_inf) / E_inf fitted as c0 + c1 / n, and the mean of c1 / n over the points.
    own = x * theory / limit
    _, c1 = _inverse_fit(x, own)
    tolerance = abs(float(np.mean(c1 / x)))
    return Check(name=f"1/n coefficient over the limit, {curve}", measured=float(measured), ci=(float(lo), float(hi)),
                 predicted=coefficient / limit,
                 competitor="label noise alone (the unexplained target not acting as noise)",
                 competing=noise_only / limit, tolerance=tolerance,
                 reason=f"c in L - L_inf = c L_inf / n, measured as mean n (L - L_inf) / mean L_inf; model error: "
                        f"the next-order terms over these sizes, the mean of c1 / n in the equivalent's own "
                        f"n (E - E_inf) / E_inf = c0 + c1 / n ({own.min():.3g} to {own.max():.3g} here); CI: "
                        "stratified seed bootstrap")


def _equivalent_check(analysis, curve, samples: Samples, rng) -> Check:
    """The relative deviation of the measured loss from the deterministic equivalent, fitted as ``a + b / n``; ``a``
    against 0."""
    n, p = curve_points(analysis, curve)
    x = samples.x
    de = _equivalent(analysis, n, p)
    statistic = lambda m, z: _inverse_fit(x, m / de - 1)[0]
    measured, lo, hi = estimate(samples, statistic, rng)
    _, slope = _inverse_fit(x, samples.means()[0][0] / de - 1)
    # An O(1/n^2) remainder c / n^2 shifts the fitted a by c times the a of 1 / n^2 fitted alike; |c| is taken as
    # b^2 (the next term of a series in b / n), at most n_min^2 (a remainder no larger than the loss at the smallest n).
    shift = abs(float(_inverse_fit(x, 1.0 / x**2)[0]))
    remainder = min(slope**2, x.min() ** 2)
    competing = float(_inverse_fit(x, truncation_loss(analysis, np.minimum(n, p)) / de - 1)[0])
    return Check(name=f"deterministic equivalent as n -> inf, {curve}", measured=float(measured),
                 ci=(float(lo), float(hi)), predicted=0.0,
                 competitor="truncation alone (top n latent directions learned exactly)", competing=competing,
                 tolerance=remainder * shift,
                 reason=f"relative deviation of the mean loss from rf_excess_risk fitted as a + b / n, a compared; "
                        f"the equivalent's finite-size error b / n has b = {slope:.2f} here; model error: an "
                        f"O(1/n^2) remainder c / n^2 with |c| = min(b^2, n_min^2) shifts a by |c| x {shift:.2g}; CI: "
                        "stratified seed bootstrap")


def _plot(ds, analysis, fits, out, rng):
    fig, axes = subplots(2, 2, figsize=(9, 7))
    for ax, (curve, (varied, side, regime)) in zip(axes.ravel(), CURVES.items()):
        samples = curve_samples(ds, analysis, curve)
        x = samples.x
        mean, lo, hi = estimate(samples, lambda m, z: m, rng)
        ax.errorbar(x, mean, yerr=ci_errors(mean, lo, hi), fmt="o", capsize=3, label="measured (95% CI)")
        grid = np.geomspace(x.min(), x.max(), 50)
        n, p = (grid, np.full_like(grid, analysis[side])) if varied == "width" else (
            np.full_like(grid, analysis[side]), grid)
        theory = _theory(analysis, curve, n, p)
        ax.plot(grid, theory, "-", color="k", lw=1.2, label="deterministic equivalent")
        exponent, log_c = fits[curve]
        ax.plot(grid, np.exp(log_c) * grid**-exponent, "--", color="C1", label=f"fit: exponent {exponent:.2f}")
        predicted = predicted_exponent(analysis, curve)
        ax.plot(grid, theory[0] * (grid / x[0]) ** -predicted, ":", color="C2", label=f"asymptotic: {predicted:.2f}")
        if side == "large":
            ax.plot(grid, truncation_loss(analysis, np.floor(np.minimum(n, p))), "-.", color="0.6",
                    label="truncation alone")
        fixed = "P" if varied == "width" else "N"
        ax.set(yscale="log", xlabel="width N" if varied == "width" else "n_train P",
               ylabel="excess test loss" if side == "large" else "loss - its limit",
               title=f"{regime}: {fixed} = {analysis[side]}")
        log_ticks(ax, x)
        ax.legend(fontsize=7)
    return save(fig, out / "width_scaling.png")


_int = lambda lo: (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= lo)
_number = lambda ok: (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and ok(v))
_sizes = lambda v: (isinstance(v, list) and len(v) >= 3 and all(_int(1)(s) for s in v)
                    and all(a < b for a, b in zip(v, v[1:])))
REQUIRES = Requirements(analysis={
    "n_latent": (_int(1), "a positive integer"),
    "alpha": (_number(lambda v: v > 0.5), "a number above 1/2 (a summable spectrum, as the scaling laws need)"),
    "beta": (_number(lambda v: v >= 0), "a non-negative number"),
    "noise_var": (_number(lambda v: v >= 0), "a non-negative number"),
    "ridge": (_number(lambda v: v == 0), "0 (the limits the variance-limited curves approach are ridgeless)"),
    "seeds": (_int(2), "an integer of at least 2 (the CIs are a bootstrap over seeds)"),
    "variance_seeds": (_int(2), "an integer of at least 2 (the CIs are a bootstrap over seeds)"),
    "limit_seeds": (_int(2), "an integer of at least 2 (the CIs are a bootstrap over seeds)"),
    "large": (_int(1), "a positive integer"),
    "small": (_int(1), "a positive integer"),
    "resolution_sizes": (_sizes, "a list of at least 3 increasing positive integers (an exponent and the "
                                 "equivalent's a + b / n are fits with a degree of freedom left)"),
    "variance_sizes": (_sizes, "a list of at least 3 increasing positive integers (an exponent is a fit with a "
                               "degree of freedom left)"),
})


def validate(spec):
    """What the analysis needs of several ``[analysis]`` keys together (single keys: :data:`REQUIRES`)."""
    analysis = spec.get("analysis", {})
    for key in spec:
        if key not in ("experiment", "analysis"):
            raise SpecError(f"spec key {key!r} is not used by width-scaling; its settings live in [analysis].")
    for varied in ("width", "n_train"):
        laws = _exponents(analysis, varied)
        if abs(laws["resolution-limited"] - laws["variance-limited"]) < MIN_EXPONENT_GAP:
            raise SpecError(f"spec keys 'analysis.alpha' and 'analysis.beta' give a resolution-limited exponent in "
                            f"{varied} of {laws['resolution-limited']:.3g}, within {MIN_EXPONENT_GAP} of the "
                            "variance-limited 1, so the curves cannot tell the regimes apart.")
    if max(analysis["seeds"], analysis["variance_seeds"]) > analysis["limit_seeds"]:
        raise SpecError("spec key 'analysis.limit_seeds' must be at least analysis.seeds and analysis.variance_seeds "
                        "(the full solves' seeds are among the limits' seeds).")
    if max(analysis["resolution_sizes"]) * 4 > analysis["large"]:
        raise SpecError("spec key 'analysis.large' must be at least 4x the largest of analysis.resolution_sizes.")
    if min(analysis["variance_sizes"]) < 4 * analysis["small"]:
        raise SpecError("spec key 'analysis.small' must be at most 1/4 of the smallest of analysis.variance_sizes.")
    if max(analysis["resolution_sizes"] + [analysis["small"]]) >= analysis["n_latent"]:
        raise SpecError("spec key 'analysis.n_latent' must exceed analysis.small and analysis.resolution_sizes (the "
                        "N -> inf limit of P samples is computed for P below the latent dimension).")


EXPERIMENT = Experiment("width-scaling", "the four scaling regimes (variance/resolution-limited in width "
                                 "and data) of random-feature regression, against their exponents and the "
                                 "deterministic equivalent", DEFAULTS, QUICK, analyse, validate, execute,
                                 requires=REQUIRES)
