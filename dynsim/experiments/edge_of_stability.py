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
``loss`` and ``preconditioned_sharpness`` (:mod:`dynsim.obs_sharpness`) every few steps, and for each (optimizer,
momentum, lr) compares the late-phase ratio ``preconditioned_sharpness / threshold`` (per seed the median over the
last ``analysis.late_fraction`` of the records; then the mean over seeds, with a percentile bootstrap CI over seeds)
with the prediction 1. The regimes say whether the sharpness got there by progressive sharpening (starting below
the threshold) or started at or above it.

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
:func:`dynsim.obs_sharpness.hessian_matvec`), which the smooth tanh network allows: against a converged 32-product
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
import xarray as xr

from .. import fit as _fit
from .. import param as _param
from ..plot import plt, save
from ..theory.stability import adam_threshold, momentum_threshold
from ._base import Check, Experiment, register, squeeze_axes

# Measured at full size (8 seeds) the per-seed late medians lie within 0.997-1.038 of the threshold for GD and
# 0.995-1.017 for beta = 0.5 (quick size, 3 seeds: 1.013-1.043 and 0.984-1.014), while inside the window the
# sharpness saw-tooths between about 0.89 and 1.09 of it (a drop with a loss spike each time it overshoots). Two
# effects bias the median by a few percent: Cohen et al. observe the sharpness hovering slightly *above* 2/lr (the
# local quadratic model is not exact, the cubic term stabilises the oscillation; here the GD excess grows with lr,
# 1.005 at lr 0.1 to 1.03 at 0.3), and a window that is not a whole number of saw-teeth weights one phase more. The
# estimate itself lags the true top eigenvalue by up to ~2% where the eigenvector turns (tests/test_sharpness.py),
# and its forward-difference products (train.hvp = "fd") move it by about 1e-4 (median; at most +0.4% on the quick
# sweep against 32 exact products). 0.1 covers these and still catches a sharpness that is still rising, one that fell
# below after a catapult, or one off by a constant factor (1 + beta, a missing n^-c).
TOLERANCE = 0.1
N_BOOT = 1000
LATE_FRACTION = 1 / 3
REACH = 0.95  # a seed has "reached the edge" when sharpness / threshold first gets to this

DEFAULTS = {
    "experiment": "edge-of-stability",
    "model": {"kind": "mlp", "depth": 3, "act": "tanh"},
    "task": {"d_in": 4, "n_train": 128, "n_test": 32, "teacher": "mlp", "teacher_width": 64, "noise": 0.0,
             "seed": 0},
    "train": {"steps": 2000, "record_every": 10, "observables": ["loss", "preconditioned_sharpness"], "hvp": "fd"},
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


def threshold(ds, beta1: float = 0.9) -> xr.DataArray:
    """Threshold of ``preconditioned_sharpness`` for every member.

    SGD: ``momentum_threshold(lr, beta) - weight_decay * n^-c``; Adam: ``adam_threshold(lr, beta1)``.
    """
    opt = ds["optimizer"]
    sgd = xr.apply_ufunc(momentum_threshold, ds["lr"], ds["momentum"])
    decay = ds["weight_decay"] * 0.0
    if (ds["weight_decay"] != 0).any():  # validate() allows decay only with one SGD exponent per parametrization
        c = xr.DataArray([lr_exponent_c(str(p)) for p in ds["param"].values], dims="param",
                         coords={"param": ds["param"]})
        decay = ds["weight_decay"] * ds["width"].astype(float) ** (-c)
    adam = xr.apply_ufunc(adam_threshold, ds["lr"], beta1) + 0.0 * ds["momentum"]
    return xr.where(opt == "sgd", sgd - decay, adam)


def late_window(n_records: int, late_fraction: float) -> slice:
    """The last ``late_fraction`` of the records after step 0 (at least two)."""
    k = max(2, int(round(late_fraction * (n_records - 1))))
    return slice(n_records - min(k, n_records), None)


def _nan(reduce, a, **kw):
    """A NaN-ignoring reduction that gives NaN, silently, where everything is NaN (diverged seeds)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return reduce(a, **kw)


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


def measure(ds, late_fraction: float = LATE_FRACTION, reach: float = REACH, n_boot: int = N_BOOT, seed: int = 0,
            beta1: float = 0.9):
    """Per member (every coordinate but seed), the sharpness / threshold statistics.

    Returns:
      ``(ratio, rows)``: ``ratio`` is ``sharpness / threshold`` with dims ``member..., seed, step``; ``rows`` a list of
      dicts, one per member, with ``key`` (coordinates), ``label``, ``late`` (per-seed late medians), ``measured``,
      ``ci``, ``initial`` and ``peak`` (per seed), ``first_reach`` (per-seed step, -1 if never), ``late_min`` /
      ``late_max`` (per seed), ``diverged`` (per seed, bool).
    """
    ratio = ds[SHARPNESS] / threshold(ds, beta1)
    dims = [d for d in _MEMBER if d in ratio.dims]
    ratio = ratio.transpose(*dims, "seed", "step")
    varying = {d for d in dims if ratio.sizes[d] > 1}
    steps = ds["step"].values
    window = late_window(len(steps), late_fraction)
    diverged_all = (ds["diverged_at"] >= 0).transpose(*dims, "seed")
    rng = np.random.default_rng(seed)
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
        measured, ci = _fit.mean_ci(late, n_boot=n_boot, seed=rng)
        rows.append({"key": key, "label": member_label(key, varying), "group": member_label(key, varying, False),
                     "late": late, "measured": measured, "ci": ci,
                     "initial": r[:, 0], "peak": peak, "first_reach": first, "dip": dip, "low": low, "back": back,
                     "late_min": late_min,
                     "late_max": late_max, "diverged": diverged})
    return ratio, rows


def regime(row: dict, reach: float = REACH, tolerance: float = TOLERANCE) -> str:
    """How the member got to (or missed) the edge, in words."""
    ok = ~row["diverged"]
    n = int(ok.sum())
    if n == 0:
        return "diverged"
    init, first, late = row["initial"][ok], row["first_reach"][ok], row["late"][ok]
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
    m = float(_nan(np.nanmean, late))
    if reached.any() and abs(m - 1) <= tolerance:
        parts.append(f"then hovers at it (late ratio {m:.2f})")
    elif reached.any() and m < 1 - tolerance:
        parts.append(f"then fell below it (late ratio {m:.2f})")
    elif np.isfinite(m):
        parts.append(f"late ratio {m:.2f}")
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
        n_ok = int((~row["diverged"]).sum())
        reason = ("the tolerance covers the saw-tooth about the threshold (0.89-1.09 of it), an overshoot of a few "
                  "percent (Cohen et al.), the estimate's lag (up to ~2%) and its forward-difference error (~1e-4); "
                  f"median over steps {late_from}-{int(steps[-1])}, "
                  f"{n_ok}/{len(row['diverged'])} seeds")
        checks.append(Check(f"sharpness / threshold, {row['label']}", row["measured"], row["ci"], 1.0, TOLERANCE,
                            _fit.agrees(row["ci"], 1.0, TOLERANCE), reason))
        regimes[row["label"]] = regime(row, reach, TOLERANCE)
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
        f"{late_from}-{last}; the measured value is its mean over {n_seeds} seeds with a {N_BOOT}-replicate "
        "percentile bootstrap CI over seeds (95%). A check agrees when 1 lies within the CI widened by the "
        f"tolerance {TOLERANCE:g} (saw-tooth about the threshold, slight overshoot, estimator lag). A seed has "
        f"reached the edge when the ratio first gets to {reach:g} (for a seed that starts above the edge and falls "
        "below it, when it climbs back).",
        "",
        "Adam has no heavy-ball coefficient: its members at every value of the momentum axis repeat one run, so "
        "only the first momentum value is analysed. Momentum 0.9 is not in the default sweep: on this "
        "setup (5 seeds, lr 0.1-0.2, 1000 steps) the first catapult leaves the sharpness at about 0.5-0.7 of "
        "`3.8 / lr`, after which the loss falls smoothly (to 1e-4-6e-4 at lr 0.2) while the sharpness re-grows only "
        "slowly (late medians 0.58-0.97), so the equilibrium prediction does not apply there.",
        "",
        "| member | initial ratio | reached edge at step | late ratio per seed | late min-max | peak |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        ok = ~row["diverged"]
        if not ok.any():
            lines.append(f"| {row['label']} | diverged | | | | |")
            continue
        # a seed that started above the edge and fell below it arrives when it climbs back, as in the regime line,
        # or never
        fell = (row["initial"] >= REACH) & (row["dip"] > 0)
        first = np.where(row["back"] >= 0, row["back"], np.where(fell, -1, row["first_reach"]))[ok]
        reached = (f"{np.median(first[first >= 0]):.0f} (median, {int((first >= 0).sum())}/{int(ok.sum())})"
                   if (first >= 0).any() else "never")
        late = ", ".join(f"{v:.3f}" for v in row["late"][ok])
        lines.append(f"| {row['label']} | {np.median(row['initial'][ok]):.2f} | {reached} | {late} | "
                     f"{_nan(np.nanmin, row['late_min'][ok]):.2f}-{_nan(np.nanmax, row['late_max'][ok]):.2f} | "
                     f"{_nan(np.nanmax, row['peak'][ok]):.2f} |")
    return "\n".join(lines)


def _lr_colors(n: int):
    """One colour per learning rate, dark to mid (viridis without its pale yellow end)."""
    return plt.cm.viridis(np.linspace(0.0, 0.75, n))


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
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 4.2), squeeze=False, sharey=(name == "loss"))
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
    """Left: seed-median ``sharpness / threshold`` vs step for every member; right: late ratio vs lr with CIs."""
    lrs = ratio["lr"].values
    colors = _lr_colors(len(lrs))
    others = sorted({tuple((d, v) for d, v in r["key"].items() if d != "lr") for r in rows})
    styles = ["-", "--", ":", "-."]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    steps = ratio["step"].values
    for row in rows:
        k = int(np.flatnonzero(lrs == row["key"]["lr"])[0])
        o = others.index(tuple((d, v) for d, v in row["key"].items() if d != "lr"))
        sel = ratio.sel({d: v for d, v in row["key"].items()}).values  # [seed, step]
        curve = _nan(np.nanmedian, sel, axis=0)
        left.plot(steps, curve, color=colors[k], ls=styles[o % len(styles)], lw=1, label=row["label"])
    left.axhline(1.0, color="k", lw=1)
    left.axhspan(1 - TOLERANCE, 1 + TOLERANCE, color="0.85", zorder=0)
    left.axvline(late_from, color="0.4", ls=":", lw=1)
    left.set(xlabel="step", ylabel="sharpness / threshold (median over seeds)",
             title="all members; grey: tolerance band, dotted: late phase")
    left.set_ylim(0, min(2.0, max(1.4, left.get_ylim()[1])))
    left.legend(fontsize=6, ncol=2, loc="lower right")
    for o, other in enumerate(others):
        sub = [r for r in rows if tuple((d, v) for d, v in r["key"].items() if d != "lr") == other]
        x = np.array([r["key"]["lr"] for r in sub]) * (1 + 0.03 * (o - (len(others) - 1) / 2))
        y = np.array([r["measured"] for r in sub])
        lo = np.array([r["ci"][0] for r in sub])
        hi = np.array([r["ci"][1] for r in sub])
        err = np.nan_to_num(np.stack([np.clip(y - lo, 0, None), np.clip(hi - y, 0, None)]))
        right.errorbar(x, y, yerr=err, fmt="o" + styles[o % len(styles)], capsize=3, ms=4, lw=1,
                       label=sub[0]["group"])
        for r in sub:  # the seeds themselves
            right.plot(np.full(r["late"].shape, x[sub.index(r)]), r["late"], ".", color="0.45", ms=3, zorder=1.5)
    right.axhline(1.0, color="k", lw=1, label="prediction")
    right.axhspan(1 - TOLERANCE, 1 + TOLERANCE, color="0.85", zorder=0)
    right.set(xscale="log", xlabel="learning rate", ylabel="late sharpness / threshold",
              title="late phase: mean over seeds, 95% CI (grey dots: seeds)")
    right.set_xticks(lrs, [f"{v:g}" for v in lrs])
    right.xaxis.set_minor_formatter(plt.NullFormatter())
    lo_y = min(0.8, np.nanmin([r["measured"] for r in rows] + [1.0]) - 0.05) if rows else 0.8
    right.set_ylim(lo_y, max(1.2, np.nanmax([r["measured"] for r in rows] + [1.0]) + 0.05))
    right.legend(fontsize=7)
    return save(fig, out / "sharpness_ratio.png")


def validate(spec):
    from ..spec import SpecError

    analysis = spec.get("analysis", {})
    unknown = set(analysis) - {"late_fraction", "reach"}
    if unknown:
        raise SpecError(f"unknown spec key 'analysis.{sorted(unknown)[0]}'; edge-of-stability takes "
                        "analysis.late_fraction and analysis.reach.")
    for key in ("late_fraction", "reach"):
        v = analysis.get(key, 0.5)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (0 < v <= 1):
            raise SpecError(f"spec key 'analysis.{key}' must be a number in (0, 1], got {v!r}.")
    observables = spec.get("train", {}).get("observables", ["loss", "test_loss"])
    if "loss" not in observables or SHARPNESS not in observables:
        raise SpecError(f"spec key 'train.observables' must include 'loss' and '{SHARPNESS}' for "
                        f"edge-of-stability, got {observables!r}.")
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
    train, task = spec.get("train", {}), spec.get("task", {})
    if train.get("batch_size", 0) != 0 or task.get("n_train", 256) == 0:
        raise SpecError("spec key 'train.batch_size' must be 0 (full batch, with task.n_train > 0) for "
                        "edge-of-stability: the threshold is a statement about full-batch steps.")
    steps, every = train.get("steps"), train.get("record_every", 10)
    if steps is not None and steps // every < 3:
        raise SpecError(f"spec key 'train.record_every' ({every}) leaves fewer than 3 records after step 0 in "
                        f"{steps} steps; edge-of-stability needs a late phase to take the median over.")


EXPERIMENT = register(Experiment("edge-of-stability", "full-batch GD, heavy-ball momentum and Adam: late-phase "
                                 "(preconditioned) sharpness against the stability thresholds 2/lr, (2+2 beta)/lr "
                                 "and (2+2 beta1)/((1-beta1) lr), with progressive sharpening", DEFAULTS, QUICK,
                                 analyse, validate))
