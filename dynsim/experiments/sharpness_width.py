"""``sharpness-width``: sharpness trajectories across widths under SP, muP and NTK at one learning rate.

Noci et al. (2024), "Super consistency of neural network landscapes and learning rate transfer": under muP the
sharpness follows a width-independent trajectory (including its progressive sharpening), while under the NTK
parametrization it is width-independent only at initialisation and freezes as the width grows (lazy training),
and under SP it grows with width. The experiment trains tanh MLPs of several widths in each parametrization with
full-batch GD at one learning rate, records the sharpness (:mod:`dynsim.obs_sharpness`), and measures the width
exponent ``s`` of ``sharpness ~ n^s`` at the first and the last record, per parametrization: a least-squares slope
in log-log over widths of the seed-mean, with a bootstrap CI over seeds (:func:`dynsim.fit.power_law`).

Predicted exponents (SGD tables of :mod:`dynsim.param`, one learning rate, MSE): the top Hessian eigenvalue is
dominated by the Gauss-Newton term, i.e. by the NTK ``sum_p |df/dw|^2`` over the trained weights.

- SP: the output layer's gradient ``phi(h)`` has ``n`` entries of order 1, so the kernel grows as ``n``: ``s = 1``
  (the reason the largest stable learning rate shrinks as ``1/n`` under SP).
- NTK: the ``n^-1/2`` multipliers make every layer's contribution ``O(1)``: ``s = 0``.
- muP: ``a = (-1/2, 0, 1/2)``, ``b = 1/2``: again ``O(1)`` per layer: ``s = 0``; and since feature learning is
  width-independent, the whole trajectory is, so ``s = 0`` late as well.

Tolerances: SP's kernel is ``A n + B``, whose local log-log slope ``A n / (A n + B)`` is below 1 at small widths
(0.89 measured over 32-512); 0.2 covers that. NTK and muP: the top eigenvalue of a finite-width kernel fluctuates
by ``O(n^-1/2)`` across seeds, most at the narrowest width, which tilts a slope fitted from few seeds; 0.15 covers
it.

The spread across widths (the standard deviation of ``log sharpness`` over widths, per step) is drawn against the
step for each parametrization, and muP's at the last record is checked against 0 (measured at quick size: 0.11 at
init falling to 0.03, while NTK's rises from 0.11 to 0.14 and SP's stays near 0.9).

The learning rate must keep SP's widest member stable: SP's sharpness, about 67 at width 512 (quick size), grows to
about 540 at width 4096, so the full size uses lr 0.003 (``2 / lr`` = 667) and more steps for muP's sharpening to
show. Measured at full size (widths 64-4096, 4 seeds, 1500 steps; about 100 minutes on 2 CPU cores), width
exponents at init / step 1500: SP 0.95 / 0.96, muP 0.10 / 0.01, NTK 0.01 / 0.02; muP's spread falls from 0.14 to
0.016 while NTK's creeps up from 0.033 to 0.036 and SP's stays near 1.3; all seven checks agree.
"""

from __future__ import annotations

import numpy as np

from .. import fit as _fit
from ..plot import plt, save, width_colors
from ._base import Check, Experiment, register, squeeze_axes

PREDICTED = {"sp": 1.0, "ntk": 0.0, "mup": 0.0}
TOLERANCE = {"sp": 0.2, "ntk": 0.15, "mup": 0.15}  # module docstring: finite-width bend / seed fluctuations
N_BOOT = 500
# muP's trajectory is width-independent up to O(n^-1/2) corrections, largest at the narrowest width: at width 32 the
# late sharpness sits about 5% from the others (quick size), a spread of about 0.03 in log; 0.1 is three times that
# and still far below SP's spread (about 0.9 over 32-512) or a width exponent of 0.1 over 4 octaves (0.12).
SPREAD_TOLERANCE = 0.1

DEFAULTS = {
    "experiment": "sharpness-width",
    "model": {"kind": "mlp", "depth": 3, "act": "tanh"},
    "task": {"d_in": 4, "n_train": 128, "n_test": 32, "teacher": "mlp", "teacher_width": 64, "noise": 0.0,
             "seed": 0},
    "train": {"steps": 1500, "record_every": 150, "observables": ["loss", "sharpness"]},
    "sweep": {"width": [64, 128, 256, 512, 1024, 2048, 4096], "lr": [0.003], "seed": [0, 1, 2, 3],
              "param": ["sp", "mup", "ntk"], "optimizer": ["sgd"]},
}
QUICK = {
    "train": {"steps": 300, "record_every": 50},
    "sweep": {"width": [32, 64, 128, 256, 512], "lr": [0.02], "seed": [0, 1, 2]},
}


def _series(ds, param):
    """Sharpness ``[seed, width, step]`` of one parametrization."""
    da = squeeze_axes(ds["sharpness"].sel(param=param), ("optimizer", "lr", "init_scale", "weight_decay", "momentum"))
    return da.transpose("seed", "width", "step").values


def exponent(widths, values):
    """Width exponent ``s`` of ``values ~ n^s`` (``values[seed, width]``) with a bootstrap CI over seeds."""
    fit = _fit.power_law(np.asarray(widths, float), values, n_boot=N_BOOT)
    return -fit.exponent, (-fit.exponent_ci[1], -fit.exponent_ci[0])


def spread(values):
    """Spread across widths per step: standard deviation over widths of ``log`` of the seed-mean."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.nanstd(np.log(np.nanmean(values, axis=0)), axis=0)


def late_spread(values, seed: int = 0) -> tuple[float, tuple[float, float]]:
    """:func:`spread` at the last record and its 95% percentile-bootstrap CI over seeds."""
    rng = np.random.default_rng(seed)
    n = values.shape[0]
    boot = [spread(values[rng.integers(0, n, n)])[-1] for _ in range(N_BOOT)]
    lo, hi = np.percentile(boot, [2.5, 97.5])
    return float(spread(values)[-1]), (float(lo), float(hi))


def analyse(ds, spec, out):
    widths = ds["width"].values
    steps = ds["step"].values
    checks, regimes, rows = [], {}, []
    for p in ds["param"].values:
        p = str(p)
        s = _series(ds, p)
        at = {"init": 0, "late": -1}
        row = {"param": p}
        for when, k in at.items():
            measured, ci = exponent(widths, s[:, :, k])
            row[when] = (measured, ci)
            if p in PREDICTED:
                checks.append(Check(f"width exponent of the sharpness, {p}, {when} (step {int(steps[k])})",
                                    measured, ci, PREDICTED[p], TOLERANCE[p], _fit.agrees(ci, PREDICTED[p],
                                                                                          TOLERANCE[p]),
                                    "finite-width bend of A n + B (SP) or O(n^-1/2) seed fluctuations of the top "
                                    "kernel eigenvalue (muP, NTK); bootstrap CI over seeds"))
        mean = np.nanmean(s, axis=0)
        change = (mean[:, -1] - mean[:, 0]) / mean[:, 0]
        row["change"] = change
        row["spread"] = spread(s)
        if p == "mup":
            measured, ci = late_spread(s)
            checks.append(Check(f"spread of log sharpness across widths, mup, step {int(steps[-1])}", measured, ci,
                                0.0, SPREAD_TOLERANCE, _fit.agrees(ci, 0.0, SPREAD_TOLERANCE),
                                "O(n^-1/2) finite-width deviations of the narrowest widths; bootstrap CI over seeds"))
        rows.append(row)
        regimes[p] = (f"sharpness ~ n^{row['init'][0]:.2f} at init, n^{row['late'][0]:.2f} at step {int(steps[-1])}; "
                      f"relative change over training {change[0]:+.2f} (width {widths[0]}) to {change[-1]:+.2f} "
                      f"(width {widths[-1]})")
    figures = [_plot(ds, rows, out)]
    return {"checks": checks, "regimes": regimes, "figures": figures, "report": _report(rows, widths)}


def _report(rows, widths):
    lines = ["Full-batch GD at one learning rate; `sharpness` is the top Hessian eigenvalue of the training loss. "
             "Width exponents are log-log slopes over widths of the seed-mean sharpness, with a bootstrap CI over "
             "seeds.", "",
             "| param | exponent at init | exponent late | relative change over training, per width |",
             "|---|---|---|---|"]
    for r in rows:
        change = ", ".join(f"{c:+.2f}" for c in r["change"])
        lines.append(f"| {r['param']} | {r['init'][0]:.2f} [{r['init'][1][0]:.2f}, {r['init'][1][1]:.2f}] | "
                     f"{r['late'][0]:.2f} [{r['late'][1][0]:.2f}, {r['late'][1][1]:.2f}] | {change} |")
    lines += ["", f"Widths: {', '.join(str(w) for w in widths)}.", "",
              "Relation to learning-rate transfer (`dynsim run lr-transfer`): gradient descent is stable only while "
              "the sharpness stays below 2/lr, so the largest usable learning rate, and with it the optimal one, "
              "scales as the inverse of the sharpness. Under SP the sharpness grows as n, so the optimal learning "
              "rate shrinks as 1/n (lr-transfer's SP exponent -1). Under muP and NTK it is width-independent at "
              "initialisation, so the stable range does not move with width (exponent 0); but only under muP is the "
              "whole trajectory width-independent, progressive sharpening included, so that the same learning rate "
              "meets the same landscape at every width: muP's spread across widths shrinks during training (figure, "
              "right). Under NTK the trajectories do not collapse (the spread grows during training): narrow "
              "networks still move their kernel while wide ones are lazy, so what transfers is a learning rate for "
              "a linearised model, not for feature learning."]
    return "\n".join(lines)


def _plot(ds, rows, out):
    """Sharpness vs step per width (one panel per parametrization) and the spread across widths vs step."""
    widths, steps = ds["width"].values, ds["step"].values
    colors = width_colors(len(widths))
    fig, axes = plt.subplots(1, len(rows) + 1, figsize=(4.5 * (len(rows) + 1), 4), squeeze=False)
    for j, r in enumerate(rows):
        ax = axes[0, j]
        mean = np.nanmean(_series(ds, r["param"]), axis=0)
        for i, n in enumerate(widths):
            ax.plot(steps, mean[i], color=colors[i], label=f"width {n}")
        ax.set(yscale="log", xlabel="step", ylabel="sharpness (mean over seeds)",
               title=f"{r['param']}: n^{r['init'][0]:.2f} at init, n^{r['late'][0]:.2f} late")
        ax.legend(fontsize=7)
    ax = axes[0, -1]
    for j, r in enumerate(rows):
        ax.plot(steps, r["spread"], marker="o", ms=3, color=f"C{j}", label=r["param"])
    ax.set(xlabel="step", ylabel="std over widths of log sharpness", title="spread of sharpness across widths")
    ax.legend(fontsize=7)
    return save(fig, out / "sharpness_width.png")


def validate(spec):
    from ..spec import SpecError

    sweep, train = spec.get("sweep", {}), spec.get("train", {})
    if len(sweep.get("width", [])) < 3:
        raise SpecError("spec key 'sweep.width' needs at least 3 widths for sharpness-width's exponents.")
    if len(sweep.get("lr", [])) != 1 or list(sweep.get("optimizer", ["sgd"])) != ["sgd"]:
        raise SpecError("spec keys 'sweep.lr' and 'sweep.optimizer' must be one learning rate and ['sgd'] for "
                        "sharpness-width.")
    for key in ("init_scale", "weight_decay", "momentum"):
        if len(sweep.get(key, [0])) != 1:
            raise SpecError(f"spec key 'sweep.{key}' must have one value for sharpness-width.")
    if len(sweep.get("seed", [0])) < 2:
        raise SpecError("spec key 'sweep.seed' needs at least 2 seeds for sharpness-width's bootstrap CIs.")
    if "sharpness" not in train.get("observables", []):
        raise SpecError("spec key 'train.observables' must include 'sharpness' for sharpness-width.")


EXPERIMENT = register(Experiment("sharpness-width", "sharpness trajectories across widths under SP, muP and NTK: "
                                 "width exponents at init and late (1, 0, 0) and the spread across widths",
                                 DEFAULTS, QUICK, analyse, validate))
