"""``edge-of-stability``: do full-batch GD, heavy-ball momentum and Adam equilibrate at their stability thresholds?

Cohen et al. (2021), "Gradient descent on neural networks typically occurs at the edge of stability": under
full-batch GD at learning rate ``lr`` the sharpness (top Hessian eigenvalue of the training loss) first rises
(*progressive sharpening*) until it reaches ``2 / lr``, then hovers just above it while the loss keeps falling,
non-monotonically. With heavy-ball momentum ``beta`` the threshold is ``(2 + 2 beta) / lr``
(:func:`dynsim.theory.stability.momentum_threshold`, which is :func:`~dynsim.theory.stability.gd_threshold` at
``beta = 0``). Cohen et al. (2022), "Adaptive gradient methods at the edge of stability": under full-batch Adam the
*preconditioned* sharpness ``lambda_max(P^-1 H)`` equilibrates at ``(2 + 2 beta1) / ((1 - beta1) lr)``
(:func:`~dynsim.theory.stability.adam_threshold`, ``38 / lr`` at ``beta1 = 0.9``).

The experiment trains small tanh MLPs in SP full-batch at several learning rates, momenta and optimizers, records
``loss``, ``preconditioned_sharpness`` and its residual ``preconditioned_sharpness_err`` (:mod:`dynsim.observables`)
every few steps, and for each (optimizer, momentum, lr) compares the late-phase ratio
``preconditioned_sharpness / threshold`` (per seed the median over the last ``analysis.late_fraction`` of the records;
then the mean over seeds, with a Student-t CI over seeds) with the prediction 1. The regimes say whether the sharpness
got there by progressive sharpening (starting below the threshold) or started at or above it.

Each check names the law it exists to rule out (:func:`competing_ratio`):

- GD: no self-stabilisation, i.e. the sharpness of the untrained network (its initial ratio, 0.71 at lr 0.15 and
  1.41 at lr 0.3 on the quick sweep): a network that neither sharpens to the edge nor is pushed back to it. A member
  that starts at its edge cannot tell the two apart, and its check is then "inconclusive".
- Heavy-ball momentum ``beta``: plain GD's threshold ``2 / lr``, a ratio ``1 / (1 + beta)`` (0.67 at 0.5).
- Adam: the threshold without ``beta1``, ``2 / lr`` (``adam_threshold(lr, 0)``), a ratio
  ``(1 - beta1) / (1 + beta1)`` (0.053 at 0.9).

Model error (:func:`model_error`), measured per member and added to both sides of the CI:

- the saw-tooth: at the edge the sharpness oscillates about the threshold, overshooting it until the oscillation
  along the top eigenvector grows and pushes it back (Cohen et al. 2021; Damian et al. 2023, "Self-stabilization:
  the implicit bias of gradient descent at the edge of stability"). The quadratic model behind the threshold puts it
  inside the band the sharpness oscillates over, not at a particular statistic of it: the cubic term that stops the
  oscillation shifts the level by the order of its amplitude (Cohen et al. see the sharpness hover slightly *above*
  2/lr; here GD's late medians exceed it by 0.5% at lr 0.1 and 3% at lr 0.3). The term is half the 10-90%
  range of the late ratio about its least-squares line over the window, per seed, averaged over seeds: the line
  keeps a sharpness still rising (or falling) through the window from counting as oscillation.
- the estimator: the recorded value is a Ritz value, below the top eigenvalue by at most the residual
  ``|A y - lam y|`` recorded with it (some eigenvalue lies within it; ``tests/test_sharpness.py``); the term is the
  late median of ``preconditioned_sharpness_err / threshold``, averaged over seeds. Its forward-difference products
  move it by about 1e-4 more (below).

On the quick sweep the saw-tooth terms are 0.04-0.05 for GD, 0.07-0.10 for momentum 0.5 and 0.04-0.05 for Adam, the
estimator terms 0.0003-0.007; a sharpness stuck at its initial value, still rising through the window, left below
the edge by a catapult or off by a constant factor (``1 + beta``, ``1 / (1 - beta1)``, a missing ``n^-c``) is
outside. Quick size (width 64, 3 seeds, 1000 steps), late ratio [95% CI], model error, competitor, verdict:

- GD lr 0.15: 1.020 [1.004, 1.036], 0.053, initial ratio 0.71, agrees within model error;
- GD lr 0.3: 1.034 [1.014, 1.054], 0.044, initial ratio 1.41, agrees within model error;
- momentum 0.5, lr 0.15: 1.000 [0.967, 1.034], 0.070, 0.67, agrees; lr 0.3: 0.994 [0.970, 1.018], 0.102, 0.67, agrees;
- Adam lr 0.15: 0.986 [0.955, 1.017], 0.038, 0.053, agrees; lr 0.3: 0.990 [0.955, 1.025], 0.055, 0.053, agrees.

Momentum 0.5 at lr 0.3 starts at 0.90-0.97 of its threshold, so its check cannot rule out a sharpness that stays at
its initial value; it rules out plain GD's threshold. GD at lr 0.2, in the full sweep, starts at about 0.94 of 2/lr
(2/3 of the 1.41 at lr 0.3), so its check may be "inconclusive" for the same reason; the full size's verdicts are
not recorded here.

Thresholds in dynsim's units: a layer's step is ``lr * n^-c_l`` (:mod:`dynsim.param`). The recorded quantity is the
top eigenvalue of ``D H``, with ``D`` the per-parameter step sizes in units of ``lr``: ``n^-c_l`` for SGD (the plain
sharpness when ``c = 0``, as for SP, NTK and muP; ``n`` times it for mean field, where GD at width 32, lr 0.3 and
0.6 measured late ratios of 1.04), ``n^-c_l / (sqrt(nu_hat) + eps)`` for Adam, so the thresholds are the
theory's functions of the base ``lr``. Coupled weight decay ``wd`` adds ``wd`` to every Hessian eigenvalue of the
optimised objective, i.e. ``wd n^-c`` to every eigenvalue of ``D H`` for SGD with one exponent ``c``, so the
recorded (unregularised) value is compared with ``threshold - wd n^-c`` (not exercised: on this task a decay large
enough to move the threshold measurably, 0.5 at lr 0.3, shrinks the weights to zero); with layer-dependent SGD
rates, or with Adam, the decay is no uniform shift and is rejected. So are minibatches (the thresholds are
full-batch statements) and ``adamw``.

Adam's threshold comes from a frozen preconditioner; ``beta2 = 0.999`` changes it slowly. Measured on this setup
(width 64, P = 128, 3 seeds, 1000 steps): late ratios 0.93-1.00 for lr 0.003-0.3 (0.6-0.8 at lr 0.001, still
sharpening at step 1000). Adam has no heavy-ball coefficient, so the ``momentum`` axis does not apply to it: its
members at every momentum are the same run, and only the first momentum value is analysed.

The Hessian-vector products are forward differences of gradients (``train.hvp = "fd"``,
:func:`dynsim.observables.hessian_matvec`), which the smooth tanh network allows: against a converged 32-product
reference on the quick sweep the recorded sharpness errs by 1.1e-4 / 2.7e-3 / 4.1e-2 (median / 90th / 99th
percentile) against 6.7e-7 / 1.5e-3 / 4.1e-2 with exact (tangent) products, for about three quarters of their
extra cost (``python -m benchmarks.sharpness``). A ReLU model needs ``--set train.hvp=tangent``.

Not covered:

- ``beta = 0.9`` is not in the default sweep. On this setup (width 64, P = 128, lr 0.1-0.2, 5 seeds) the sharpness
  reaches ``3.8 / lr`` within a few hundred steps, but the first catapult drops it to about 0.5-0.7 of the
  threshold, after which the loss falls smoothly (to 1e-4-6e-4 by step 1000 at lr 0.2, about 100x below GD's) while
  the sharpness re-grows only slowly: the late-phase medians were 0.58-0.97, so the equilibrium claim does not
  apply there. ``beta = 0.5`` equilibrates like plain GD.
  ``--set momentum=[0,0.5,0.9]`` adds it; its regimes then read "..., then fell below it".
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.stats
import xarray as xr

from .. import param as _param
from ..plot import NullFormatter, colors, save, subplots
from ..theory.stability import adam_threshold, gd_threshold, momentum_threshold
from ._contract import Check, Experiment, Requirements
from ._report import ci_errors, squeeze_axes, table

# Measured at full size (8 seeds) the per-seed late medians lie within 0.997-1.038 of the threshold for GD and
# 0.995-1.017 for beta = 0.5 (quick size, 3 seeds: 1.013-1.043 and 0.984-1.014), while inside the window the
# sharpness saw-tooths between about 0.89 and 1.09 of it (a drop with a loss spike each time it overshoots); the
# median's offset from 1 is of the order of the saw-tooth (model_error), and a window that is not a whole number of
# saw-teeth weights one phase more.
LEVEL = 0.95  # the CIs over seeds
BAND = (10, 90)  # percentiles of the late ratio whose half-range is the saw-tooth term of the model error
LATE_FRACTION = 1 / 3
REACH = 0.95  # a seed has "reached the edge" when sharpness / threshold first gets to this

DEFAULTS = {
    "experiment": "edge-of-stability",
    "model": {"kind": "mlp", "depth": 3, "act": "tanh"},
    "task": {"d_in": 4, "n_train": 128, "n_test": 32, "teacher": "mlp", "teacher_width": 64, "noise": 0.0,
             "seed": 0},
    "train": {"steps": 2000, "record_every": 10, "hvp": "fd",
              "observables": ["loss", "preconditioned_sharpness", "preconditioned_sharpness_err"]},
    "sweep": {"width": [64], "lr": [0.1, 0.15, 0.2, 0.3], "seed": [0, 1, 2, 3, 4, 5, 6, 7], "param": ["sp"],
              "optimizer": ["sgd", "adam"], "momentum": [0.0, 0.5]},
    "analysis": {"late_fraction": LATE_FRACTION, "reach": REACH},
}
QUICK = {
    "train": {"steps": 1000, "record_every": 10},
    "sweep": {"lr": [0.15, 0.3], "seed": [0, 1, 2]},
}

_MEMBER = ("optimizer", "param", "width", "init_scale", "weight_decay", "momentum", "lr")  # check order


def lr_exponent_c(param: str) -> float:
    """The common SGD learning-rate exponent ``c`` of a parametrization (``ValueError`` if the layers differ)."""
    c = np.asarray(_param.get(param).table("sgd"))[2]
    if not np.allclose(c, c[0]):
        raise ValueError(f"parametrization {param!r} has layer-dependent SGD learning rates (c = {c.tolist()}); "
                         "the edge-of-stability threshold needs one learning rate for all layers.")
    return float(c[0])


SHARPNESS = "preconditioned_sharpness"  # the recorded quantity: top eigenvalue of D H
SHARPNESS_ERR = "preconditioned_sharpness_err"  # its residual: some eigenvalue of D H lies within it


def _fraction(v) -> bool:
    return not isinstance(v, bool) and isinstance(v, (int, float)) and 0 < v <= 1


REQUIRES = Requirements(
    observables=("loss", SHARPNESS, SHARPNESS_ERR),
    at_least=(("seed", 2, "the late ratio's CI is a Student-t interval over seeds"),),
    full_batch=True,
    analysis={"late_fraction": (_fraction, "a number in (0, 1]"), "reach": (_fraction, "a number in (0, 1]")},
)


def _decay(ds) -> xr.DataArray:
    """``weight_decay * n^-c``: what coupled decay adds to every eigenvalue of ``D H`` under SGD (0 without decay)."""
    if not (ds["weight_decay"] != 0).any():
        return ds["weight_decay"] * 0.0
    # validate() allows decay only with one SGD exponent per parametrization
    c = xr.DataArray([lr_exponent_c(str(p)) for p in ds["param"].values], dims="param", coords={"param": ds["param"]})
    return ds["weight_decay"] * ds["width"].astype(float) ** (-c)


def threshold(ds, beta1: float = 0.9) -> xr.DataArray:
    """Threshold of ``preconditioned_sharpness`` for every member.

    SGD: ``momentum_threshold(lr, beta) - weight_decay * n^-c``; Adam: ``adam_threshold(lr, beta1)``.
    """
    sgd = xr.apply_ufunc(momentum_threshold, ds["lr"], ds["momentum"])
    adam = xr.apply_ufunc(adam_threshold, ds["lr"], beta1) + 0.0 * ds["momentum"]
    return xr.where(ds["optimizer"] == "sgd", sgd - _decay(ds), adam)


def competing_ratio(ds, beta1: float = 0.9) -> xr.DataArray:
    """The competing threshold law over :func:`threshold`, for the members whose competitor is a threshold.

    Heavy-ball momentum ``beta > 0``: plain GD's threshold, ``(2/lr - decay) / ((2 + 2 beta)/lr - decay)``, i.e.
    ``1 / (1 + beta)`` without decay. Adam: the threshold without ``beta1``, ``adam_threshold(lr, 0) = 2 / lr``, over
    ``adam_threshold(lr, beta1)``: ``(1 - beta1) / (1 + beta1)``. NaN for GD (``beta = 0``), whose competitor is its
    own initial ratio (:func:`measure`).
    """
    gd = xr.apply_ufunc(gd_threshold, ds["lr"]) - _decay(ds)
    sgd = xr.where(ds["momentum"] > 0, gd, np.nan) / threshold(ds, beta1)
    adam = xr.apply_ufunc(adam_threshold, ds["lr"], 0.0) / xr.apply_ufunc(adam_threshold, ds["lr"], beta1)
    return xr.where(ds["optimizer"] == "sgd", sgd, adam + 0.0 * ds["momentum"])


def competitor_name(key: dict) -> str:
    """The law a member's check exists to rule out, in words."""
    if key.get("optimizer") == "adam":
        return "the threshold without beta1, 2/lr"
    if key["momentum"] > 0:
        return "plain GD's threshold 2/lr"
    return "no self-stabilisation (the untrained network's sharpness)"


def late_window(n_records: int, late_fraction: float) -> slice:
    """The last ``late_fraction`` of the records after step 0 (at least two)."""
    k = max(2, int(round(late_fraction * (n_records - 1))))
    return slice(n_records - min(k, n_records), None)


def _nan(reduce, a, **kw):
    """A NaN-ignoring reduction that gives NaN, silently, where everything is NaN (diverged seeds)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return reduce(a, **kw)


def t_ci(values, level: float = LEVEL) -> tuple[float, tuple[float, float]]:
    """Mean of the finite entries of ``values`` (seeds) and its Student-t interval.

    .. math:: \\bar x \\pm t_{S-1,\\,(1+\\text{level})/2}\\; s / \\sqrt S

    exact for Gaussian seed-to-seed scatter. With three seeds a 95% percentile bootstrap of the mean covers the true
    mean only 75% of the time (2000 Gaussian draws, :func:`dynsim.fit.mean_ci`). Fewer than two finite entries give a
    NaN interval (nothing measured).
    """
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size < 2:
        return (float(v[0]) if v.size else float("nan")), (float("nan"), float("nan"))
    mean = float(v.mean())
    half = float(scipy.stats.t.ppf((1 + level) / 2, v.size - 1) * v.std(ddof=1) / np.sqrt(v.size))
    return mean, (mean - half, mean + half)


def sawtooth(late, steps) -> np.ndarray:
    """Per seed, half the :data:`BAND` percentile range of the late ratio about its least-squares line over the window.

    ``late[seed, record]`` over the records at ``steps``; the line takes out a drift through the window (a sharpness
    still rising), so what is left is the oscillation about the threshold. NaN where a record is not finite.
    """
    late = np.asarray(late, dtype=float)
    t = np.asarray(steps, dtype=float) - np.mean(steps)
    out = np.full(late.shape[0], np.nan)
    for k, r in enumerate(late):
        if np.isfinite(r).all():
            lo, hi = np.percentile(r - np.polyval(np.polyfit(t, r, 1), t), BAND)
            out[k] = (hi - lo) / 2
    return out


def model_error(late, late_err, steps) -> tuple[float, float]:
    """The model error of a member's late ratio, ``(saw-tooth, estimator)``; the tolerance is their sum.

    ``late[seed, record]`` is ``sharpness / threshold`` and ``late_err[seed, record]`` the estimate's residual over the
    threshold, both over the late window at ``steps``. Saw-tooth: the seed mean of :func:`sawtooth`. Estimator: the
    seed mean of the late median of the residual, which bounds how far the Ritz value lies below the top eigenvalue.
    Diverged seeds (NaN) are left out.
    """
    saw = _nan(np.nanmean, sawtooth(late, steps))
    lag = _nan(np.nanmean, _nan(np.nanmedian, np.asarray(late_err, dtype=float), axis=1))
    return float(saw), float(lag)


def member_label(key: dict, varying: set, lr: bool = True) -> str:
    """``"GD, lr=0.1"``, ``"momentum 0.5, lr=0.1"`` or ``"Adam, lr=0.1"``, plus the other member axes that vary."""
    beta = key["momentum"]
    head = "Adam" if key.get("optimizer") == "adam" else "GD" if beta == 0 else f"momentum {beta:g}"
    extra = [f"{d}={key[d]}" if isinstance(key[d], str) else f"{d}={key[d]:g}"
             for d in ("param", "width", "init_scale", "weight_decay") if d in varying]
    return ", ".join([head, *([f"lr={key['lr']:g}"] if lr else []), *extra])


def _analysed(key: dict, first_momentum: float) -> bool:
    """Adam ignores the momentum axis: its members at other momenta repeat the first one's run."""
    return key.get("optimizer") != "adam" or key["momentum"] == first_momentum


def measure(ds, late_fraction: float = LATE_FRACTION, reach: float = REACH, beta1: float = 0.9):
    """Per member (every coordinate but seed), the sharpness / threshold statistics.

    Returns:
      ``(ratio, rows)``: ``ratio`` is ``sharpness / threshold`` with dims ``member..., seed, step``; ``rows`` a list of
      dicts, one per member, with ``key`` (coordinates), ``label``, ``late`` (per-seed late medians), ``measured``,
      ``ci`` (:func:`t_ci`), ``initial`` and ``peak`` (per seed), ``first_reach`` (per-seed step, -1 if never),
      ``late_min`` / ``late_max`` (per seed), ``diverged`` (per seed, bool), ``sawtooth`` / ``lag`` (the parts of
      :func:`model_error`) and ``tolerance`` (their sum), ``competing`` and ``competitor`` (the law the check rules
      out: :func:`competing_ratio`, or for GD the seed-mean initial ratio).
    """
    thr = threshold(ds, beta1)
    ratio = ds[SHARPNESS] / thr
    err = ds[SHARPNESS_ERR] / thr if SHARPNESS_ERR in ds else ratio * np.nan
    competing = competing_ratio(ds, beta1)
    dims = [d for d in _MEMBER if d in ratio.dims]
    ratio, err = ratio.transpose(*dims, "seed", "step"), err.transpose(*dims, "seed", "step")
    competing = competing.broadcast_like(ratio.isel(seed=0, step=0)).transpose(*dims)
    varying = {d for d in dims if ratio.sizes[d] > 1}
    steps = ds["step"].values
    window = late_window(len(steps), late_fraction)
    diverged_all = (ds["diverged_at"] >= 0).transpose(*dims, "seed")
    rows = []
    for idx in np.ndindex(*[ratio.sizes[d] for d in dims]):
        key = {d: ratio[d].values[i].item() for d, i in zip(dims, idx)}
        if not _analysed(key, ds["momentum"].values[0]):
            continue
        r = ratio.values[idx]  # [seed, step]
        diverged = diverged_all.values[idx].astype(bool)
        late_part = r[:, window]
        late = np.where(np.isfinite(late_part).all(axis=1), np.median(late_part, axis=1), np.nan)
        late_min, late_max = _nan(np.nanmin, late_part, axis=1), _nan(np.nanmax, late_part, axis=1)
        peak = _nan(np.nanmax, r, axis=1)
        hit = r >= reach
        first = np.where(hit.any(axis=1), steps[np.argmax(hit, axis=1)], -1)
        # A start above the edge that falls below it (a catapult; for Adam, whose first step divides by a single
        # squared gradient, a fall far below) and then climbs back: the climb is the progressive sharpening.
        below = ~hit & np.isfinite(r)
        dip = np.where(below.any(axis=1), np.argmax(below, axis=1), -1)
        low = np.full(len(r), np.nan)
        back = np.full(len(r), -1)
        for k, d in enumerate(dip):
            if d > 0 and hit[k, 0]:
                again = np.flatnonzero(hit[k, d:])
                if again.size:
                    back[k] = steps[d + again[0]]
                    low[k] = np.nanmin(r[k, d:d + again[0]])
        dip = np.where(dip > 0, steps[np.maximum(dip, 0)], -1)
        measured, ci = t_ci(late)
        saw, lag = model_error(np.where(diverged[:, None], np.nan, late_part),
                               np.where(diverged[:, None], np.nan, err.values[idx][:, window]), steps[window])
        initial = r[:, 0]
        versus = float(competing.values[idx])
        if key.get("optimizer") != "adam" and key["momentum"] == 0:
            versus = float(_nan(np.nanmean, np.where(diverged, np.nan, initial)))
        rows.append({"key": key, "label": member_label(key, varying), "group": member_label(key, varying, False),
                     "late": late, "measured": measured, "ci": ci,
                     "initial": initial, "peak": peak, "first_reach": first, "dip": dip, "low": low, "back": back,
                     "late_min": late_min, "late_max": late_max, "diverged": diverged,
                     "sawtooth": saw, "lag": lag, "tolerance": saw + lag,
                     "competing": versus, "competitor": competitor_name(key)})
    return ratio, rows


def check(row: dict, late_from: int, last: int) -> Check:
    """The member's check: late ratio against 1, its competitor and its measured model error."""
    n_ok, n = int((~row["diverged"]).sum()), len(row["diverged"])
    reason = (f"model error = saw-tooth {row['sawtooth']:.3f} (half the {BAND[0]}-{BAND[1]}% range of the late "
              "ratio about its trend over the window, mean over seeds: the quadratic model puts the threshold inside "
              f"the band the sharpness oscillates over) + estimator {row['lag']:.4f} (late median of the Ritz "
              f"residual / threshold, which bounds the estimate's lag); Student-t {LEVEL:.0%} CI over {n_ok}/{n} "
              f"seeds of the per-seed medians over steps {late_from}-{last}")
    return Check(name=f"sharpness / threshold, {row['label']}", measured=row["measured"], ci=row["ci"], predicted=1.0,
                 competitor=row["competitor"], competing=row["competing"], tolerance=row["tolerance"], reason=reason)


def describe(row: dict, verdict: str, reach: float = REACH) -> str:
    """How the member got to (or missed) the edge, in words, and what its check's ``verdict`` says of the late phase."""
    ok = ~row["diverged"]
    n = int(ok.sum())
    if n == 0:
        return "diverged"
    init, first = row["initial"][ok], row["first_reach"][ok]
    started = init >= reach
    reached = first >= 0
    parts = []
    back = row["back"][ok]
    if started.all() and (back >= 0).all():
        parts.append(f"started above the edge (initial ratio {np.median(init):.2f}), fell below it by step "
                     f"{np.median(row['dip'][ok]):.0f} (to {np.median(row['low'][ok]):.2f}), then sharpened back to "
                     f"{reach:g} by step {np.median(back):.0f}")
    elif started.all():
        parts.append(f"at or above the edge from the start (initial ratio {np.median(init):.2f}), no sharpening "
                     "needed")
    elif reached.all() and not started.any():
        parts.append(f"progressive sharpening: ratio {np.median(init):.2f} -> {reach:g} by step "
                     f"{np.median(first):.0f}")
    elif reached.all():
        parts.append(f"at the edge from the start in {int(started.sum())}/{n} seeds, progressive sharpening "
                     f"(from {np.median(init[~started]):.2f}) in the rest")
    elif not reached.any():
        parts.append(f"still below the edge: ratio {np.median(init):.2f} -> at most "
                     f"{_nan(np.nanmax, row['peak'][ok]):.2f}")
    else:
        parts.append(f"reached the edge in {int(reached.sum())}/{n} seeds (initial ratio {np.median(init):.2f})")
    m = row["measured"]
    if not np.isfinite(m):
        pass
    elif verdict == "agrees":
        parts.append(f"then hovers at it (late ratio {m:.2f})")
    elif verdict == "inconclusive":
        parts.append(f"late ratio {m:.2f}, which does not tell the edge from {row['competitor']} "
                     f"({row['competing']:.2f})")
    elif reached.any() and m < 1:
        parts.append(f"then fell below it (late ratio {m:.2f})")
    else:
        parts.append(f"late ratio {m:.2f}, {'below' if m < 1 else 'above'} the edge")
    if n < len(ok):
        parts.append(f"{len(ok) - n}/{len(ok)} seeds diverged")
    return "; ".join(parts)


def analyse(ds, spec, out):
    analysis = spec.get("analysis", {})
    late_fraction = float(analysis.get("late_fraction", LATE_FRACTION))
    reach = float(analysis.get("reach", REACH))
    beta1 = float(spec.get("train", {}).get("betas", (0.9, 0.999))[0])
    ratio, rows = measure(ds, late_fraction, reach, beta1=beta1)
    steps = ds["step"].values
    window = late_window(len(steps), late_fraction)
    late_from = int(steps[window][0])
    checks, regimes = [], {}
    for row in rows:
        checks.append(check(row, late_from, int(steps[-1])))
        regimes[row["label"]] = describe(row, checks[-1].verdict, reach)
    figures = [_plot_traces(ds, SHARPNESS, out, beta1), _plot_traces(ds, "loss", out, beta1),
               _plot_ratio(ratio, rows, out, late_from)]
    report = _report(rows, late_from, int(steps[-1]), ds.sizes["seed"], reach, beta1)
    return {"checks": checks, "regimes": regimes, "figures": figures, "report": report}


def _report(rows, late_from, last, n_seeds, reach, beta1):
    lines = [
        "Full-batch training; the sharpness is `preconditioned_sharpness`, the top eigenvalue of `D H` with `H` the "
        "Hessian of the training loss and `D` the per-parameter step sizes in units of lr (`n^-c` for SGD, the plain "
        "Hessian for SP; `n^-c / (sqrt(nu_hat) + eps)` for Adam), by Rayleigh-Ritz on a Krylov space of the "
        "previous record's eigenvector. The threshold of each member is "
        "`momentum_threshold(lr, beta) - weight_decay * n^-c` for SGD (`2 / lr` for "
        f"plain GD) and `adam_threshold(lr, beta1)` = `{(2 + 2 * beta1) / (1 - beta1):g} / lr` for Adam "
        f"(beta1 = {beta1:g}). Per seed the late ratio is the median of `sharpness / threshold` over steps "
        f"{late_from}-{last}; the measured value is its mean over {n_seeds} seeds with a Student-t CI over seeds "
        f"({LEVEL:.0%}). Each check rules out a competing law: for GD no self-stabilisation (the untrained network's "
        "sharpness, its initial ratio), for heavy-ball momentum plain GD's threshold 2/lr, for Adam the threshold "
        "without beta1, 2/lr. Its model error, measured per member, is the saw-tooth (half the "
        f"{BAND[0]}-{BAND[1]}% range of the late ratio about its trend, mean over seeds) plus the estimator's "
        "(the late median of the Ritz residual over the threshold). A seed has reached the edge when the ratio "
        f"first gets to {reach:g} (for a seed that starts above the edge and falls below it, when it climbs back).",
        "",
        "Adam has no heavy-ball coefficient: its members at every value of the momentum axis repeat one run, so "
        "only the first momentum value is analysed. Momentum 0.9 is not in the default sweep: on this "
        "setup (5 seeds, lr 0.1-0.2, 1000 steps) the first catapult leaves the sharpness at about 0.5-0.7 of "
        "`3.8 / lr`, after which the loss falls smoothly (to 1e-4-6e-4 at lr 0.2) while the sharpness re-grows only "
        "slowly (late medians 0.58-0.97), so the equilibrium prediction does not apply there.",
        "",
    ]
    body = []
    for row in rows:
        ok = ~row["diverged"]
        if not ok.any():
            body.append([row["label"], "diverged", "", "", "", "", "", ""])
            continue
        # a seed that started above the edge and fell below it arrives when it climbs back, as in the regime line,
        # or never
        fell = (row["initial"] >= REACH) & (row["dip"] > 0)
        first = np.where(row["back"] >= 0, row["back"], np.where(fell, -1, row["first_reach"]))[ok]
        reached = (f"{np.median(first[first >= 0]):.0f} (median, {int((first >= 0).sum())}/{int(ok.sum())})"
                   if (first >= 0).any() else "never")
        body.append([row["label"], f"{np.median(row['initial'][ok]):.2f}", reached,
                     ", ".join(f"{v:.3f}" for v in row["late"][ok]),
                     f"{_nan(np.nanmin, row['late_min'][ok]):.2f}-{_nan(np.nanmax, row['late_max'][ok]):.2f}",
                     f"{_nan(np.nanmax, row['peak'][ok]):.2f}", f"{row['sawtooth']:.3f}", f"{row['lag']:.4f}"])
    lines.append(table(["member", "initial ratio", "reached edge at step", "late ratio per seed", "late min-max",
                        "peak", "saw-tooth", "estimator"], body))
    return "\n".join(lines)


def _lr_colors(n: int):
    """One colour per learning rate, dark to mid (viridis without its pale yellow end)."""
    return colors(n, 0.0, 0.75)


def _panels(ds):
    """Panel keys: optimizer and momentum (always) and every other non-lr member axis that varies; Adam once."""
    dims = ["optimizer"] + [d for d in ("param", "width", "init_scale", "weight_decay") if ds.sizes[d] > 1]
    dims.append("momentum")
    keys = [dict(zip(dims, idx)) for idx in np.ndindex(*[ds.sizes[d] for d in dims])]
    return dims, [k for k in keys if _analysed({"optimizer": ds["optimizer"].values[k["optimizer"]],
                                                "momentum": ds["momentum"].values[k["momentum"]]},
                                               ds["momentum"].values[0])]


def _panel_title(ds, key, beta1):
    adam = ds["optimizer"].values[key["optimizer"]] == "adam"
    parts = []
    for d, i in key.items():
        v = ds[d].values[i].item()
        if d == "optimizer":
            continue
        if d == "momentum":
            parts.insert(0, f"Adam (beta1 {beta1:g})" if adam else "GD (momentum 0)" if v == 0
                         else f"heavy-ball momentum {v:g}")
        else:
            parts.append(f"{d}={v}" if isinstance(v, str) else f"{d}={v:g}")
    return ", ".join(parts)


_REST = ("optimizer", "param", "width", "init_scale", "weight_decay", "momentum")  # squeezed where length 1


def _plot_traces(ds, name, out, beta1):
    """Sharpness (with the threshold lines) or ``loss`` vs step, one panel per optimizer and momentum (and other
    varying axes)."""
    dims, keys = _panels(ds)
    thr = threshold(ds, beta1)
    lrs, steps = ds["lr"].values, ds["step"].values
    colors = _lr_colors(len(lrs))
    fig, axes = subplots(1, len(keys), figsize=(5 * len(keys), 4.2), squeeze=False, sharey=(name == "loss"))
    for p, key in enumerate(keys):
        ax = axes[0, p]
        sel = squeeze_axes(ds[name].isel(key), _REST).transpose("lr", "seed", "step").values
        t = squeeze_axes(thr.isel({d: i for d, i in key.items() if d in thr.dims}), _REST)
        top = 0.0
        for k, lr in enumerate(lrs):
            for s in range(sel.shape[1] - 1, -1, -1):  # seed 0 last, on top
                ax.plot(steps, sel[k, s], color=colors[k], lw=1.0 if s == 0 else 0.6,
                        alpha=0.9 if s == 0 else 0.25, label=f"lr={lr:g}" if s == 0 else None)
            if name == SHARPNESS:
                level = float(t.sel(lr=lr).values) if "lr" in t.dims else float(t.values)
                ax.axhline(level, color=colors[k], ls="--", lw=1.2)
                top = max(top, level)
        beta = ds["momentum"].values[key["momentum"]].item()
        adam = ds["optimizer"].values[key["optimizer"]] == "adam"
        seeds = "" if sel.shape[1] == 1 else f"\nsolid: seed {ds['seed'].values[0]}, faint: other seeds"
        if name == SHARPNESS:
            ax.set_ylim(0, 1.3 * top)
            what = (f"(2+2*{beta1:g})/((1-{beta1:g}) lr)" if adam else "2/lr" if beta == 0
                    else f"(2+2*{beta:g})/lr")
            ax.set_title(f"{_panel_title(ds, key, beta1)}\ndashed: threshold {what}{seeds}", fontsize=10)
            ax.set(ylabel="preconditioned sharpness, top eigenvalue of P^-1 H" if adam
                   else "sharpness (top Hessian eigenvalue)")
        else:
            ax.set_title(f"{_panel_title(ds, key, beta1)}{seeds}", fontsize=10)
            ax.set(yscale="log", ylabel="training loss (full batch)")
        ax.set(xlabel="step")
        ax.legend(fontsize=7, loc="lower right" if name == SHARPNESS else "upper right")
    return save(fig, out / f"{'sharpness' if name == SHARPNESS else name}_vs_step.png")


def _plot_ratio(ratio, rows, out, late_from):
    """Left: seed-median ``sharpness / threshold`` vs step for every member; right: late ratio vs lr with CIs, the
    intervals widened by the model error, and the competitors."""
    lrs = ratio["lr"].values
    colors = _lr_colors(len(lrs))
    others = sorted({tuple((d, v) for d, v in r["key"].items() if d != "lr") for r in rows})
    styles = ["-", "--", ":", "-."]
    fig, (left, right) = subplots(1, 2, figsize=(11, 4))
    steps = ratio["step"].values
    for row in rows:
        k = int(np.flatnonzero(lrs == row["key"]["lr"])[0])
        o = others.index(tuple((d, v) for d, v in row["key"].items() if d != "lr"))
        sel = ratio.sel({d: v for d, v in row["key"].items()}).values  # [seed, step]
        curve = _nan(np.nanmedian, sel, axis=0)
        left.plot(steps, curve, color=colors[k], ls=styles[o % len(styles)], lw=1, label=row["label"])
    left.axhline(1.0, color="k", lw=1)
    left.axvline(late_from, color="0.4", ls=":", lw=1)
    left.set(xlabel="step", ylabel="sharpness / threshold (median over seeds)",
             title="all members; dotted: start of the late phase")
    left.set_ylim(0, min(2.0, max(1.4, left.get_ylim()[1])))
    left.legend(fontsize=6, ncol=2, loc="lower right")
    shown = [1.0]
    for o, other in enumerate(others):
        sub = [r for r in rows if tuple((d, v) for d, v in r["key"].items() if d != "lr") == other]
        x = np.array([r["key"]["lr"] for r in sub]) * (1 + 0.03 * (o - (len(others) - 1) / 2))
        y = np.array([r["measured"] for r in sub])
        lo = np.array([r["ci"][0] for r in sub])
        hi = np.array([r["ci"][1] for r in sub])
        tol = np.array([r["tolerance"] for r in sub])
        right.vlines(x, lo - tol, hi + tol, color=f"C{o}", alpha=0.25, lw=6, zorder=1)
        right.errorbar(x, y, yerr=ci_errors(y, lo, hi), fmt="o" + styles[o % len(styles)], color=f"C{o}",
                       capsize=3, ms=4, lw=1, label=sub[0]["group"])
        competing = np.array([r["competing"] for r in sub])
        right.plot(x, competing, "x", color=f"C{o}", ms=6)
        for r in sub:  # the seeds themselves
            right.plot(np.full(r["late"].shape, x[sub.index(r)]), r["late"], ".", color="0.45", ms=3, zorder=1.5)
        shown += [*(lo - tol), *(hi + tol), *competing]
    right.axhline(1.0, color="k", lw=1, label="prediction")
    right.set(xscale="log", xlabel="learning rate", ylabel="late sharpness / threshold")
    right.set_title(f"late phase: mean over seeds, {LEVEL:.0%} CI; pale: + model error\n"
                    "x: competitor (shown within 0.4-1.6); grey dots: seeds", fontsize=10)
    right.set_xticks(lrs, [f"{v:g}" for v in lrs])
    right.xaxis.set_minor_formatter(NullFormatter())
    shown = np.asarray(shown, dtype=float)
    shown = shown[np.isfinite(shown)]
    right.set_ylim(max(0.4, shown.min() - 0.05), min(1.6, shown.max() + 0.05))
    right.legend(fontsize=7)
    return save(fig, out / "sharpness_ratio.png")


def validate(spec):
    """What :data:`REQUIRES` cannot say as data: the optimizers that have a threshold here, weight decay only where it
    shifts the threshold uniformly, and a late phase of at least 3 records. (An online task, ``task.n_train = 0``,
    has no full batch: the spec's own validation refuses it with ``train.batch_size = 0``.)"""
    from ..spec import SpecError

    sweep = spec.get("sweep", {})
    optimizers = sweep.get("optimizer", ["sgd"])
    if any(o not in ("sgd", "adam") for o in optimizers):
        raise SpecError(f"spec key 'sweep.optimizer' must list only 'sgd' and 'adam' for edge-of-stability, got "
                        f"{optimizers!r}: adamw's decoupled decay has no threshold here.")
    if any(w != 0 for w in sweep.get("weight_decay", [0.0])):
        if "adam" in optimizers:
            raise SpecError("spec key 'sweep.weight_decay' must be [0.0] when sweep.optimizer includes 'adam': "
                            "decay does not shift Adam's preconditioned sharpness uniformly.")
        for p in sweep.get("param", ["mup"]):
            try:
                lr_exponent_c(p)
            except ValueError as e:
                raise SpecError(f"spec key 'sweep.param': {e} (needed with weight decay)") from None
    train = spec.get("train", {})
    steps, every = train.get("steps"), train.get("record_every", 10)
    if steps is not None and steps // every < 3:
        raise SpecError(f"spec key 'train.record_every' ({every}) leaves fewer than 3 records after step 0 in "
                        f"{steps} steps; edge-of-stability needs a late phase to take the median over.")


EXPERIMENT = Experiment("edge-of-stability", "full-batch GD, heavy-ball momentum and Adam: late-phase "
                                 "(preconditioned) sharpness against the stability thresholds 2/lr, (2+2 beta)/lr "
                                 "and (2+2 beta1)/((1-beta1) lr), with progressive sharpening", DEFAULTS, QUICK,
                                 analyse, validate, requires=REQUIRES)
