"""Power-law and line fits with bootstrap confidence intervals.

Pure numpy + scipy. Two estimators are provided:

* :func:`power_law` fits ``y = c * x**(-alpha)`` (optionally ``+ y_inf``) to measurements at abscissae ``x``, with
  replicates (seeds) along axis 0 of ``y``. Confidence intervals come from a seed bootstrap when replicates exist
  and from a residual bootstrap in log space otherwise.
* :func:`slope` fits an ordinary least-squares line to ``(x, y)`` where the rows of ``y`` are already bootstrap
  replicates (e.g. ``log lr*`` vs ``log width``), so the CI is simply the spread of the per-row slopes.

:func:`agrees` compares a measured interval with a theoretical prediction.

Sign convention: decaying laws have a *positive* exponent, ``y ~ x**(-alpha)``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import numpy as np
import scipy.optimize

__all__ = ["lr_optimum", "PowerLawFit", "LineFit", "Regime", "power_law", "slope", "mean_ci", "agrees", "regime"]

# Offsets are searched as a fraction ``u = y_inf / min(y)`` of the smallest mean value, ``u in [0, _U_MAX]``:
# ``u = 1`` would make ``log(y - y_inf)`` diverge at the smallest point.
_U_MAX = 1.0 - 1e-9
# Coarse grid over the remaining gap ``1 - u`` (log-spaced, since the interesting offsets crowd towards min(y)),
# merged with a linear grid in ``u``, used to bracket the global minimum before the bounded Brent refinement.
_GAP_GRID = np.logspace(np.log10(1.0 - _U_MAX), 0.0, 37)
# Bootstrap replicates are processed in chunks so that ``chunk * S * K`` stays around this many elements.
_CHUNK_ELEMENTS = 1 << 20

_NAN_CI = (float("nan"), float("nan"))


# ----------------------------------------------------------------------------------------------------------------------
# Result types
# ----------------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PowerLawFit:
    """Result of :func:`power_law`: ``y = prefactor * x**(-exponent) + offset``.

    Attributes:
      exponent: ``alpha``; positive for a decaying law.
      prefactor: ``c``.
      offset: ``y_inf``; exactly ``0.0`` for the no-offset fit.
      exponent_ci: bootstrap percentile interval for ``alpha``; ``(nan, nan)`` without bootstrap.
      prefactor_ci: bootstrap percentile interval for ``c``.
      offset_ci: bootstrap percentile interval for ``y_inf`` (``(0.0, 0.0)`` for the no-offset fit with bootstrap).
      n_boot: number of bootstrap refits that succeeded and enter the intervals (0 without bootstrap).
      level: confidence level of the intervals, e.g. ``0.95``.
    """

    exponent: float
    prefactor: float
    offset: float
    exponent_ci: tuple[float, float]
    prefactor_ci: tuple[float, float]
    offset_ci: tuple[float, float]
    n_boot: int
    level: float

    def predict(self, x: Any) -> np.ndarray:
        """Evaluate ``prefactor * x**(-exponent) + offset`` at ``x`` (any array-like of positive numbers)."""
        x = np.asarray(x, dtype=np.float64)
        return self.prefactor * x ** (-self.exponent) + self.offset

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python (JSON-serialisable) view: floats, ints and 2-element lists. NaN stays ``float('nan')``."""
        return {
            "exponent": float(self.exponent),
            "prefactor": float(self.prefactor),
            "offset": float(self.offset),
            "exponent_ci": [float(v) for v in self.exponent_ci],
            "prefactor_ci": [float(v) for v in self.prefactor_ci],
            "offset_ci": [float(v) for v in self.offset_ci],
            "n_boot": int(self.n_boot),
            "level": float(self.level),
        }


@dataclasses.dataclass(frozen=True)
class LineFit:
    """Result of :func:`slope`: ``y = slope * x + intercept``.

    Attributes:
      slope: OLS slope of the point estimate.
      intercept: OLS intercept of the point estimate.
      slope_ci: percentile interval of the slope; ``(nan, nan)`` without replicates / bootstrap.
      intercept_ci: percentile interval of the intercept.
      n_boot: number of replicate (or bootstrap) fits that entered the intervals.
      level: confidence level of the intervals.
    """

    slope: float
    intercept: float
    slope_ci: tuple[float, float]
    intercept_ci: tuple[float, float]
    n_boot: int
    level: float

    def predict(self, x: Any) -> np.ndarray:
        """Evaluate ``slope * x + intercept`` at ``x``."""
        return self.slope * np.asarray(x, dtype=np.float64) + self.intercept

    def to_dict(self) -> dict[str, Any]:
        """Plain-Python (JSON-serialisable) view: floats, ints and 2-element lists. NaN stays ``float('nan')``."""
        return {
            "slope": float(self.slope),
            "intercept": float(self.intercept),
            "slope_ci": [float(v) for v in self.slope_ci],
            "intercept_ci": [float(v) for v in self.intercept_ci],
            "n_boot": int(self.n_boot),
            "level": float(self.level),
        }


# ----------------------------------------------------------------------------------------------------------------------
# Internals
# ----------------------------------------------------------------------------------------------------------------------


class _FitError(ValueError):
    """A fit is impossible (too few usable points); skipped inside bootstraps, re-raised for the point estimate."""


def _ols(x: np.ndarray, y: np.ndarray, mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row-wise OLS of ``y[..., K]`` on ``x[K]`` using only entries where ``mask`` is true.

    Returns ``(slope, intercept, ok)`` with the batch shape of ``y``; ``ok`` is false for rows with fewer than two
    usable points or no spread in ``x`` (their slope / intercept are NaN).
    """
    if mask is None:
        mask = np.isfinite(y)
    w = mask.astype(np.float64)
    y0 = np.where(mask, y, 0.0)
    n = w.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mx = (w * x).sum(axis=-1) / n
        my = (w * y0).sum(axis=-1) / n
        dx = np.where(mask, x - mx[..., None], 0.0)
        sxx = (dx * dx).sum(axis=-1)
        sxy = (dx * (y0 - my[..., None])).sum(axis=-1)
        # Relative guard on the spread of x: identical abscissae give sxx == 0 up to rounding.
        ok = (n >= 2) & (sxx > 1e-300) & (sxx > 1e-24 * (w * x * x).sum(axis=-1))
        b = np.where(ok, sxy / np.where(ok, sxx, 1.0), np.nan)
        a = np.where(ok, my - b * mx, np.nan)
    return b, a, ok


def _nanmean0(y: np.ndarray, axis: int) -> np.ndarray:
    """Mean over ``axis`` ignoring non-finite entries; NaN where no entry is finite (no warnings)."""
    finite = np.isfinite(y)
    total = np.where(finite, y, 0.0).sum(axis=axis)
    count = finite.sum(axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _percentile_ci(samples: np.ndarray, level: float) -> tuple[float, float]:
    """Equal-tailed percentile interval of ``samples`` at ``level``; ``(nan, nan)`` for an empty sample."""
    if samples.size == 0:
        return _NAN_CI
    lo, hi = np.percentile(samples, [50.0 * (1.0 - level), 50.0 * (1.0 + level)])
    return float(lo), float(hi)


def _check_x(x: Any, *, positive: bool) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"x must be 1-D, got shape {x.shape}.")
    if not np.all(np.isfinite(x)):
        raise ValueError("x must contain only finite values.")
    if positive and not np.all(x > 0):
        raise ValueError("x must contain only positive values for a power-law fit.")
    return x


def _check_y(y: Any, k: int, axis_seed: int | None = None) -> np.ndarray:
    """``y`` as a float array of shape ``(K,)`` or ``(S, K)`` (seed axis moved to the front)."""
    y = np.asarray(y, dtype=np.float64)
    if y.ndim not in (1, 2):
        raise ValueError(f"y must be 1-D (K,) or 2-D (S, K), got shape {y.shape}.")
    if y.ndim == 2 and axis_seed is not None:
        if axis_seed not in (0, 1, -1, -2):
            raise ValueError(f"axis_seed must be 0 or 1 for 2-D y, got {axis_seed}.")
        y = np.moveaxis(y, axis_seed, 0)
    if y.shape[-1] != k:
        raise ValueError(f"y has {y.shape[-1]} points along its last axis but x has {k}.")
    return y


def _check_boot_args(n_boot: int, level: float) -> None:
    if int(n_boot) != n_boot or n_boot < 0:
        raise ValueError(f"n_boot must be a non-negative integer, got {n_boot!r}.")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie strictly between 0 and 1, got {level!r}.")


@dataclasses.dataclass(frozen=True)
class _PowerPoint:
    """Point fit in log space: ``log(y - offset) = intercept + slope * log x`` on the kept points."""

    slope: float  # = -alpha
    intercept: float  # = log c
    offset: float
    keep: np.ndarray  # boolean mask over the K abscissae


def _fit_no_offset(lx: np.ndarray, ym: np.ndarray) -> _PowerPoint:
    keep = np.isfinite(ym) & (ym > 0)
    if keep.sum() < 2:
        raise _FitError(f"A power-law fit needs at least 2 points with finite positive mean y, got {keep.sum()}.")
    ly = np.log(np.where(keep, ym, 1.0))
    b, a, ok = _ols(lx, ly, keep)
    if not ok:
        raise _FitError("A power-law fit needs at least 2 distinct x values among the usable points.")
    return _PowerPoint(float(b), float(a), 0.0, keep)


def _offset_sse(u: np.ndarray, lx: np.ndarray, y: np.ndarray, ymin: float) -> np.ndarray:
    """Variable-projection objective: residual sum of squares of the OLS line through ``(log x, log(y - u ymin))``."""
    ly = np.log(y - np.asarray(u)[..., None] * ymin)
    b, a, _ = _ols(lx, ly, np.ones(ly.shape, dtype=bool))
    r = ly - (a[..., None] + b[..., None] * lx)
    return (r * r).sum(axis=-1)


def _fit_offset(lx_all: np.ndarray, ym: np.ndarray) -> _PowerPoint:
    keep = np.isfinite(ym) & (ym > 0)
    if keep.sum() < 3:
        raise _FitError(f"A power-law fit with offset needs at least 3 points with finite positive mean y, "
                        f"got {keep.sum()}.")
    lx, y = lx_all[keep], ym[keep]
    if np.ptp(lx) <= 1e-12 * max(1.0, float(np.abs(lx).max())):
        raise _FitError("A power-law fit with offset needs at least 2 distinct x values among the usable points.")
    ymin = float(y.min())

    # Global bracket from a coarse grid in u = y_inf / ymin, then bounded Brent refinement inside the bracket.
    grid = np.unique(np.clip(np.concatenate([np.linspace(0.0, 0.9, 10), 1.0 - _GAP_GRID]), 0.0, _U_MAX))
    sse = _offset_sse(grid, lx, y, ymin)
    i = int(np.nanargmin(sse))
    best_u, best_sse = float(grid[i]), float(sse[i])
    lo, hi = float(grid[max(i - 1, 0)]), float(grid[min(i + 1, grid.size - 1)])
    if hi > lo:
        res = scipy.optimize.minimize_scalar(
            lambda u: float(_offset_sse(np.asarray(u), lx, y, ymin)),
            bounds=(lo, hi),
            method="bounded",
            options={"xatol": 1e-13},
        )
        if np.isfinite(res.fun) and res.fun <= best_sse:
            best_u, best_sse = float(res.x), float(res.fun)

    y_inf = best_u * ymin
    b, a, ok = _ols(lx, np.log(y - y_inf), np.ones(lx.shape, dtype=bool))
    if not ok or not np.isfinite(best_sse):
        raise _FitError("The offset power-law fit did not converge.")
    return _PowerPoint(float(b), float(a), float(y_inf), keep)


def _fit_point(lx: np.ndarray, ym: np.ndarray, offset: bool) -> _PowerPoint:
    return _fit_offset(lx, ym) if offset else _fit_no_offset(lx, ym)


def _boot_params(lx: np.ndarray, means: np.ndarray, offset: bool) -> np.ndarray:
    """Refit each row of ``means`` ``[B, K]``; returns ``[B', 3]`` rows of ``(alpha, c, y_inf)`` for successful fits."""
    if not offset:
        mask = np.isfinite(means) & (means > 0)
        ly = np.log(np.where(mask, means, 1.0))
        b, a, ok = _ols(lx, ly, mask)
        ok &= mask.sum(axis=-1) >= 2
        return np.stack([-b[ok], np.exp(a[ok]), np.zeros(int(ok.sum()))], axis=-1)
    out = []
    for row in means:
        try:
            p = _fit_offset(lx, row)
        except _FitError:
            continue
        out.append((-p.slope, np.exp(p.intercept), p.offset))
    return np.asarray(out, dtype=np.float64).reshape(-1, 3)


# ----------------------------------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------------------------------


def power_law(
    x: Any,
    y: Any,
    *,
    offset: bool = False,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    axis_seed: int | None = None,
) -> PowerLawFit:
    r"""Fit a power law ``y = c * x**(-alpha) (+ y_inf)`` with bootstrap confidence intervals.

    Model and estimator:

    * ``offset=False``: ordinary least squares in log space on the seed-mean ``ybar`` of ``y``,

      .. math:: \log \bar y_k = \log c - \alpha \log x_k.

    * ``offset=True``: ``y = c x^{-\alpha} + y_\infty`` with ``0 <= y_inf < min_k ybar_k``. For a fixed ``y_inf`` the
      best ``(log c, alpha)`` is the closed-form OLS line through ``(log x_k, log(ybar_k - y_inf))``; the remaining
      1-D objective (the residual sum of squares of that line, i.e. *variable projection*)

      .. math:: R(y_\infty) = \min_{c,\alpha} \sum_k \big[\log(\bar y_k - y_\infty) - \log c + \alpha\log x_k\big]^2

      is minimised over ``y_inf / min(ybar) in [0, 1 - 1e-9]``: a coarse log-spaced grid in the gap
      ``min(ybar) - y_inf`` brackets the global minimum, then ``scipy.optimize.minimize_scalar(method="bounded")``
      refines it. Noiseless data are recovered to ``1e-8`` relative or better (Brent's tolerance is ``sqrt(eps)``).

    Points whose seed-mean (NaN/inf entries ignored) is non-finite or ``<= 0`` are dropped; at least 2 points (3 with
    ``offset``) must remain.

    Confidence intervals are equal-tailed bootstrap percentiles at ``level``, with ``np.random.default_rng(seed)``:

    * ``y`` 2-D with ``S >= 2`` seeds: resample seeds (rows) with replacement, refit on the resampled seed-mean.
    * otherwise (1-D ``y`` or a single seed): residual bootstrap in log space. With fitted values
      ``f_k = log c - alpha log x_k`` and residuals ``r_k = log(ybar_k - y_inf) - f_k``, each replicate is
      ``y*_k = y_inf + exp(f_k + r*_k)`` where ``r*`` is drawn with replacement from ``r * sqrt(K / (K - p))``
      (``p`` = 2 or 3 fitted parameters; the factor undoes the shrinkage of OLS residuals).

    Refits that fail (e.g. too few usable points in a resample) are skipped; ``n_boot`` of the result counts the ones
    that succeeded.

    Percentile bootstrap intervals under-cover with few replicates (normal instead of Student-t quantiles, and the
    seed bootstrap's variance is smaller by ``(S - 1) / S``): a nominal 90% interval covers about 83% of the time with
    ``S = 8`` seeds and about 87% with ``S = 16``. Allow for this (e.g. via ``tolerance`` in :func:`agrees`).

    Args:
      x: positive abscissae, shape ``(K,)``.
      y: measurements, shape ``(K,)`` or ``(S, K)`` with seeds (replicates) along axis 0.
      offset: also fit an additive offset ``y_inf >= 0``.
      n_boot: number of bootstrap replicates; 0 skips the bootstrap (all CIs ``(nan, nan)``).
      level: confidence level of the intervals, in ``(0, 1)``.
      seed: seed for ``np.random.default_rng``.
      axis_seed: axis of a 2-D ``y`` that indexes seeds; ``None`` means 0, i.e. ``y`` is ``(S, K)``. Pass 1 for a
        ``(K, S)`` array.

    Returns:
      A :class:`PowerLawFit`.

    Raises:
      ValueError: on non-positive / non-finite / non-1-D ``x``, mismatched shapes, too few usable points, or invalid
        ``n_boot`` / ``level``.

    Example:
      >>> import numpy as np
      >>> x = np.array([10.0, 100.0, 1000.0])
      >>> fit = power_law(x, 3.0 * x**-0.7, n_boot=0)
      >>> round(fit.exponent, 6), round(fit.prefactor, 6)
      (0.7, 3.0)
    """
    x = _check_x(x, positive=True)
    y = _check_y(y, x.size, axis_seed)
    _check_boot_args(n_boot, level)
    lx = np.log(x)

    replicated = y.ndim == 2 and y.shape[0] >= 2
    ym = _nanmean0(y, axis=0) if y.ndim == 2 else np.where(np.isfinite(y), y, np.nan)
    try:
        point = _fit_point(lx, ym, offset)
    except _FitError as e:
        raise ValueError(str(e)) from None

    rng = np.random.default_rng(seed)
    if n_boot == 0:
        params = np.empty((0, 3))
    elif replicated:
        s, k = y.shape
        chunk = max(1, _CHUNK_ELEMENTS // (s * k))
        parts = []
        for start in range(0, n_boot, chunk):
            idx = rng.integers(0, s, size=(min(chunk, n_boot - start), s))
            parts.append(_boot_params(lx, _nanmean0(y[idx], axis=1), offset))
        params = np.concatenate(parts, axis=0)
    else:
        keep = point.keep
        lxk = lx[keep]
        fitted = point.intercept + point.slope * lxk
        resid = np.log(ym[keep] - point.offset) - fitted
        n_par = 3 if offset else 2
        k = int(keep.sum())
        resid = resid * np.sqrt(k / (k - n_par)) if k > n_par else resid
        chunk = max(1, _CHUNK_ELEMENTS // k)
        parts = []
        for start in range(0, n_boot, chunk):
            idx = rng.integers(0, k, size=(min(chunk, n_boot - start), k))
            parts.append(_boot_params(lxk, point.offset + np.exp(fitted + resid[idx]), offset))
        params = np.concatenate(parts, axis=0)

    return PowerLawFit(
        exponent=-point.slope,
        prefactor=float(np.exp(point.intercept)),
        offset=point.offset,
        exponent_ci=_percentile_ci(params[:, 0], level),
        prefactor_ci=_percentile_ci(params[:, 1], level),
        offset_ci=_percentile_ci(params[:, 2], level),
        n_boot=int(params.shape[0]),
        level=float(level),
    )


def slope(x: Any, y: Any, *, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> LineFit:
    r"""Ordinary least-squares line ``y = slope * x + intercept`` with a percentile confidence interval.

    .. math:: \hat b = \frac{\sum_k (x_k - \bar x)(y_k - \bar y)}{\sum_k (x_k - \bar x)^2},\qquad
              \hat a = \bar y - \hat b \bar x.

    * ``y`` 2-D ``(S, K)`` with ``S >= 2``: the rows are bootstrap replicates (or seeds). The point estimate is the fit
      to the mean over rows (non-finite entries ignored, points with no finite entry dropped); the CI is the
      percentile interval at ``level`` of the fits to each row separately, using each row's finite points. Rows with
      fewer than 2 finite points (or no spread in ``x``) are skipped. ``n_boot`` is not used.
    * ``y`` 1-D (or a single row): residual bootstrap with ``n_boot`` replicates: residuals (scaled by
      ``sqrt(K / (K - 2))``) are resampled with replacement and added to the fitted values, then the line is refit.

    Typical use: ``slope(log(width), log_lr_star_boot)`` where ``log_lr_star_boot[b, k]`` is the ``b``-th bootstrap
    replicate of ``log lr*`` at width ``k``.

    Args:
      x: abscissae, shape ``(K,)``, finite.
      y: ordinates, shape ``(K,)`` or ``(S, K)`` with replicates along axis 0.
      n_boot: number of residual-bootstrap replicates for 1-D ``y``; 0 skips it.
      level: confidence level in ``(0, 1)``.
      seed: seed for ``np.random.default_rng`` (1-D case only).

    Returns:
      A :class:`LineFit`; its ``n_boot`` counts the row / bootstrap fits that entered the intervals.

    Raises:
      ValueError: on non-finite / non-1-D ``x``, mismatched shapes, fewer than 2 usable points for the point estimate,
        or invalid ``n_boot`` / ``level``.

    Example:
      >>> import numpy as np
      >>> x = np.log([64.0, 128.0, 256.0, 512.0])
      >>> rows = -1.0 * x + np.array([[0.0], [0.1], [-0.1]])   # three replicates, slope -1
      >>> fit = slope(x, rows)
      >>> round(fit.slope, 12), [round(v, 12) for v in fit.slope_ci], fit.n_boot
      (-1.0, [-1.0, -1.0], 3)
    """
    x = _check_x(x, positive=False)
    y = _check_y(y, x.size)
    _check_boot_args(n_boot, level)

    if y.ndim == 2 and y.shape[0] == 1:
        y = y[0]
    ym = _nanmean0(y, axis=0) if y.ndim == 2 else y
    b, a, ok = _ols(x, ym)
    if not ok:
        raise ValueError("A line fit needs at least 2 points with finite y and distinct x.")
    b, a = float(b), float(a)

    if y.ndim == 2:
        rb, ra, rok = _ols(x, y)
        boot_b, boot_a = rb[rok], ra[rok]
    elif n_boot == 0:
        boot_b = boot_a = np.empty(0)
    else:
        keep = np.isfinite(y)
        xk = x[keep]
        k = xk.size
        fitted = a + b * xk
        resid = y[keep] - fitted
        if k > 2:
            resid = resid * np.sqrt(k / (k - 2))
        rng = np.random.default_rng(seed)
        chunk = max(1, _CHUNK_ELEMENTS // k)
        bs, as_ = [], []
        for start in range(0, n_boot, chunk):
            idx = rng.integers(0, k, size=(min(chunk, n_boot - start), k))
            rb, ra, rok = _ols(xk, fitted + resid[idx])
            bs.append(rb[rok])
            as_.append(ra[rok])
        boot_b, boot_a = np.concatenate(bs), np.concatenate(as_)

    return LineFit(
        slope=b,
        intercept=a,
        slope_ci=_percentile_ci(boot_b, level),
        intercept_ci=_percentile_ci(boot_a, level),
        n_boot=int(boot_b.size),
        level=float(level),
    )


def mean_ci(values: Any, *, n_boot: int = 1000, level: float = 0.95, seed: int | np.random.Generator = 0
            ) -> tuple[float, tuple[float, float]]:
    """Mean of the finite entries of ``values`` and its equal-tailed percentile-bootstrap CI at ``level``.

    The entries (e.g. seeds) are resampled with replacement ``n_boot`` times. ``seed`` is a seed for
    ``np.random.default_rng`` or a generator to draw from. No finite entry gives ``(nan, (nan, nan))``.
    """
    _check_boot_args(n_boot, level)
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan"), _NAN_CI
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, (n_boot, v.size))].mean(axis=1)
    return float(v.mean()), _percentile_ci(means, level)


def agrees(measured_ci: tuple[float, float], predicted: float, tolerance: float) -> bool:
    r"""Whether a prediction is consistent with a measured interval, up to a tolerance.

    .. math:: \text{lo} - \text{tol} \le \text{predicted} \le \text{hi} + \text{tol}

    NaN anywhere (interval ends, prediction, tolerance) gives ``False``.

    Args:
      measured_ci: ``(lo, hi)`` measured interval, e.g. ``PowerLawFit.exponent_ci``.
      predicted: theoretical value.
      tolerance: non-negative slack added on both sides (model error, finite-size corrections, ...).

    Returns:
      ``True`` iff ``predicted`` lies in ``[lo - tolerance, hi + tolerance]``.

    Raises:
      ValueError: if ``measured_ci`` does not have exactly two entries or ``tolerance`` is negative.

    Example:
      >>> agrees((0.45, 0.55), 0.5, 0.0), agrees((0.45, 0.55), 0.6, 0.1), agrees((float("nan"), 1.0), 0.5, 1.0)
      (True, True, False)
    """
    if len(measured_ci) != 2:
        raise ValueError(f"measured_ci must be a (lo, hi) pair, got {measured_ci!r}.")
    lo, hi = (float(v) for v in measured_ci)
    predicted, tolerance = float(predicted), float(tolerance)
    if tolerance < 0:
        raise ValueError(f"tolerance must be non-negative, got {tolerance}.")
    if np.isnan([lo, hi, predicted, tolerance]).any():
        return False
    return bool(lo - tolerance <= predicted <= hi + tolerance)


class Regime(NamedTuple):
    """Which of several power laws a measured exponent belongs to (:func:`regime`).

    Attributes:
      name: the candidate consistent with the interval whose exponent is nearest the point estimate; when none is
        consistent, the nearest of all (``""`` for a NaN exponent).
      consistent: the candidates whose exponent agrees with the interval (:func:`agrees`), nearest first.
      ambiguous: more than one candidate agrees, so the measurement does not tell them apart.
    """

    name: str
    consistent: tuple[str, ...]
    ambiguous: bool


def regime(exponent: float, exponent_ci: tuple[float, float], candidates: dict[str, float],
           tolerance: float = 0.0) -> Regime:
    """Classify a fitted exponent among candidate laws, e.g. ``{"variance-limited": 1.0, "resolution-limited":
    1.5}`` for a loss-versus-width curve (Bahri et al. 2024).

    The candidates consistent with the interval widened by ``tolerance`` are listed nearest first, and the regime
    is the first of them (so an asymmetric bootstrap interval never names a law it rules out); with none
    consistent, ``consistent`` is empty and the regime is the nearest law, for the record. Candidates with a NaN
    exponent are never chosen. A NaN exponent gives ``name = ""``.

    Example:
      >>> regime(1.07, (0.95, 1.2), {"variance-limited": 1.0, "resolution-limited": 1.5})
      Regime(name='variance-limited', consistent=('variance-limited',), ambiguous=False)
    """
    if not candidates:
        raise ValueError("regime needs at least one candidate law.")
    finite = {k: float(v) for k, v in candidates.items() if np.isfinite(v)}
    if not np.isfinite(exponent) or not finite:
        return Regime("", (), False)
    order = sorted(finite, key=lambda k: abs(finite[k] - exponent))
    consistent = tuple(k for k in order if agrees(exponent_ci, finite[k], tolerance))
    return Regime(consistent[0] if consistent else order[0], consistent, len(consistent) > 1)


def lr_optimum(lr: Any, loss: Any) -> np.ndarray:
    """Optimal learning rate along the last axis, interpolated in log-lr.

    For each curve ``loss(lr)`` the grid argmin ``i`` is refined by the vertex of the parabola through
    ``(log lr, log loss)`` at ``i - 1, i, i + 1``, clipped to that bracket. Non-finite losses (diverged runs) count
    as infinitely bad. A curve whose minimum lies at either end of the grid, or that has no finite value, gives
    NaN: its optimum is not resolved by the grid.

    Args:
      lr: 1-D increasing learning rates, length ``K``.
      loss: array ``[..., K]``.
    Returns:
      ``lr*`` with shape ``loss.shape[:-1]``.

    Example:
      >>> lr = np.array([0.1, 1.0, 10.0])
      >>> round(float(lr_optimum(lr, np.exp((np.log10(lr) - 0.2) ** 2))), 3)  # log loss exactly parabolic
      1.585
    """
    x = np.log(np.asarray(lr, dtype=np.float64))
    if x.ndim != 1 or x.size < 3 or np.any(np.diff(x) <= 0):
        raise ValueError("lr must be a strictly increasing 1-D array of at least 3 positive values.")
    y = np.asarray(loss, dtype=np.float64)
    if y.shape[-1] != x.size:
        raise ValueError(f"loss has {y.shape[-1]} values along its last axis but lr has {x.size}.")
    with np.errstate(divide="ignore", invalid="ignore"):
        ly = np.where(np.isfinite(y) & (y > 0), np.log(np.where(y > 0, y, 1.0)), np.inf)
    flat = ly.reshape(-1, x.size)
    out = np.full(flat.shape[0], np.nan)
    for row, curve in enumerate(flat):
        if not np.isfinite(curve).any():
            continue
        i = int(np.argmin(curve))
        if i == 0 or i == x.size - 1 or not np.isfinite(curve[i - 1 : i + 2]).all():
            if 0 < i < x.size - 1:
                out[row] = np.exp(x[i])
            continue
        x0, x1, x2 = x[i - 1 : i + 2]
        y0, y1, y2 = curve[i - 1 : i + 2]
        denom = (x0 - x1) * (x0 - x2) * (x1 - x2)
        a = (x2 * (y1 - y0) + x1 * (y0 - y2) + x0 * (y2 - y1)) / denom
        b = (x2**2 * (y0 - y1) + x1**2 * (y2 - y0) + x0**2 * (y1 - y2)) / denom
        vertex = -b / (2 * a) if a > 0 else x1
        out[row] = np.exp(np.clip(vertex, x0, x2))
    return out.reshape(y.shape[:-1])
