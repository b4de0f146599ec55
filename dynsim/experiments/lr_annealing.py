"""``lr-annealing``: predicting whole loss curves under learning-rate schedules from two of them (Tissue et al. 2024,
"Scaling Law with Learning Rate Annealing").

Random-features regression under muP (linear features of a power-law input spectrum, ``input_alpha = 1``, a linear
teacher with 8 outputs and label noise 2), trained online by SGD with heavy-ball momentum 0.98 (a fresh batch every
step) at one peak learning rate, with the schedule as a sweep axis (:func:`dynsim.optim.schedule_multipliers`:
constant, cosine, linear, step and warmup-stable-decay at several decay fractions; all schedules share one compiled
program). Annealing to zero ends about a fifth below the constant schedule: the SGD noise floor it removes. The
annealing law (:mod:`dynsim.theory.annealing`)

    L(s) = L0 + A S1(s)^-alpha - C S2(s)

is fitted (:func:`dynsim.fit.law`, Huber on log residuals) to the seed-mean loss curves of two schedules (default:
constant and ``wsd:0.3``, a constant and an annealed run as the paper fits) at the largest width, records from
``analysis.skip`` of the run on; it then predicts every record of every other schedule. The annealing momentum's
decay ``lambda`` is not fitted: ``analysis.decay = "momentum"`` sets it to the heavy-ball momentum ``beta``
(:func:`dynsim.theory.annealing.heavy_ball_decay`: an underdamped mode's second moment relaxes by ``beta`` per step at
any learning rate, so a drop of the rate pays off over ``1 / (1 - beta)`` steps). A list of decays instead lets the
fit's objective on the two fitted curves choose (held-out curves never choose it); on these curves that objective
is flat in ``lambda`` to 1.5% between 0.5 and 0.99, so the choice would be noise.

Checks (CIs: bootstrap over seeds, refitting on each resample; each against the law it rules out):

1. **Held-out curves**: the mean absolute relative error of the predicted curves of the held-out schedules, pooled,
   against 0 with a model error that is the law's own error on the curves it was fitted to plus twice the seed noise
   of the held-out mean curves relative to the constant one (the standard error over seeds of ``log(L_s /
   L_const)``, paired within a seed): a prediction cannot be closer to held-out curves than the law's form is to
   the curves it saw, nor than the noise of their means; competitor: the law without its annealing term (``C = 0``,
   ``L0 + A S1^-alpha``, fitted to the same curves), whose error is the value the check must exclude.
2. **Annealing drop**: the final loss of each held-out schedule relative to the constant one, ``1 - L_s(T) /
   L_const(T)``, averaged over the held-out schedules, measured against the law's prediction; competitor: the
   prediction of the ``C = 0`` law (an annealed schedule has less forward area, so without the annealing term it
   ends *above* the constant one).
3. **C is the training's, not the schedule's**: ``C`` fitted with another WSD curve in place of the fitted annealed
   one, over the fitted ``|C|`` (both refitted on each resample), against 1 (two negative ``C`` give -1); model
   error: the law's error on its fitted curves over the annealing term's share ``C S2(T) / L(T)`` of the annealed
   curve's final loss (the relative error of ``C`` that a relative error of the loss allows); competitor: 0 (no
   annealing term).
4. **Best WSD decay fraction**, judged by its loss: the measured final loss at the law's best fraction (its minimum
   over a fine grid, :func:`dynsim.theory.annealing.wsd_final_loss`; the measured curve interpolated linearly between
   the grid's fractions) over the grid's lowest, minus 1, against 0 with the law's error on its fitted curves;
   competitor: the same regret at the ``C = 0`` law's best, the shortest decay (most forward area). The fractions
   themselves (the measured one the vertex of a parabola through the grid's argmin) are reported: near a flat
   optimum its location is poorly determined and its loss is not.

Reported besides (after Choshen et al. 2024, "A Hitchhiker's Guide to Scaling Law Estimation"): the fitted
``alpha`` and ``C``; the error when fitting only on the first half of the two curves (intermediate checkpoints) and
predicting every full curve; and the error at the largest width when fitting on the smaller ones, with the width term
``L0(N) = E + B / N`` (muP's finite-width correction to the loss is ``O(1/N)``) and ``A, alpha, C`` shared.

Each seed is an independent draw of the task (:func:`execute`: teacher, test set and the batches of every step), so
that the seed mean averages the SGD noise the annealing term describes; members of one engine run share batches.

Measured at ``--quick`` size (widths 64 / 128 / 256, ten schedules, 3 seeds, 1000 steps of batch 32; 90 members,
about 60 s of CPU, 70-100 s on 2 shared cores): lambda = 0.98, alpha = 0.92 [0.81, 1.12], C = 0.0027 [0.0024,
0.0033]. Every check agrees. The held-out curves are predicted to 3.6% [2.8%, 5.0%] mean |relative error| (cosine
4.2%, linear 5.2%, step 4.1%, WSD 2.5-4.4%) against 16.3% without the annealing term (model error 6.2%: the law's
2.4% on its fitted curves plus twice 1.9% seed noise); the held-out schedules end 22.5% [14.5%, 28.5%] below
constant, the law predicts 20.8% and the ``C = 0`` law 21.8% *above*; ``C`` from ``wsd:0.4`` is 1.03 [0.98, 1.03]
times that from ``wsd:0.3``; the law's best WSD fraction 0.30 ends 0.14% [0.001%, 2.0%] above the grid's best
(the ``C = 0`` law's 0.1: 20.6%), though the measured optimum lies at 0.36 [0.27, 0.42]. Fitting on the first half of
the two curves predicts every full curve to 14% (the first half of ``wsd:0.3`` holds no annealing), and fitting
``E + B/N + ...`` on widths 64 and 128 predicts width 256 to 6.6% (width 64 is below ``d_in``, so its features do
not span the teacher). At the default size (6 seeds) every check agrees as well: held-out error 3.2% against 16%,
drop 22.8% [17.4%, 27.5%] against the law's 20.2%, ``C`` ratio 1.03 [1.01, 1.08] (± 0.03), regret 1.4% [0.3%, 2.5%]
(± 1.8%). Other draws of the task at quick size: ``task.seed = 7`` agrees everywhere (regret 2.2% against ± 2.4%);
``task.seed = 3`` misses two checks narrowly (the ``C`` ratio 1.06 [1.05, 1.09] against 1 ± 0.04, the regret 3.4%
[2.5%, 4.4%] against ± 2.3%). The law's best fraction is short of the measured one in every draw (0.28-0.30 against
0.36-0.43).

Where the law fails (``docs/measurements.md``): under Adam, or plain SGD, the noise left by a learning rate relaxes
at a rate that follows the rate itself (``2 eta h`` per step for plain SGD), so no constant ``lambda`` describes a
decay to 1% of the peak; an Adam-trained muP MLP (noise floor a few percent of the loss) was predicted to 1.2%,
inside the model error of the ``C = 0`` law's 2.1%, and ended 2.3% below constant where the law said 5.7%.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import numpy as np
import xarray as xr

from .. import executor as _executor
from .. import fit as _fit
from .. import io as _io
from .. import spec as _spec
from ..optim import check_schedule, schedule_multipliers
from ..plot import save, subplots
from ..theory import annealing as _theory
from ._contract import Check, Experiment, Requirements
from ._report import squeeze_axes, table
from ._runner import build, merge, spec_error

N_BOOT = 40
LEVEL = 0.95
WSD = "wsd:"

DEFAULTS = {
    "experiment": "lr-annealing",
    "model": {"kind": "random_features", "depth": 2, "act": "linear"},
    "task": {"d_in": 128, "d_out": 8, "n_train": 0, "n_test": 2048, "teacher": "linear", "noise": 2.0,
             "input_alpha": 1.0, "seed": 0},
    "train": {"steps": 1000, "record_every": 10, "batch_size": 32, "observables": ["loss"]},
    "sweep": {"width": [64, 128, 256], "schedule": ["constant", "cosine", "linear", "step", "wsd:0.1", "wsd:0.2",
                                                    "wsd:0.3", "wsd:0.4", "wsd:0.5", "wsd:0.8"],
              "lr": [0.16], "momentum": [0.98], "seed": [0, 1, 2, 3, 4, 5], "param": ["mup"], "optimizer": ["sgd"]},
    "analysis": {"fit": ["constant", "wsd:0.3"], "decay": "momentum", "skip": 0.1},
}
QUICK = {"sweep": {"seed": [0, 1, 2]}}


def execute(spec, out, progress) -> xr.Dataset:
    """One engine run per seed, each with its own draw of the task (``task.seed + seed``: teacher, test set and
    the batches of every step), resumable in ``out/seed<k>``; the runs are joined along ``seed``.

    Members of one engine run share their batches (:mod:`dynsim.tasks`), so their SGD noise is the same and would
    not average out over the seed axis; here each seed is an independent draw of the noise the law's annealing
    term describes."""
    model, task, sweep, opts = build(spec)
    parts = []
    try:
        for s in sweep.seed:
            one = dataclasses.replace(sweep, seed=(s,))
            parts.append(_executor.run(model, dataclasses.replace(task, seed=task.seed + s), one,
                                       out=out / f"seed{s}", progress=progress, spec=spec, **opts))
    except (_io.MetaMismatch, _executor.InputError, ValueError) as e:
        raise spec_error(e) from None
    ds = merge(parts)
    _io.write_results(ds, out / "results.nc")
    return ds


def curves(ds):
    """Loss ``[width, schedule, seed, record]`` (records after step 0) and the record steps."""
    keep = ("width", "schedule", "seed")
    loss = squeeze_axes(ds["loss"], keep=keep).transpose(*keep, "step")
    return np.asarray(loss.values[..., 1:], float), np.asarray(ds["step"].values[1:], int)


def areas(schedules, steps: int, lr: float, decay: float, at, warmup: int = 0):
    """``(S1, S2)`` ``[schedule, record]`` at the record steps ``at`` (after ``at`` steps: the areas of updates
    ``1 .. at``)."""
    rates = np.stack([lr * schedule_multipliers(s, steps, warmup) for s in schedules])
    s1, s2 = _theory.annealing_areas(rates, decay)
    return s1[:, at - 1], s2[:, at - 1]


class _Alt(NamedTuple):
    """``C`` fitted with a WSD curve (``name``) in place of the last fitted annealed schedule (``replaced``): the
    fitted rows ``rows`` and the fit's parameters ``theta``, the start of each bootstrap replicate's refit."""

    name: str
    c: float
    rows: list
    theta: np.ndarray
    replaced: str


def _fit_law(mean, s1, s2, rows, cols, with_c=True, start=None):
    """The annealing law (or the ``C = 0`` power law of ``S1``) fitted to ``mean[rows][:, cols]``; returns the fit
    and a function of ``(S1, S2)``. ``start``: a fit's ``theta`` to start from alone (the bootstrap's refits)."""
    sel = np.zeros(mean.shape, bool)
    sel[np.ix_(rows, cols)] = True
    if with_c:
        starts = None if start is None else np.asarray(start, float)[None, :]
        fit = _fit.law("annealing", {"S1": s1.ravel(), "S2": s2.ravel(), "loss": mean.ravel()}, select=sel.ravel(),
                       starts=starts)
        return fit, lambda a, b: fit.predict(S1=a, S2=b)
    fit = _fit.law("power", {"x": s1.ravel(), "loss": mean.ravel()}, select=sel.ravel())
    return fit, lambda a, b: fit.predict({"x": a})


def _mare(pred, mean, rows, cols):
    return float(np.mean(np.abs(pred[np.ix_(rows, cols)] / mean[np.ix_(rows, cols)] - 1)))


def measure(loss, rec, schedules, *, steps, lr, decays, fit_names, skip, warmup=0, widths=None):
    """Everything the checks read, from ``loss [width, schedule, seed, record]`` at the largest width (and, for
    the width extrapolation, the smaller ones)."""
    schedules = list(schedules)
    fit_rows = [schedules.index(s) for s in fit_names]
    held = [i for i in range(len(schedules)) if i not in fit_rows]
    cols = np.flatnonzero(rec >= skip * steps)
    top = loss[-1]  # [schedule, seed, record]
    mean = top.mean(1)
    # lambda: the fit's own objective on the fitted curves, never the held-out ones
    trials = []
    for lam in decays:
        s1, s2 = areas(schedules, steps, lr, lam, rec, warmup)
        fit, f = _fit_law(mean, s1, s2, fit_rows, cols)
        trials.append((fit.objective, lam, s1, s2, fit, f))
    _, lam, s1, s2, fit, f = min(trials, key=lambda t: t[0])
    pred = f(s1, s2)
    nofit, g = _fit_law(mean, s1, s2, fit_rows, cols, with_c=False)
    pred0 = g(s1, s2)
    # the seed noise of a held-out curve relative to the constant one: the standard error over seeds of
    # log(L_s / L_const), paired within a seed (a seed's draw of the task moves every schedule's loss alike, and
    # that common level is in the fitted curves too)
    n_seed = top.shape[1]
    ref = schedules.index("constant") if "constant" in schedules else fit_rows[0]
    paired = np.log(top[held][:, :, cols]) - np.log(top[ref][None, :, cols])
    noise = float(np.mean(paired.std(1, ddof=1) / np.sqrt(n_seed)))
    out = {"schedules": schedules, "fit_rows": fit_rows, "held": held, "cols": cols, "rec": rec, "lam": lam,
           "mean": mean, "s1": s1, "s2": s2, "fit": fit, "pred": pred, "pred0": pred0, "noise": noise,
           "objectives": {t[1]: t[0] for t in trials}}
    out["mare"] = _mare(pred, mean, held, cols)
    out["mare0"] = _mare(pred0, mean, held, cols)
    out["mare_fit"] = _mare(pred, mean, fit_rows, cols)
    out["per_schedule"] = {schedules[i]: _mare(pred, mean, [i], cols) for i in range(len(schedules))}
    out["per_schedule0"] = {schedules[i]: _mare(pred0, mean, [i], cols) for i in range(len(schedules))}
    const = schedules.index("constant") if "constant" in schedules else fit_rows[0]
    others = [i for i in held if i != const]
    out["const"], out["others"] = const, others
    out["drop"], out["drop_pred"], out["drop0"] = (_drop(L, const, others) for L in (mean, pred, pred0))
    # C from a WSD curve in place of the fitted annealed one (the first annealed fitted schedule)
    wsd = [i for i in range(len(schedules)) if schedules[i].startswith(WSD) and i not in fit_rows]
    annealed = [i for i in fit_rows if i != const]
    if wsd and annealed:
        alt_rows = [wsd[len(wsd) // 2] if i == annealed[-1] else i for i in fit_rows]
        alt, _ = _fit_law(mean, s1, s2, alt_rows, cols)
        out["alt"] = _Alt(schedules[wsd[len(wsd) // 2]], alt.params["C"], alt_rows, alt.theta, schedules[annealed[-1]])
        # the annealing term's share of the fitted annealed schedule's final loss: a relative model error e of the
        # loss is a relative error e / share of C
        out["c_share"] = float(np.mean([fit.params["C"] * s2[i, -1] / mean[i, -1] for i in annealed]))
    # the best WSD decay fraction, measured and predicted
    fr = np.array([float(s[len(WSD):]) for s in schedules if s.startswith(WSD)])
    if fr.size >= 2:
        rows = [schedules.index(s) for s in schedules if s.startswith(WSD)]
        order = np.argsort(fr)
        fr, rows = fr[order], np.asarray(rows)[order]
        fine = np.linspace(fr.min(), fr.max(), 200)
        out["wsd"] = {"fractions": fr, "rows": rows, "final": mean[rows, -1], "final_seeds": top[rows, :, -1],
                      "fine": fine, "law": _theory.wsd_final_loss(fine, steps, lr, fit.params, lam, warmup),
                      "law0": nofit.predict({"x": np.array([lr * schedule_multipliers(f"wsd:{x:g}", steps, warmup).sum()
                                                            for x in fine])})}
        out["best"] = best_fraction(fr, mean[rows, -1])
        out["best_pred"] = float(fine[np.argmin(out["wsd"]["law"])])
        out["best0"] = float(fine[np.argmin(out["wsd"]["law0"])])
        out["regret"] = regret(fr, mean[rows, -1], out["best_pred"])
        out["regret0"] = regret(fr, mean[rows, -1], out["best0"])
    # intermediate checkpoints: the first half of the fitted curves only
    half = cols[rec[cols] <= steps // 2]
    early, fe = _fit_law(mean, s1, s2, fit_rows, half)
    out["early"] = {"mare": _mare(fe(s1, s2), mean, list(range(len(schedules))), cols), "params": early.params}
    # width extrapolation: L0(N) = E + B / N, A, alpha, C shared, fitted on the smaller widths' fitted curves
    if widths is not None and len(widths) >= 3:
        out["width"] = _width_extrapolation(loss.mean(2), widths, s1, s2, fit_rows, cols)
    return out


def _width_law(x, E, B, A, alpha, C):
    return E + B / x["N"] + A * x["S1"] ** (-alpha) - C * x["S2"]


def _width_extrapolation(means, widths, s1, s2, fit_rows, cols):
    """Fit ``E + B / N + A S1^-alpha - C S2`` to the fitted schedules at every width but the largest; the mean
    absolute relative error of its prediction of every schedule's curve at the largest width."""
    widths = np.asarray(widths, float)
    n_w, n_s, n_r = means.shape
    N = np.broadcast_to(widths[:, None, None], means.shape)
    S1 = np.broadcast_to(s1[None], means.shape)
    S2 = np.broadcast_to(s2[None], means.shape)
    sel = np.zeros(means.shape, bool)
    sel[np.ix_(np.arange(n_w - 1), fit_rows, cols)] = True
    test = np.zeros(means.shape, bool)
    test[np.ix_([n_w - 1], np.arange(n_s), cols)] = True
    data = {"N": N.ravel(), "S1": S1.ravel(), "S2": S2.ravel(), "loss": means.ravel()}
    scale = float(np.median(means[:, :, cols]))
    starts = {"E": [0.5 * scale, 0.9 * scale], "B": [0.0, scale * widths[0]], "A": [scale, 10 * scale],
              "alpha": [0.2, 0.6, 1.2], "C": [0.0, scale]}
    err, fit = _fit.extrapolation_error(_width_law, data, train=sel.ravel(), test=test.ravel(),
                                        x={"N": "N", "S1": "S1", "S2": "S2"}, starts=starts, top=8)
    return {"mare": err, "params": fit.params, "pred": fit.predict(N=N[-1], S1=s1, S2=s2)}


def _boot(loss, m, n_boot=None, seed=0):
    """The bootstrap over seeds of the checked numbers at the largest width: each resample's seed-mean curves,
    the law refitted to them (from the point fit, ``lambda`` kept), its held-out error, drop, ``C``, the
    alternative ``C`` over it (:func:`c_ratio`), the best WSD decay fraction (the resample's own) and the regret of
    the law's (its point fit's fraction kept)."""
    rng = np.random.default_rng(seed)
    top = loss[-1]
    n_seed = top.shape[1]
    out = {k: [] for k in ("mare", "drop", "c", "alpha", "best", "c_ratio", "regret")}
    n_boot = N_BOOT if n_boot is None else n_boot
    held, cols, s1, s2 = m["held"], m["cols"], m["s1"], m["s2"]
    for _ in range(n_boot):
        mean = top[:, rng.integers(0, n_seed, n_seed)].mean(1)
        fit, f = _fit_law(mean, s1, s2, m["fit_rows"], cols, start=m["fit"].theta)
        pred = f(s1, s2)
        out["mare"].append(_mare(pred, mean, held, cols))
        out["drop"].append(_drop(mean, m["const"], m["others"]))
        out["c"].append(fit.params["C"])
        out["alpha"].append(fit.params["alpha"])
        if "alt" in m:
            alt, _ = _fit_law(mean, s1, s2, m["alt"].rows, cols, start=m["alt"].theta)
            out["c_ratio"].append(c_ratio(alt.params["C"], fit.params["C"]))
        if "wsd" in m:
            final = mean[m["wsd"]["rows"], -1]
            out["best"].append(best_fraction(m["wsd"]["fractions"], final))
            out["regret"].append(regret(m["wsd"]["fractions"], final, m["best_pred"]))
    return {k: np.asarray(v, float) for k, v in out.items()}


def c_ratio(c_alt, c) -> float:
    """``c_alt / |c|``, and ``-|c_alt / c|`` when ``c <= 0`` (a fitted ``C`` that is not positive fails the check
    whatever the other one's sign); infinite at ``c = 0``."""
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.float64(c_alt) / abs(np.float64(c))
    return float(r if c > 0 else -abs(r))


def best_fraction(fractions, final, log=False) -> float:
    """The WSD decay fraction of lowest final loss: the grid's argmin refined by the vertex of the parabola of log loss
    through it and its two neighbours (in ``F``, or in ``log F`` with ``log``; :func:`dynsim.fit.lr_optimum`),
    NaN at an end of the grid (the optimum is not bracketed)."""
    x = np.asarray(fractions, float)
    if x.size < 3 or np.any(np.diff(x) <= 0):
        return float("nan")  # no bracket of three distinct fractions
    best = float(_fit.lr_optimum(x if log else np.exp(x), np.asarray(final, float)))
    return best if log else float(np.log(best))


def regret(fractions, final, at) -> float:
    """How much worse the WSD decay fraction ``at`` ends than the best of the grid: ``L(at) / min L - 1``, ``L``
    the measured final loss interpolated linearly between the grid's fractions (NaN outside the grid)."""
    x, y = np.asarray(fractions, float), np.asarray(final, float)
    if not x[0] <= at <= x[-1]:
        return float("nan")
    return float(np.interp(at, x, y) / np.nanmin(y) - 1)  # NaN where the fraction's own neighbours are NaN


def _drop(L, const, others):
    """``1 - L_s(T) / L_const(T)`` averaged over the schedules ``others``."""
    return float(np.mean(1 - L[others, -1] / L[const, -1])) if others else float("nan")


def _ci(values):
    return _fit.percentile_ci(values, LEVEL)


def analyse(ds, spec, out):
    a = spec.get("analysis", {})
    train = spec["train"]
    loss, rec = curves(ds)
    schedules = [str(s) for s in ds["schedule"].values]
    widths = [int(w) for w in ds["width"].values]
    lr = float(np.asarray(ds["lr"].values).ravel()[0])
    opts = dict(steps=int(train["steps"]), lr=lr, fit_names=a.get("fit", DEFAULTS["analysis"]["fit"]),
                skip=float(a.get("skip", DEFAULTS["analysis"]["skip"])), warmup=int(train.get("warmup_steps", 0)))
    decay = a.get("decay", DEFAULTS["analysis"]["decay"])
    m = measure(loss, rec, schedules, decays=decays(ds, decay), widths=widths, **opts)
    lam_from = ("the heavy-ball momentum" if decay == "momentum" else
                "chosen by the fit's objective on the fitted curves")
    boot = _boot(loss, m)
    held = [schedules[i] for i in m["held"]]
    fitted = [schedules[i] for i in m["fit_rows"]]
    checks = [Check(
        name=f"mean |relative error| of the predicted curves of the held-out schedules ({', '.join(held)}), width "
             f"{widths[-1]}",
        measured=m["mare"], ci=_ci(boot["mare"]), predicted=0.0,
        competitor="the law without its annealing term (C = 0), fitted to the same curves",
        competing=m["mare0"], tolerance=m["mare_fit"] + 2 * m["noise"],
        reason=f"model error {m['mare_fit']:.4f} + 2 x {m['noise']:.4f}: the law's own mean |relative error| on the "
               f"curves it was fitted to ({', '.join(fitted)}), which a prediction of other curves cannot be expected "
               "to beat, plus twice the seed noise of the held-out mean curves (standard error over seeds of "
               f"log(L_s / L_const), paired within a seed, averaged over their records); lambda = {m['lam']:g} "
               f"({lam_from}); CI: {N_BOOT}-replicate bootstrap over seeds, "
               "refitting on each")]
    checks.append(Check(
        name="final-loss drop of the held-out annealed schedules relative to constant, 1 - L_s(T) / L_const(T)",
        measured=m["drop"], ci=_ci(boot["drop"]), predicted=m["drop_pred"],
        competitor="the C = 0 law's drop (less forward area, no annealing gain)", competing=m["drop0"],
        tolerance=m["mare_fit"],
        reason=f"model error {m['mare_fit']:.4f}: the law's mean |relative error| on its fitted curves, a relative "
               f"error of the loss, as is the drop; CI: {N_BOOT}-replicate bootstrap over seeds"))
    if "alt" in m:
        name, c_alt, replaced = m["alt"].name, m["alt"].c, m["alt"].replaced
        checks.append(Check(
            name=f"annealing coefficient C fitted with {name} in place of {replaced}, over |C| fitted with "
                 f"{replaced} (sign and size)", measured=c_ratio(c_alt, m["fit"].params["C"]),
            ci=_ci(boot["c_ratio"]), predicted=1.0, competitor="no annealing term (C = 0)", competing=0.0,
            tolerance=m["mare_fit"] / abs(m["c_share"]) if m["c_share"] else math.inf,
            reason=f"predicted: 1 (C is a property of the training, not of the schedule it is read from, and "
                   "positive: annealing lowers the loss; a fitted C <= 0 gives minus the ratio's size); model "
                   f"error {m['mare_fit']:.4f} / {m['c_share']:.3f}: the law's mean |relative error| on its fitted "
                   f"curves, over the annealing term's share C S2(T) / L(T) of {replaced}'s final loss (the "
                   f"relative error of C it allows); CI: {N_BOOT}-replicate bootstrap over seeds, refitting both "
                   "laws on each resample"))
    if "best" in m:
        checks.append(Check(
            name="final loss of the law's best WSD decay fraction over the measured best's, minus 1 (regret)",
            measured=m["regret"], ci=_ci(boot["regret"]), predicted=0.0,
            competitor="the regret of the C = 0 law's best (the shortest decay)", competing=m["regret0"],
            tolerance=m["mare_fit"],
            reason=f"measured: the seed-mean final loss at the law's best fraction {m['best_pred']:.3g} (its "
                   "minimum over a fine grid), interpolated linearly between the grid's fractions, over the grid's "
                   f"lowest; model error {m['mare_fit']:.4f}: the law's mean |relative error| on its fitted curves "
                   "(a choice within the law's own error of the best is as good as the law can tell); CI: "
                   f"{N_BOOT}-replicate bootstrap over seeds (the law's fraction kept); the fractions themselves "
                   "are in the regimes: near a flat optimum its location is poorly determined, its loss is not"))
    p = m["fit"].params
    regimes = {
        "fitted law": f"L0 = {p['L0']:.4g}, A = {p['A']:.4g}, alpha = {p['alpha']:.3g} {_fmt_ci(boot, 'alpha', m)}, "
                      f"C = {p['C']:.4g} {_fmt_ci(boot, 'c', m)}, lambda = {m['lam']:g} (from {list(m['objectives'])})",
        "intermediate checkpoints": f"fit on the first half of {', '.join(fitted)}: mean |relative error| "
                                    f"{m['early']['mare']:.4f} over every full curve (all data: "
                                    f"{np.mean(list(m['per_schedule'].values())):.4f})",
    }
    if "best" in m:
        regimes["best WSD decay fraction"] = (f"measured {m['best']:.3g} {_fmt_ci(boot, 'best', m)} (the grid's "
                                              f"argmin refined by a parabola), the law's {m['best_pred']:.3g}, the "
                                              f"C = 0 law's {m['best0']:.3g}")
    if "width" in m:
        w = m["width"]
        regimes["width extrapolation"] = (
            f"E + B/N + A S1^-alpha - C S2 fitted on widths {widths[:-1]} ({', '.join(fitted)}): mean |relative "
            f"error| {w['mare']:.4f} over every schedule at width {widths[-1]} (E = {w['params']['E']:.4g}, "
            f"B = {w['params']['B']:.4g})")
    figures = [_plot_curves(m, out, widths[-1])]
    if "wsd" in m:
        figures.append(_plot_best(m, out))
    rows = [[s, "fit" if i in m["fit_rows"] else "held out", m["per_schedule"][s], m["per_schedule0"][s],
             float(m["mean"][i, -1]), float(m["pred"][i, -1])] for i, s in enumerate(schedules)]
    report = ("Mean |relative error| of the predicted curve per schedule (records from "
              f"{opts['skip']:g} of the run on, width {widths[-1]}), with the law and without its annealing term, "
              "and the final losses.\n\n"
              + table(["schedule", "role", "error (law)", "error (C = 0)", "final loss", "predicted"], rows))
    return {"checks": checks, "regimes": regimes, "figures": figures, "report": report}


def decays(ds, value) -> list[float]:
    """The annealing momentum decays ``lambda`` the fit chooses from: ``analysis.decay`` as given, or, for
    ``"momentum"``, the one the heavy-ball momentum of the run sets
    (:func:`dynsim.theory.annealing.heavy_ball_decay`)."""
    if value != "momentum":
        return list(value)
    optimizer = [str(o) for o in np.ravel(ds["optimizer"].values)]
    beta = [float(b) for b in np.ravel(ds["momentum"].values)] if "momentum" in ds.coords else [0.0]
    return [_theory.heavy_ball_decay(_momentum(optimizer, beta))]


def _momentum(optimizer, momentum) -> float:
    """The one heavy-ball momentum of an SGD sweep, which ``analysis.decay = "momentum"`` reads; a one-sentence
    error for anything else."""
    if list(optimizer) != ["sgd"] or len(momentum) != 1 or not 0 < momentum[0] < 1:
        raise _spec.SpecError("spec key 'analysis.decay' = 'momentum' takes lambda from SGD's heavy-ball momentum, "
                              f"and this run has optimizer {list(optimizer)} with momentum {list(momentum)}: give a "
                              "list of decays to choose from instead.")
    return float(momentum[0])


def _fmt_ci(boot, key, m):
    lo, hi = _ci(boot[key])
    return f"[{lo:.3g}, {hi:.3g}]"


def _plot_curves(m, out, width):
    """Each schedule's seed-mean curve from ``skip`` on, the law's and the ``C = 0`` law's prediction, and the
    constant schedule's curve for reference (grey)."""
    n = len(m["schedules"])
    cols = 4
    rows = math.ceil(n / cols)
    fig, axes = subplots(rows, cols, figsize=(3.6 * cols, 2.8 * rows), squeeze=False, sharey=True)
    at = m["cols"]
    x = m["rec"][at]
    const = m["const"]
    for i, name in enumerate(m["schedules"]):
        ax = axes[i // cols, i % cols]
        ax.plot(x, m["mean"][const, at], color="0.75", lw=1.0, label="constant (measured)")
        ax.plot(x, m["mean"][i, at], "k-", lw=1.2, label="measured (seed mean)")
        ax.plot(x, m["pred"][i, at], "C0--", lw=1.2, label="annealing law")
        ax.plot(x, m["pred0"][i, at], "C3:", lw=1.0, label="C = 0")
        role = "fitted" if i in m["fit_rows"] else "held out"
        ax.set(title=f"{name} ({role})", xlabel="step")
    lo, hi = np.nanmin(m["mean"][:, at]), np.nanpercentile(m["mean"][:, at], 90)
    axes[0, 0].set_ylim(lo - 0.1 * (hi - lo), hi)
    axes[0, 0].set_ylabel(f"loss, width {width}")
    axes[0, 0].legend(fontsize=7)
    for j in range(n, rows * cols):
        axes[j // cols, j % cols].axis("off")
    return save(fig, out / "curves.png")


def _plot_best(m, out):
    w = m["wsd"]
    fig, axes = subplots(1, 1, figsize=(5.2, 3.8), squeeze=False)
    ax = axes[0, 0]
    err = w["final_seeds"].std(1, ddof=1) / np.sqrt(w["final_seeds"].shape[1])
    ax.errorbar(w["fractions"], w["final"], yerr=err, fmt="ko", label="measured (seed mean, standard error)")
    ax.plot(w["fine"], w["law"], "C0-", label="annealing law")
    ax.plot(w["fine"], w["law0"], "C3:", label="C = 0")
    ax.axvline(m["best_pred"], color="C0", lw=0.8)
    ax.set(xlabel="WSD decay fraction", ylabel="final loss", title="best decay fraction")
    ax.legend(fontsize=7)
    return save(fig, out / "best_decay.png")


def validate(spec):
    sweep = spec.get("sweep", {})
    names = sweep.get("schedule", ["constant"])
    a = spec.get("analysis", {})
    fitted = a.get("fit", DEFAULTS["analysis"]["fit"])
    for s in fitted:
        if s not in names:
            raise _spec.SpecError(f"spec key 'analysis.fit' names {s!r}, which is not in 'sweep.schedule' {names}.")
    if a.get("decay", DEFAULTS["analysis"]["decay"]) == "momentum":
        _momentum(sweep.get("optimizer", ["sgd"]), sweep.get("momentum", [0.0]))
    if len(names) - len(fitted) < 1:
        raise _spec.SpecError("spec key 'sweep.schedule' needs a schedule beyond those of 'analysis.fit' to predict.")
    if len(sweep.get("lr", [])) != 1:
        raise _spec.SpecError("spec key 'sweep.lr' must hold one value (the peak learning rate of every schedule) "
                              "for the lr-annealing analysis.")
    if spec.get("train", {}).get("steps", 0) // spec.get("train", {}).get("record_every", 10) < 20:
        raise _spec.SpecError("spec keys 'train.steps' / 'train.record_every' must give at least 20 records, the "
                              "curves the law is fitted to.")


def _names_ok(v):
    if not (isinstance(v, list) and len(v) == 2 and len(set(v)) == 2):
        return False
    try:
        return all(check_schedule(s) for s in v)
    except ValueError:
        return False


REQUIRES = Requirements(
    observables=("loss",),
    single=("lr", "param", "optimizer", "init_scale", "weight_decay", "momentum"),
    at_least=(("schedule", 3, "two schedules are fitted and at least one is predicted"),
              ("seed", 2, "the CIs are a bootstrap over seeds")),
    analysis={"fit": (_names_ok, "two different schedule names of sweep.schedule"),
              "decay": (lambda v: v == "momentum" or (isinstance(v, list) and v and all(
                  isinstance(x, (int, float)) and not isinstance(x, bool) and 0 <= x < 1 for x in v)),
                        "'momentum' (lambda = the heavy-ball momentum of sgd) or a list of numbers in [0, 1) (the "
                        "annealing momentum's decays lambda to choose from)"),
              "skip": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < 0.5,
                       "a number in [0, 0.5) (the fraction of the run left out of the fit)")})

EXPERIMENT = Experiment(
    "lr-annealing", "whole loss curves under lr schedules (constant, cosine, linear, step, WSD) predicted from two by "
    "L0 + A S1^-alpha - C S2, and the best WSD decay fraction (Tissue et al. 2024, 'Scaling Law with Learning Rate "
    "Annealing')",
    DEFAULTS, QUICK, analyse, validate, execute=execute, requires=REQUIRES,
    required=("task.d_in", "train.steps", "sweep.width", "sweep.lr", "sweep.schedule"))
