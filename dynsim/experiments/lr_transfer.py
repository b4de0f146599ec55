"""``lr-transfer``: does the optimal learning rate move with width?

Sweeps width x learning rate x seed under SP, muP, NTK and mean field with SGD and with Adam, finds the optimal
learning rate of each width by interpolating the final training loss in log-lr, and fits the slope of ``log lr*``
against ``log width`` with a bootstrap CI over seeds. Theory (:func:`dynsim.theory.parametrization.lr_exponent`): 0 for
muP, NTK and mean field, -1 for SP. The report also tabulates each curve's learning-rate sensitivity (Wortsman et al.
2023; :func:`lr_sensitivity`), reported, not checked.

Metric. The default is the final training loss on a fixed set of 256 samples. Adam fits it to 1e-8-1e-7 within
150 steps, and under NTK parametrization that floor spans most of a decade of learning rates, so lr* there is weakly
determined; the report tabulates each optimum's width (decades of lr within 2x of the best loss). Two alternatives,
measured at the default size, leave SP with Adam far from its -1: the test loss (``--set
analysis.metric=test_loss``) gives -0.26 [-0.30, -0.20], and fresh batches every step (``--set task.n_train=0
--set train.batch_size=256``) -0.22 [-0.37, -0.15]; in both the loss stays within 2x of its best over 1-2 decades
of lr at every width. Within 150 steps Adam recovers from first steps far beyond the ``1/n`` edge (its second moment
grows and shrinks the steps), so the -1 law, a statement about the largest stable rate, does not pin the optimum
of a flat curve. The SGD exponents and muP's and NTK's with Adam agree under all three metrics (measured before
mean field joined the sweep; mean field trains as muP up to the abc symmetry, exactly so under SGD).
"""

from __future__ import annotations

import math

import numpy as np
import xarray as xr

from .. import executor as _executor
from .. import fit as _fit
from .. import io as _io
from .. import sensitivity as _sensitivity
from .. import spec as _spec
from ..executor import Sweep
from ..plot import log_ticks, save, subplots, width_colors
from ..theory.parametrization import lr_exponent
from ._contract import Check, Experiment, Requirements
from ._report import ci_errors, final, squeeze_axes, table
from ._runner import build, merge, spec_error

N_BOOT = 300
# The optimum is "flat" where the seed-mean final loss stays within this factor of its minimum over a decade or more
# of learning rates: lr* is then weakly determined (Adam on this realizable task converges to a loss of 1e-8-1e-7
# over a decade of rates under NTK parametrization), and the report says so.
FLAT_FACTOR = 2.0
# Learning rates tried inside a stability-edge bracket per round, and rounds: each round divides the bracket's width
# in log lr by EDGE_POINTS + 1, so three rounds of three turn the grid's third of a decade into 0.0052 decades (1.2%
# in lr), which moves an exponent fitted over a 16x width range by at most 0.004.
EDGE_POINTS = 3
EDGE_ROUNDS = 3

DEFAULTS = {
    "experiment": "lr-transfer",
    "model": {"kind": "mlp", "depth": 2, "act": "relu"},
    "task": {"d_in": 32, "n_train": 256, "n_test": 256, "teacher": "mlp", "teacher_width": 32, "noise": 0.0,
             "seed": 0},
    "train": {"steps": 150, "record_every": 25, "observables": ["loss", "test_loss"]},
    "sweep": {"width": [64, 128, 256, 512, 1024, 2048], "lr": {"logspace": [-4, 1, 16]}, "seed": [0, 1, 2],
              "param": ["sp", "mup", "ntk", "mean_field"], "optimizer": ["sgd", "adam"]},
    "analysis": {"metric": "loss", "edge_points": EDGE_POINTS, "edge_rounds": EDGE_ROUNDS},
}
QUICK = {
    "task": {"n_train": 128, "n_test": 256},
    "train": {"steps": 120, "record_every": 20},
    "sweep": {"width": [32, 64, 128, 256, 512], "lr": {"logspace": [-4, 1, 16]}},
}


def _curves(ds, metric):
    """The final ``metric`` as ``[optimizer, param, width, seed, lr]`` and the mask of learning rates computed for
    every seed of a curve ``[optimizer, param, width, lr]`` (the edge refinement adds rates to some curves only)."""
    keep = ("optimizer", "param", "width", "seed", "lr")
    values = final(ds, metric, keep=keep).transpose(*keep).values
    done = squeeze_axes(ds["diverged_at"] > -2, keep=keep).transpose(*keep).values.all(axis=3)
    return values, done


def optimal_lr(ds, metric: str = "loss", n_boot: int = N_BOOT, seed: int = 0):
    """Optimal learning rate per (optimizer, param, width) with bootstrap replicates over seeds.

    Each curve uses the learning rates computed for it (the grid, and the refined stability edge where there is
    one); :func:`dynsim.fit.lr_optimum` interpolates the seed-mean final ``metric`` in log lr. The replicates resample
    seeds, the same resample for every curve.

    Returns:
      ``(point, boot)``: ``point`` has dims ``optimizer, param, width``; ``boot`` has a leading replicate axis.
    """
    values, done = _curves(ds, metric)  # [O, P, W, S, L], [O, P, W, L]
    lrs = ds["lr"].values
    n_seeds = values.shape[3]
    idx = np.random.default_rng(seed).integers(0, n_seeds, (n_boot, n_seeds))
    point = np.full(values.shape[:3], np.nan)
    boot = np.full((n_boot,) + values.shape[:3], np.nan)
    for c in np.ndindex(*values.shape[:3]):
        k = done[c]
        if k.sum() < 3:
            continue
        curve = values[c][:, k]  # [S, K]
        point[c] = _fit.lr_optimum(lrs[k], curve.mean(axis=0))
        boot[(slice(None),) + c] = _fit.lr_optimum(lrs[k], curve[idx].mean(axis=1))
    return point, boot


def flat_decades(ds, metric: str = "loss", factor: float = FLAT_FACTOR):
    """Decades of learning rate over which the seed-mean final ``metric`` stays within ``factor`` of its minimum,
    per (optimizer, param, width): ``log10(lr_hi / lr_lo)`` of the computed rates that do."""
    values, done = _curves(ds, metric)
    curve = np.where(done, values.mean(axis=3), np.nan)
    best = np.min(np.where(np.isnan(curve), np.inf, curve), axis=-1, keepdims=True)  # inf where all diverged
    with np.errstate(invalid="ignore"):
        near = curve <= factor * best
    log_lr = np.log10(ds["lr"].values)
    hi = np.where(near, log_lr, -np.inf).max(axis=-1)
    lo = np.where(near, log_lr, np.inf).min(axis=-1)
    return np.where(near.any(axis=-1), hi - lo, np.nan)


def lr_sensitivity(ds, metric: str = "loss") -> np.ndarray:
    """Learning-rate sensitivity (:func:`dynsim.sensitivity.lr_sensitivity`, Wortsman et al. 2023) of the final
    ``metric`` per (optimizer, param, width): over the rates every curve computed (the grid, not the edge refinement
    of some curves), a diverged run counted as the loss at init, averaged over seeds."""
    values, done = _curves(ds, metric)  # [O, P, W, S, L], [O, P, W, L]
    grid = done.all(axis=(0, 1, 2))
    keep = ("optimizer", "param", "width", "seed")
    init = squeeze_axes(ds[metric].isel(step=0).isel(lr=np.flatnonzero(grid)), keep=keep + ("lr",))
    init = init.transpose(*keep, "lr").values
    return _sensitivity.lr_sensitivity(ds["lr"].values[grid], values[..., grid], init).mean(axis=-1)


def edge_brackets(ds, metric: str = "loss") -> list[tuple[str, str, int, float, float]]:
    """The curves whose optimum is the stability edge, with the bracket that holds the edge.

    A seed-mean curve's optimum is at the edge when its best computed rate is followed by one at which a seed
    diverged: the loss falls with the learning rate until the members blow up, and the grid alone would put lr* on
    its last stable point. Returns ``(optimizer, param, width, lr_stable, lr_diverged)`` per such curve.
    """
    values, done = _curves(ds, metric)
    lrs = ds["lr"].values
    out = []
    for c in np.ndindex(*values.shape[:3]):
        k = np.flatnonzero(done[c])
        mean = values[c][:, k].mean(axis=0)
        if not np.isfinite(mean).any():
            continue
        i = int(np.nanargmin(mean))
        if i + 1 < len(k) and not np.isfinite(mean[i + 1]):
            o, p, w = (ds[d].values[j] for d, j in zip(("optimizer", "param", "width"), c))
            out.append((str(o), str(p), int(w), float(lrs[k[i]]), float(lrs[k[i + 1]])))
    return out


def calibrate(model, task, sweep, opts, out, progress) -> xr.Dataset:
    """Each (optimizer, param, width)'s learning-rate scale at initialisation, for the finite-width model error.

    SGD: the stability edge of the first steps is ``2 / lambda``, with ``lambda`` the top eigenvalue of ``D H``
    (the loss Hessian scaled by the per-layer rates ``n^-c``, :mod:`dynsim.observables`), measured at init.
    Adam: its first step is sign descent, ``theta -= lr n^-c sign(g)``, and the rate at which the outputs move by
    a fixed amount is ``1 / s`` with ``s = rms(f_1 - f_0) / lr`` measured over one step at the grid's smallest rate.
    Both are computed for the first seed; returns ``scale[optimizer, param, width]`` (a learning rate, up to a
    constant factor).
    """
    one = dict(steps=1, record_every=1, progress=progress, layout="vmap", batch_size=opts["batch_size"],
               betas=opts["betas"], eps=opts["eps"])
    lr0 = min(sweep.lr)
    scales = []
    for opt in sweep.optimizer:
        sub = Sweep(width=sweep.width, lr=[lr0], seed=sweep.seed[:1], param=sweep.param, optimizer=[opt])
        if opt == "sgd":
            r = _executor.run(model, task, sub, observables=("preconditioned_sharpness",), out=out / opt, **one)
            scale = 2.0 / r["preconditioned_sharpness"].isel(step=0)
        else:
            r = _executor.run(model, task, sub, observables=("outputs",), out=out / opt, **one)
            moved = np.sqrt(((r["outputs"].isel(step=1) - r["outputs"].isel(step=0)) ** 2).mean("sample"))
            scale = lr0 / moved
        scales.append(scale.squeeze([d for d in ("lr", "seed", "init_scale", "weight_decay", "momentum")]))
    return xr.concat(scales, "optimizer").transpose("optimizer", "param", "width")


def execute(spec, out, progress) -> xr.Dataset:
    """The grid run, then the edge refinement, then the calibration; each resumes from its own folder of ``out``."""
    model, task, sweep, opts = build(spec)
    analysis = spec.get("analysis", {})
    metric = analysis.get("metric", "loss")
    try:
        parts = [_executor.run(model, task, sweep, out=out / "grid", progress=progress, spec=spec, **opts)]
        for round_ in range(analysis.get("edge_rounds", EDGE_ROUNDS)):
            for o, p, w, lo, hi in edge_brackets(merge(parts), metric):
                points = analysis.get("edge_points", EDGE_POINTS)
                fine = np.exp(np.linspace(math.log(lo), math.log(hi), points + 2)[1:-1])
                sub = Sweep(width=[w], lr=fine, seed=sweep.seed, param=[p], optimizer=[o],
                            init_scale=sweep.init_scale, weight_decay=sweep.weight_decay, momentum=sweep.momentum)
                parts.append(_executor.run(model, task, sub, out=out / "edge" / f"{round_}-{o}-{p}-{w}",
                                         progress=progress, spec=spec, **opts))
        merged = merge(parts)
        merged["lr_scale"] = calibrate(model, task, sweep, opts, out / "calibration", progress)
    except (_io.MetaMismatch, _executor.InputError) as e:
        raise spec_error(e) from None
    merged["lr_scale"].attrs["description"] = ("learning-rate scale at init: 2 / lambda_max(D H) for SGD, "
                                               "lr / rms(first step's output change) for Adam (first seed)")
    _io.write_results(merged, out / "results.nc")
    return merged


def model_error(ds, opt: str, par: str) -> tuple[float, float, float]:
    """The finite-width model error of the lr* exponent of ``(opt, par)``, with its two terms.

    1. The slope of ``log lr_scale`` against ``log width`` over the swept widths (:func:`calibrate`) is what the
       mechanism behind the asymptotic exponent gives at these widths (for SP with SGD, ``lambda_max = A n + B``
       bends it to ``-A n / (A n + B)``); its distance from the asymptotic exponent is the first term.
    2. The learning-rate scale at init does not see what training does to it (progressive sharpening, a catapult
       past ``2 / lambda_0``), whose width dependence enters at the next order: relative corrections of order
       ``n^-1/2`` to lr* (the fluctuation scale of a finite-width network around its limit). With coefficient 1
       they move the fitted exponent by ``(n_min^-1/2 - n_max^-1/2) / ln(n_max / n_min)``, the second term (0.048 over
       widths 32-512, 0.030 over 64-2048).

    Returns ``(error, calibration_slope, next_order)``.
    """
    scale = ds["lr_scale"].sel(optimizer=opt, param=par).values
    widths = ds["width"].values.astype(float)
    next_order = float((widths.min() ** -0.5 - widths.max() ** -0.5) / np.log(widths.max() / widths.min()))
    ok = np.isfinite(scale) & (scale > 0)
    if ok.sum() < 2:
        return float("nan"), float("nan"), next_order
    slope = float(np.polyfit(np.log(widths[ok]), np.log(scale[ok]), 1)[0])
    return abs(slope - lr_exponent(par, opt)) + next_order, slope, next_order


def analyse(ds, spec, out):
    metric = spec.get("analysis", {}).get("metric", "loss")
    point, boot = optimal_lr(ds, metric)
    flat = flat_decades(ds, metric)
    sens = lr_sensitivity(ds, metric)
    widths = ds["width"].values.astype(float)
    opts, params = [str(o) for o in ds["optimizer"].values], [str(p) for p in ds["param"].values]
    edges = {(o, p) for o, p, *_ in edge_brackets(ds, metric)}
    checks, regimes, fits = [], {}, {}
    for i, opt in enumerate(opts):
        for j, par in enumerate(params):
            y = np.log(point[i, j])
            rows = np.log(boot[:, i, j])
            ok = np.isfinite(y)
            predicted = lr_exponent(par, opt)
            competing = -1.0 if predicted == 0 else 0.0
            if ok.sum() >= 2:
                line = _fit.slope(np.log(widths[ok]), np.where(np.isfinite(rows[:, ok]), rows[:, ok], np.nan))
                measured, ci = line.slope, line.slope_ci
                fits[(opt, par)] = line
            else:
                measured, ci = float("nan"), (float("nan"), float("nan"))
            error, slope, next_order = model_error(ds, opt, par)
            how = ("2 / lambda_max of the rate-scaled Hessian at init" if opt == "sgd" else
                   "the rate that moves the outputs by a fixed amount in Adam's first (sign) step")
            reason = (f"model error |{slope:.2f} - ({predicted:g})| + {next_order:.3f}: the slope over these widths "
                      f"of {how}, against its asymptotic exponent, plus the n^-1/2 next-order term over these widths; "
                      f"CI: {N_BOOT}-replicate bootstrap over seeds; lr* resolved inside the lr grid at "
                      f"{int(ok.sum())}/{len(widths)} widths")
            decades = np.nanmedian(flat[i, j]) if np.isfinite(flat[i, j]).any() else np.nan  # median over widths
            if np.isfinite(decades):
                reason += (f"; the final {metric} stays within {FLAT_FACTOR:g}x of its best over {decades:.2g} "
                           "decades of lr (median over widths)")
            if (opt, par) in edges:
                reason += "; the optimum is the stability edge, located by refining the lr grid around it"
            check = Check(name=f"lr* exponent, {par} / {opt}", measured=measured, ci=ci, predicted=predicted,
                          competitor="transfer (0)" if competing == 0 else "SP's 1/width (-1)",
                          competing=competing, tolerance=error, reason=reason)
            checks.append(check)
            if not np.isfinite(measured):
                regimes[f"{par}/{opt}"] = "unresolved (optimum outside the lr grid)"
                continue
            shift = f"lr* ~ width^{measured:.2f} [{ci[0]:.2f}, {ci[1]:.2f}]"
            verdict = {"agrees": "transfers" if predicted == 0 else "shifts as 1/width",
                       "inconclusive": "cannot tell transfer from 1/width at these widths",
                       "disagrees": "neither transfers nor follows the predicted shift"}[check.verdict]
            regimes[f"{par}/{opt}"] = f"{verdict}: {shift}"
            if decades >= 1:
                regimes[f"{par}/{opt}"] += (f" (flat optimum: within {FLAT_FACTOR:g}x of the best {metric} over "
                                            f"{decades:.2g} decades of lr, so lr* is weakly determined)")
    figures = [_plot_curves(ds, metric, point, out), _plot_optimum(widths, point, boot, fits, opts, params, out)]
    report = ("The optimal learning rate is interpolated in log-lr around the best computed rate of the seed-mean "
              f"final `{metric}`. Where that rate is the last stable one (the next diverged), the optimum is the "
              "stability edge: the grid is refined between the two rates and the optimum is sought again, so the "
              "exponent is not quantised by the grid. CIs are "
              f"{N_BOOT}-replicate bootstrap percentiles over seeds (95%). The model error of each exponent is the "
              "distance between its asymptotic value and the slope, over the same widths, of the learning-rate "
              "scale at init (SGD: 2 / lambda_max of the Hessian scaled by the per-layer rates; Adam: the rate at "
              "which the first, sign-like, step moves the outputs by a fixed amount), plus a next-order term: relative "
              "corrections of order width^-1/2 to lr*, with coefficient 1, over the swept widths.\n\n"
              f"Width of the optimum: decades of lr over which the final `{metric}` stays within "
              f"{FLAT_FACTOR:g}x of its best (a decade or more: lr* is weakly determined there).\n\n"
              + table(["optimizer / param"] + [f"width {int(w)}" for w in widths],
                      [[f"{opt} / {par}"] + [f"{v:.2g}" for v in flat[i, j]]
                       for i, opt in enumerate(opts) for j, par in enumerate(params)])
              + "\n\nLearning-rate sensitivity (Wortsman et al. 2023): the mean over the lr grid of the final "
              f"`{metric}`, clipped at its value at init (a diverged run counts as that), minus its best over the "
              "grid; seed mean. 0: every rate reaches the best loss.\n\n"
              + table(["optimizer / param"] + [f"width {int(w)}" for w in widths],
                      [[f"{opt} / {par}"] + [f"{v:.3g}" for v in sens[i, j]]
                       for i, opt in enumerate(opts) for j, par in enumerate(params)]))
    return {"checks": checks, "regimes": regimes, "figures": figures, "report": report}


def _plot_curves(ds, metric, point, out):
    values, done = _curves(ds, metric)
    opts, params, widths = ds["optimizer"].values, ds["param"].values, ds["width"].values
    fig, axes = subplots(len(opts), len(params), figsize=(4 * len(params), 3.2 * len(opts)), squeeze=False)
    colors = width_colors(len(widths))
    for i, opt in enumerate(opts):
        for j, par in enumerate(params):
            ax = axes[i, j]
            for k, w in enumerate(widths):
                kept = done[i, j, k]
                ax.plot(ds["lr"].values[kept], values[i, j, k][:, kept].mean(axis=0), "o-", ms=3, color=colors[k],
                        label=f"width {w}")
                if np.isfinite(point[i, j, k]):
                    ax.axvline(point[i, j, k], color=colors[k], lw=0.6, ls=":")
            ax.set(xscale="log", yscale="log", title=f"{par} / {opt}", xlabel="learning rate",
                   ylabel=f"final {metric}")
            ax.set_ylim(top=min(ax.get_ylim()[1], 10.0))
    axes[0, -1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return save(fig, out / "loss_vs_lr.png")


def _plot_optimum(widths, point, boot, fits, opts, params, out):
    fig, axes = subplots(1, len(opts), figsize=(5.5 * len(opts), 5.0), squeeze=False)
    for i, opt in enumerate(opts):
        ax = axes[0, i]
        for j, par in enumerate(params):
            y = point[i, j]
            lo, hi = np.nanpercentile(boot[:, i, j], [2.5, 97.5], axis=0)
            # Under SGD mean field trains exactly as muP (the abc symmetry), so its points would hide under muP's:
            # each parametrization gets its own marker and a small horizontal offset, mean field open markers.
            same = par == "mean_field" and opt == "sgd" and "mup" in params
            shift = 1.07 ** (j - (len(params) - 1) / 2)
            line = ax.errorbar(widths * shift, y, yerr=ci_errors(y, lo, hi), fmt="osD^v<>"[j % 7],
                               capsize=3, mfc="none" if par == "mean_field" else None,
                               label="mean field (= muP under SGD)" if same else f"{par}")
            color = line[0].get_color()
            if (opt, par) in fits:
                fitted = fits[(opt, par)]
                ax.plot(widths, np.exp(fitted.predict(np.log(widths))), "-", color=color, lw=1,
                        label=f"{par} fit: {fitted.slope:.2f}")
            ok = np.isfinite(y)
            if ok.any():
                w0, y0 = widths[ok][0], y[ok][0]
                ax.plot(widths, y0 * (widths / w0) ** lr_exponent(par, opt), "--", color=color, lw=1, alpha=0.7,
                        label=f"{par} theory: {lr_exponent(par, opt):.0f}")
        ax.set(yscale="log", xlabel="width", ylabel="optimal learning rate", title=opt)
        log_ticks(ax, widths)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=3)  # below: off the data
    return save(fig, out / "lr_star_vs_width.png")


def validate(spec):
    metric = spec.get("analysis", {}).get("metric", "loss")
    if metric not in spec.get("train", {}).get("observables", ["loss", "test_loss"]):
        raise _spec.SpecError(f"spec key 'analysis.metric' names {metric!r}, which train.observables does not record.")


_is_int = lambda v: isinstance(v, int) and not isinstance(v, bool)
REQUIRES = Requirements(
    at_least=(("lr", 3, "each optimum is located between two neighbouring learning rates"),
              ("width", 2, "the exponent is a slope against log width"),
              ("seed", 2, "the CIs are a bootstrap over seeds")),
    analysis={"metric": (lambda v: v in ("loss", "test_loss"), "'loss' or 'test_loss'"),
              "edge_points": (lambda v: _is_int(v) and v >= 1, "a positive integer"),
              "edge_rounds": (lambda v: _is_int(v) and v >= 0, "a non-negative integer")})

EXPERIMENT = Experiment("lr-transfer", "optimal learning rate vs width under SP, muP, NTK and mean field, "
                                 "with SGD and Adam, against the parametrization's predicted exponent", DEFAULTS, QUICK,
                                 analyse, validate, execute=execute, requires=REQUIRES,
                                 required=("task.d_in", "train.steps", "sweep.width", "sweep.lr"))
