"""``sharpness-width``: sharpness trajectories across widths under SP, muP and NTK at one learning rate.

Noci et al. (2024), "Super consistency of neural network landscapes and learning rate transfer": under muP the
sharpness follows a width-independent trajectory (including its progressive sharpening), while under the NTK
parametrization it is width-independent only at initialisation and freezes as the width grows (lazy training),
and under SP it grows with width. The experiment trains tanh MLPs of several widths in each parametrization with
full-batch GD at one learning rate, records the sharpness (:mod:`dynsim.observables`), and measures the width
exponent ``s`` of ``sharpness ~ n^s`` at the first and the last record, per parametrization: a least-squares slope
in log-log over widths of the seed-mean, with a Student-t seed-bootstrap CI (:func:`dynsim.fit.power_law`).

Predicted exponents (SGD tables of :mod:`dynsim.param`, one learning rate, MSE): the top Hessian eigenvalue is
dominated by the Gauss-Newton term, i.e. by the NTK ``sum_p |df/dw|^2`` over the trained weights.

- SP: the output layer's gradient ``phi(h)`` has ``n`` entries of order 1, and each hidden layer's ``n^2`` entries
  are of order ``1/n``, so the kernel grows as ``n``: ``s = 1`` (the reason the largest stable learning rate shrinks
  as ``1/n`` under SP). The input layer's ``n d`` entries of order ``1/n`` add an ``O(1)`` term.
- NTK: the ``n^-1/2`` multipliers make every layer's contribution ``O(1)``: ``s = 0``.
- muP: ``a = (-1/2, 0, 1/2)``, ``b = 1/2``: again ``O(1)`` per layer: ``s = 0``; and since feature learning is
  width-independent, the whole trajectory is, so ``s = 0`` late as well.

Each exponent check rules out the other law: SP's exponent is checked against 0 (a width-independent sharpness),
muP's and NTK's against SP's 1.

Model errors (:func:`finite_width_law`): each law holds as ``n -> inf``; at the swept widths its leading finite-width
correction bends the log-log slope. SP's kernel is ``A n + B`` (``A, B >= 0``: the ``Theta(n)`` layers and the
``Theta(1)`` input layer), whose local slope ``A n / (A n + B)`` is below 1 at small widths; muP's and NTK's is
``A + B n^-1/2`` (the order of a finite-width kernel's deviation from its limit). The law is fitted to the seed-mean
sharpness at the swept widths (relative least squares) and the model error is the distance of *its* least-squares
log-log slope over the same widths, the estimator of the measured exponent applied to the fitted law, from the
asymptotic exponent. A fitted correction takes up a trend of its own form, so the check then reduces to which law is
nearer: where the correction needed is as large as the distance to the competitor, the competitor falls inside the
widened interval and the verdict is "inconclusive". The forms still constrain: ``A n + B`` with ``B >= 0`` cannot be
steeper than ``n^1`` (a steeper SP slope is tested against the CI alone) nor decrease (widths in the wrong order
leave it flat, model error 1), and a slope that an ``A + B n^-1/2`` law fits badly leaves a model error short of it.
Measured at quick size: SP's fitted ``B / A`` is about 13, a slope of 0.89 over widths 32-512.

The spread across widths (the standard deviation of ``log`` of the seed-mean sharpness over widths, per step) is
drawn against the step for each parametrization, and muP's at the last record is checked against 0, with SP's law
(``std(log n)`` over the swept widths) as the competitor. Seed noise alone gives a width-independent law a positive
spread (:func:`spread_floor`, ``sqrt((K-1)/K * mean_n var(log sharpness) / S)`` from the seed variance at each of
``K`` widths with ``S`` seeds); that is the model error, so a spread beyond what the seeds scatter is found out. At
quick size muP's spread falls from 0.11 at init (floor 0.07) to 0.030 (floor 0.036), while NTK's rises from 0.11 to
0.14 (floor 0.06) and SP's stays near 0.88.

The learning rate must keep SP's widest member stable: SP's sharpness, about 67 at width 512 (quick size), grows to
about 540 at width 4096, so the full size uses lr 0.003 (``2 / lr`` = 667) and more steps for muP's sharpening to
show. Measured at full size (widths 64-4096, 4 seeds, 1500 steps; about 100 minutes on 2 CPU cores), width
exponents at init / step 1500: SP 0.95 / 0.96, muP 0.10 / 0.01, NTK 0.01 / 0.02; muP's spread falls from 0.14 to
0.016 while NTK's creeps up from 0.033 to 0.036 and SP's stays near 1.3. (The model errors fitted at that size were
not recorded with these numbers, so its verdicts are not stated here.)

Quick size (widths 32-512, 3 seeds, 300 steps at lr 0.02), exponent [CI], model error, verdict: SP init 0.891
[0.834, 0.949], 0.114, agrees within model error; SP late 0.899 [0.859, 0.940], 0.106, agrees within model error;
muP init 0.111 [-0.078, 0.301], 0.101, agrees; muP late -0.016 [-0.131, 0.098], 0.019, agrees; NTK init -0.048
[-0.303, 0.206], 0.054, agrees; NTK late -0.080 [-0.249, 0.090], 0.087, agrees; muP's late spread 0.030
[0.015, 0.070], floor 0.036, agrees within model error.
"""

from __future__ import annotations

import numpy as np
import scipy.optimize

from .. import fit as _fit
from ..plot import save, subplots, width_colors
from ._contract import Check, Experiment, Requirements
from ._report import squeeze_axes, table

PREDICTED = {"sp": 1.0, "ntk": 0.0, "mup": 0.0}
# The law each exponent check exists to rule out: the other side of the SP / (muP, NTK) divide.
COMPETING = {"sp": (0.0, "a width-independent sharpness (muP, NTK)"),
             "ntk": (1.0, "SP's sharpness ~ n"),
             "mup": (1.0, "SP's sharpness ~ n")}
N_BOOT = 500

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

REQUIRES = Requirements(
    observables=("sharpness",),
    single=("lr", "optimizer", "init_scale", "weight_decay", "momentum"),
    at_least=(("width", 3, "a two-parameter finite-width law fitted across widths must leave a residual"),
              ("seed", 2, "the CIs are bootstraps over seeds and the spread's floor a seed variance")),
    analysis={},
)


def _series(ds, param):
    """Sharpness ``[seed, width, step]`` of one parametrization."""
    da = squeeze_axes(ds["sharpness"].sel(param=param), ("optimizer", "lr", "init_scale", "weight_decay", "momentum"))
    return da.transpose("seed", "width", "step").values


def exponent(widths, values):
    """Width exponent ``s`` of ``values ~ n^s`` (``values[seed, width]``) with a bootstrap CI over seeds."""
    fit = _fit.power_law(np.asarray(widths, float), values, n_boot=N_BOOT)
    return -fit.exponent, (-fit.exponent_ci[1], -fit.exponent_ci[0])


def _log_slope(widths, values) -> float:
    """Least-squares slope of ``log values`` on ``log widths`` (the point estimate of :func:`exponent`)."""
    return float(np.polyfit(np.log(widths), np.log(values), 1)[0])


def finite_width_law(param: str, widths, means) -> tuple[tuple[float, float], float]:
    """The parametrization's finite-width law fitted to the seed-mean sharpness, and its log-log slope over ``widths``.

    .. math::

        \\text{SP:}\\ \\lambda(n) = A n + B\\ \\ (A, B \\ge 0),\\qquad
        \\text{muP, NTK:}\\ \\lambda(n) = A + B n^{-1/2}\\ \\ (A \\ge 0),

    fitted by relative least squares, :math:`\\min \\sum_k (\\lambda(n_k) / \\bar y_k - 1)^2` (linear in ``A, B``;
    every width's relative error counts equally, as in the log-space fit of :func:`exponent`). The slope is the
    ordinary least-squares slope of ``log lambda(n_k)`` on ``log n_k``: what the exponent's estimator gives on the
    law itself, e.g. for SP an average of the local slopes ``A n / (A n + B)`` over the range. Its distance from the
    asymptotic exponent (1, 0) is the model error of the measured exponent at these widths.

    Widths whose mean is not finite and positive are left out; fewer than 3 left, or a fitted law that is not
    positive at every width, give a NaN slope.

    Returns:
      ``((A, B), slope)``.
    """
    n, y = np.asarray(widths, float), np.asarray(means, float)
    ok = np.isfinite(y) & (y > 0)
    n, y = n[ok], y[ok]
    if n.size < 3:
        return (np.nan, np.nan), np.nan
    if param == "sp":
        basis = np.stack([n, np.ones_like(n)], axis=1)
        (a, b), _ = scipy.optimize.nnls(basis / y[:, None], np.ones_like(y))
    else:
        basis = np.stack([np.ones_like(n), n ** -0.5], axis=1)
        a, b = scipy.optimize.lsq_linear(basis / y[:, None], np.ones_like(y),
                                         bounds=([0.0, -np.inf], [np.inf, np.inf])).x
    law = basis @ np.array([a, b])
    if not (law > 0).all():
        return (float(a), float(b)), np.nan
    return (float(a), float(b)), _log_slope(n, law)


def spread(values):
    """Spread across widths per step: standard deviation over widths of ``log`` of the seed-mean."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.nanstd(np.log(np.nanmean(values, axis=0)), axis=0)


def spread_floor(values) -> float:
    """The spread across widths that seed noise alone gives a width-independent law, from ``values[seed, width]``.

    .. math:: \\sqrt{\\tfrac{K-1}{K}\\,\\tfrac{1}{K} \\sum_n \\operatorname{var}_s(\\log \\lambda_{s,n}) / S}

    With ``log`` of the ``S``-seed mean at each of ``K`` widths scattering independently by
    ``var_s(log lambda) / S`` (the delta method) about a common value, this is the expected root-mean-square of
    :func:`spread` (``np.std`` over widths, ``(K-1)/K`` of the variance). NaN with fewer than two seeds at a width.
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        logs = np.log(np.asarray(values, float))
    k = logs.shape[1]
    finite = np.isfinite(logs)
    s = finite.sum(axis=0)
    if (s < 2).any():
        return float("nan")
    mean = np.where(finite, logs, 0.0).sum(axis=0) / s
    var = np.where(finite, (logs - mean) ** 2, 0.0).sum(axis=0) / (s - 1)
    return float(np.sqrt((k - 1) / k * np.mean(var / s)))


def late_spread(values, seed: int = 0) -> tuple[float, tuple[float, float]]:
    """:func:`spread` at the last record and its 95% percentile-bootstrap CI over seeds."""
    rng = np.random.default_rng(seed)
    n = values.shape[0]
    boot = np.array([spread(values[rng.integers(0, n, n)])[-1] for _ in range(N_BOOT)])
    if not np.isfinite(boot).any():  # every width diverged in every seed: nothing measured
        return float(spread(values)[-1]), (float("nan"), float("nan"))
    lo, hi = np.nanpercentile(boot, [2.5, 97.5])
    return float(spread(values)[-1]), (float(lo), float(hi))


def analyse(ds, spec, out):
    widths = ds["width"].values
    steps = ds["step"].values
    checks, regimes, rows = [], {}, []
    for p in ds["param"].values:
        p = str(p)
        s = _series(ds, p)
        row = {"param": p}
        for when, k in {"init": 0, "late": -1}.items():
            measured, ci = exponent(widths, s[:, :, k])
            (a, b), law_slope = finite_width_law(p, widths, np.nanmean(s[:, :, k], axis=0))
            row[when] = (measured, ci)
            if p in PREDICTED:
                form = "A n + B" if p == "sp" else "A + B n^-1/2"
                competing, competitor = COMPETING[p]
                checks.append(Check(
                    name=f"width exponent of the sharpness, {p}, {when} (step {int(steps[k])})",
                    measured=measured, ci=ci, predicted=PREDICTED[p], competitor=competitor, competing=competing,
                    tolerance=abs(law_slope - PREDICTED[p]),
                    reason=f"finite-width law {form} fitted to the seed-mean sharpness (A = {a:.3g}, B = {b:.3g}); "
                           f"its log-log slope over widths {int(widths[0])}-{int(widths[-1])} is {law_slope:.3f}, "
                           f"whose distance from {PREDICTED[p]:g} is the model error; Student-t seed-bootstrap CI "
                           f"of the log-log slope ({N_BOOT} resamples)"))
        mean = np.nanmean(s, axis=0)
        change = (mean[:, -1] - mean[:, 0]) / mean[:, 0]
        row["change"] = change
        row["spread"] = spread(s)
        row["floor"] = np.array([spread_floor(s[:, :, k]) for k in range(s.shape[2])])
        if p == "mup":
            measured, ci = late_spread(s)
            floor = row["floor"][-1]
            checks.append(Check(
                name=f"spread of log sharpness across widths, mup, step {int(steps[-1])}", measured=measured, ci=ci,
                predicted=0.0, competitor="SP's sharpness ~ n, spread std(log n)",
                competing=float(np.std(np.log(widths.astype(float)))), tolerance=floor,
                reason=f"the spread seed noise alone gives a width-independent law, {floor:.3f}, from the seed "
                       f"variance of log sharpness at each width ({s.shape[0]} seeds); percentile seed-bootstrap CI "
                       f"({N_BOOT} resamples)"))
            row["spread_check"] = checks[-1]
        rows.append(row)
        regimes[p] = (f"sharpness ~ n^{row['init'][0]:.2f} at init, n^{row['late'][0]:.2f} at step {int(steps[-1])}; "
                      f"relative change over training {change[0]:+.2f} (width {widths[0]}) to {change[-1]:+.2f} "
                      f"(width {widths[-1]})")
    figures = [_plot(ds, rows, out)]
    return {"checks": checks, "regimes": regimes, "figures": figures,
            "report": _report(rows, widths, int(steps[-1]))}


def _report(rows, widths, last):
    body = []
    for r in rows:
        change = ", ".join(f"{c:+.2f}" for c in r["change"])
        body.append([r["param"], f"{r['init'][0]:.2f} [{r['init'][1][0]:.2f}, {r['init'][1][1]:.2f}]",
                     f"{r['late'][0]:.2f} [{r['late'][1][0]:.2f}, {r['late'][1][1]:.2f}]",
                     f"{r['spread'][0]:.3f} ({r['floor'][0]:.3f}) -> {r['spread'][-1]:.3f} ({r['floor'][-1]:.3f})",
                     change])
    lines = ["Full-batch GD at one learning rate; `sharpness` is the top Hessian eigenvalue of the training loss. "
             "Width exponents are log-log slopes over widths of the seed-mean sharpness, with a Student-t "
             "seed-bootstrap CI; the spread is the standard deviation over widths of log of the seed-mean sharpness, "
             "with (in brackets) the spread seed noise alone would give a width-independent law.", "",
             table(["param", "exponent at init", f"exponent at step {last}",
                    f"spread across widths, init -> step {last} (seed-noise floor)",
                    "relative change over training, per width"], body),
             "", f"Widths: {', '.join(str(w) for w in widths)}.", ""]
    by = {r["param"]: r for r in rows}
    text = ("Relation to learning-rate transfer (`dynsim run lr-transfer`): gradient descent is stable only while the "
            "sharpness stays below 2/lr, so the largest usable learning rate, and with it the optimal one, scales as "
            "the inverse of the sharpness. Under SP the sharpness grows as n (predicted), so the optimal learning "
            "rate shrinks as 1/n (lr-transfer's SP exponent -1). Under muP and NTK it is width-independent at "
            "initialisation (predicted), so the stable range does not move with width; but only under muP is the "
            "whole trajectory predicted to be width-independent, progressive sharpening included, so that the same "
            "learning rate meets the same landscape at every width.")
    if "mup" in by and "spread_check" in by["mup"]:
        r, c = by["mup"], by["mup"]["spread_check"]
        moved = f"muP's spread across widths went from {r['spread'][0]:.3f} at init to {r['spread'][-1]:.3f} at " \
                f"step {last} (seed-noise floor {r['floor'][-1]:.3f})"
        if c.verdict == "agrees":
            text += f" Here the trajectories collapse: {moved}, and the spread check agrees with 0."
        else:
            text += f" Here {moved}: the spread check is {c.verdict}, so this run does not show the collapse."
    if "ntk" in by:
        r = by["ntk"]
        grew = r["spread"][-1] - r["spread"][0] > r["floor"][-1]
        text += (f" Under NTK the spread went from {r['spread'][0]:.3f} to {r['spread'][-1]:.3f} (floor "
                 f"{r['floor'][-1]:.3f})")
        text += (": the trajectories move apart during training, as narrow networks still move their kernel while "
                 "wide ones are lazy, so a learning rate shared across widths there is one for a linearised model, "
                 "not for feature learning." if grew else ".")
    lines.append(text)
    return "\n".join(lines)


def _plot(ds, rows, out):
    """Sharpness vs step per width (one panel per parametrization) and the spread across widths vs step."""
    widths, steps = ds["width"].values, ds["step"].values
    colors = width_colors(len(widths))
    fig, axes = subplots(1, len(rows) + 1, figsize=(4.5 * (len(rows) + 1), 4), squeeze=False)
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
        ax.plot(steps, r["floor"], ls=":", color=f"C{j}", lw=1)
    ax.set(xlabel="step", ylabel="std over widths of log sharpness",
           title="spread across widths\n(dotted: seed-noise floor)")
    ax.legend(fontsize=7)
    return save(fig, out / "sharpness_width.png")


def validate(spec):
    """What :data:`REQUIRES` cannot say as data: the one optimizer must be plain SGD."""
    from ..spec import SpecError

    optimizers = list(spec.get("sweep", {}).get("optimizer", ["sgd"]))
    if optimizers != ["sgd"]:
        raise SpecError(f"spec key 'sweep.optimizer' must be ['sgd'] for sharpness-width (the exponents are those of "
                        f"the SGD tables), got {optimizers!r}.")


EXPERIMENT = Experiment("sharpness-width", "sharpness trajectories across widths under SP, muP and NTK: "
                                 "width exponents at init and late (1, 0, 0) and the spread across widths",
                                 DEFAULTS, QUICK, analyse, validate, requires=REQUIRES)
