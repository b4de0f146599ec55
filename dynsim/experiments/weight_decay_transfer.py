"""``weight-decay-transfer``: AdamW's steady state across widths, and the width scaling of weight decay that makes
the optimal ``(lr, wd)`` transfer (Fan et al. 2025, "Robust layerwise scaling rules by proper weight decay tuning").

A depth-3 MLP whose hidden pre-activations are normalised (``model.norm``, so every matrix but the readout feeds a
scale-invariant block) trains with AdamW under muP at several widths, long enough for the decayed hidden ``n x n``
matrix to forget its init (``steps >> 1 / (lr_hidden * wd)``, :func:`dynsim.theory.weight_decay.equilibrium_steps`).
Only that matrix is decayed (``model.decay = "hidden"``): the input and readout layers are vector-like, and the
paper leaves them undecayed. Weight decay is swept in the units of a rule ``wd = wd_0 * (n / n_0)^p``
(``analysis.rules``: width^0, width^0.5, width^1; ``n_0`` the smallest width), ``sweep.weight_decay`` holding the
``wd_0`` grid; each width runs the union of the rules' coefficients once.

Claims and checks:

1. The steady-state top singular value of the hidden matrix scales as ``sqrt(lr_h / wd)`` (``lr_h = lr * n^-c``,
   the matrix's own rate), against the competing fixed point of a persistent update, ``W = -u / wd``, which has no
   ``lr`` and ``1 / wd``: two checks, the exponents ``a`` of ``lr_h`` and ``b`` of ``1 / wd``
   (:func:`dynsim.theory.weight_decay.top_singular_value`).
2. ``sigma_max / sqrt(lr_h / wd)`` grows as ``n^w`` with ``w = 0.75``, as Fan et al. report, against ``n^0.5``
   (updates uncorrelated from step to step sum to a random matrix) and ``n^1`` (updates that keep one direction sum
   to a rank-one one): two checks.
3. The width scaling of weight decay that transfers the optimum follows from the measured steady state:
   ``p* = (w + a e) / b`` with ``lr_h ∝ n^e`` (:func:`dynsim.theory.weight_decay.wd_exponent`, the rule that keeps
   ``sigma_max`` and the relative spectral step the same at every width; ``2 w - 1`` at ``a = b = 1/2``, the paper's
   ``sqrt(n)`` at ``w = 0.75``). One check per rule ``p``: the width exponent of the optimal ``wd_0``, predicted
   ``p* - p`` (:func:`dynsim.theory.weight_decay.optimum_exponent`), against the competing law that this rule
   transfers (0), or, for the rule nearest ``p*``, that the optimum follows the next nearest rule instead. The
   optimum is that of the loss averaged over the last :data:`STEADY_WINDOW` of training, at the best learning rate.

Measured (``--quick``: widths 32-256, 3 learning rates, 7 ``wd_0`` under 3 rules (7, 9, 11 and 13 coefficients
per width), 2 seeds: 240 members, 1500 steps of batch 8 on fresh teacher samples): this toy does **not**
reproduce the paper's steady state. The 104 steady points give ``sigma_max ∝ lr_h^0.32 wd^-0.67 n^0.97`` (CIs
[0.312, 0.319], [0.668, 0.670], [0.968, 0.974]; model errors 0.006, 0.016, 0.003): between the square-root law and
the fixed point of a persistent update in ``lr_h`` and ``wd``, and at the rank-one competitor's width exponent, so
the four singular-value checks disagree. The rule these exponents predict is ``p* = 0.98`` (± 0.05 from its CI and the
exponents' model errors, ± 0.10 with the ``n^-1/2`` corrections): ``wd ∝ n`` (``lr * wd`` fixed in muP's units), not the
paper's ``sqrt(n)``. Whether it transfers is not resolved: the steady loss falls toward the smallest ``lr_h * wd``
of the grid at every width (the least rotation of the hidden matrix; members with less decay than the grid's have
not reached the steady state within the budget), so no ``wd_0*`` lies inside the grid and the three transfer
checks are inconclusive. A harder task (``d_in`` 32, teacher width 64) puts the learning-rate optimum inside the
grid, but the loss at that rate still rises from the smallest ``wd`` on. ``docs/measurements.md`` has the
reproduction.

The singular-value exponents do not move when only members with 8, 12 or 20 decay times of training enter the fit
(a 900-step run at widths 32-128 with label noise 3: ``a`` 0.29, 0.29, 0.24; ``b`` 0.61, 0.63, 0.68; ``w`` 0.89,
0.90, 0.90), so they are not a remnant of the initial weights (whose top singular value is 1.2-35 times the steady
one, median 11, at ``--quick``). The same exponents came out with label noise 3 (``lr_h^0.28 wd^-0.61 n^0.89``),
with a linear teacher and noise 0.5 (``lr_h^0.30 wd^-0.66 n^0.96``), and with depth 4, tanh and LayerNorm,
measuring the hidden matrix that does not feed the readout (``lr_h^0.32 wd^-0.64 n^1.00``); earlier variants with
16 outputs gave width exponents 1.0-1.2. Where ``a != b`` comes from: Adam's momentum at
``x = lr_h wd`` comparable to ``1 - beta_1`` (the grid reaches ``x = 0.32`` against ``1 - beta_1 = 0.1``). The
gradient of a matrix feeding a normalisation is orthogonal to it (cosine ~1e-10), but Adam's averaged update is
not: it points against ``W`` (cosine -0.08 to -0.74 in a replica of one member), and the equilibrium of rotation
(Kosson et al. 2024, "Rotational equilibrium"), ``||W||_F^2 = lr_h E||u||_F^2 / (2 wd)``, holds only for
``x << 1 - beta_1``. The measured ``||W||_F / sqrt(lr_h n^2 / (2 wd))`` (observable ``frobenius_norm``) is 1.01 at
``x < 0.01``, 0.87 at ``x ~ 0.03`` and 0.56 at ``x = 0.1 - 0.32``; with ``train.betas = [0.0, 0.999]`` (no first
moment) ``sigma_max ∝ lr_h^0.49 wd^-0.52 n^1.00``, and the two singular-value checks of ``lr_h`` and ``wd`` agree
(the width ones still disagree). ``w ≈ 1`` is the rank-one limit: ``sigma_max / ||W||_F`` is 0.70-0.86 at every
width, ``lr`` and ``wd`` (stable rank about 1.8), and ``||W||_F ∝ n``. A task with high-rank gradients (``d_in``
256, 64 outputs, teacher width 256, batch 64) gives width exponents 0.66-0.96 depending on the grid, never a stable
0.75; extending the ``wd_0`` grid down to 0.25 puts loss minima inside it, on a profile flat within the seed noise
(3-5%) and where members have had less than one decay time, so they move with the seeds (docs/measurements.md).
"""

from __future__ import annotations

import dataclasses
import math
import warnings

import numpy as np
import xarray as xr

from .. import executor as _executor
from .. import fit as _fit
from .. import io as _io
from .. import param as _param
from .. import spec as _spec
from ..plot import log_ticks, save, subplots, width_colors
from ..theory import weight_decay as _theory
from ._contract import Check, Experiment, Requirements
from ._report import ci_errors, squeeze_axes, table
from ._runner import build, merge, spec_error

N_BOOT = 300
# A member is in the steady state when its steps cover this many decay time constants 1 / (lr_h * wd): its initial
# weights are then down by e^-5 < 1% (theory.weight_decay.equilibrium_steps).
STEADY_TIMES = 5.0
# The singular value is averaged over the records in the last STEADY_WINDOW of training (the steady state
# fluctuates from step to step; the average is its level).
STEADY_WINDOW = 0.25

# The wd_0 grid is geometric with ratio sqrt(2) and the widths double, so every rule's coefficients at every width
# fall on a common grid: each width runs its grid shifted by 0, 1 and 2 points (the union) rather than three grids.
DEFAULTS = {
    "experiment": "weight-decay-transfer",
    "model": {"kind": "mlp", "depth": 3, "act": "relu", "norm": "rms", "decay": "hidden"},
    "task": {"d_in": 16, "n_train": 0, "n_test": 256, "teacher": "mlp", "teacher_width": 16, "noise": 0.0,
             "seed": 0},
    "train": {"steps": 3000, "record_every": 150, "batch_size": 8,
              "observables": ["loss", "test_loss", "top_singular_value"]},
    "sweep": {"width": [32, 64, 128, 256, 512], "lr": {"logspace": [-1.5, -0.5, 3]}, "seed": [0, 1],
              "param": ["mup"], "optimizer": ["adamw"], "weight_decay": {"geomspace": [4, 32, 7]}},
    "analysis": {"rules": list(_theory.RULES), "metric": "test_loss"},
}
QUICK = {
    "train": {"steps": 1500, "record_every": 100},
    "sweep": {"width": [32, 64, 128, 256]},
}


def _rule_wd(wd0, width, base, rule):
    return np.asarray(wd0, float) * (np.asarray(width, float) / base) ** rule


def _raw_grid(wd0s, width, base, rules) -> list[float]:
    """The weight-decay coefficients width ``width`` runs: every rule's ``wd_0 (n / n_0)^p``, once each (rules that
    give one coefficient, to 12 digits, share its members)."""
    values = {}
    for p in rules:
        for v in _rule_wd(wd0s, width, base, p):
            values.setdefault(float(f"{v:.12g}"), float(v))
    return sorted(values)


def execute(spec, out, progress) -> xr.Dataset:
    """One engine run per width over that width's coefficients (:func:`_raw_grid`); each resumes from its folder."""
    model, task, sweep, opts = build(spec)
    rules = spec["analysis"].get("rules", list(_theory.RULES))
    base = min(sweep.width)
    parts = []
    try:
        for n in sweep.width:
            # Every other axis as the spec sweeps it.
            sub = dataclasses.replace(sweep, width=(n,), weight_decay=tuple(_raw_grid(sweep.weight_decay, n, base,
                                                                                       rules)))
            parts.append(_executor.run(model, task, sub, out=out / f"width-{n}", progress=progress, spec=spec,
                                       **opts))
    except (_io.MetaMismatch, _executor.InputError) as e:
        raise spec_error(e) from None
    merged = merge(parts)
    _io.write_results(merged, out / "results.nc")
    return merged


def hidden_lr(ds, spec) -> xr.DataArray:
    """The hidden matrix's learning rate ``lr * n^-c`` of every member, ``c`` the parametrization's hidden-layer
    exponent for the optimizer."""
    par = _param.get(str(ds["param"].values[0]))
    c = par.table(str(ds["optimizer"].values[0]))[2, 1]
    return ds["lr"] * ds["width"].astype(float) ** (-c)


def steady_sv(ds, spec) -> tuple[xr.DataArray, xr.DataArray]:
    """Each member's steady-state top singular value (the mean over the records of the last
    :data:`STEADY_WINDOW` of training) and whether it is in the steady state (``STEADY_TIMES`` decay times, not
    diverged). Dims ``width, lr, weight_decay, seed``."""
    sv = squeeze_axes(ds["top_singular_value"].isel(hidden_layer=0), keep=("width", "lr", "weight_decay", "seed"))
    steps = ds["step"].values
    window = steps >= steps[-1] * (1.0 - STEADY_WINDOW)
    level = sv.isel(step=np.flatnonzero(window)).mean("step")
    times = steps[-1] * hidden_lr(ds, spec) * ds["weight_decay"]
    alive = squeeze_axes(ds["diverged_at"], keep=("width", "lr", "weight_decay", "seed")) == -1
    ok = alive & (times >= STEADY_TIMES) & np.isfinite(level)
    return level.transpose("width", "lr", "weight_decay", "seed"), ok.transpose("width", "lr", "weight_decay", "seed")


def sv_fit(ds, spec):
    """Least squares of ``log sigma = a log lr_h - b log wd + w log n + const`` over the steady members' seed
    means, with a bootstrap over seeds.

    Returns ``(point, boot, spread, n_steady)``: ``point`` the exponents ``{"a", "b", "w"}``, ``boot`` their
    ``[N_BOOT, 3]`` replicates, and ``spread`` the model error of each: for ``a`` and ``b`` half the range of the
    exponents fitted at each width alone, for ``w`` half the difference of the exponents fitted over the lower and
    upper halves of the widths (how far each exponent drifts over the swept sizes).
    """
    level, ok = steady_sv(ds, spec)
    lr_h = hidden_lr(ds, spec).transpose("width", "lr").values
    wd = ds["weight_decay"].values
    widths = ds["width"].values.astype(float)
    values = np.where(ok.values, level.values, np.nan)  # [W, L, D, S]
    n_seeds = values.shape[-1]
    idx = np.random.default_rng(0).integers(0, n_seeds, (N_BOOT, n_seeds))
    grid = np.broadcast_arrays(np.log(lr_h)[:, :, None], np.log(wd)[None, None, :], np.log(widths)[:, None, None])
    rows = np.arange(len(widths))[:, None, None] + np.zeros(values.shape[:3], int)

    def solve(mean, use=True, width=True):
        y = np.log(mean)
        use = np.isfinite(y) & use
        cols = [grid[0][use], -grid[1][use]] + ([grid[2][use]] if width else []) + [np.ones(use.sum())]
        x = np.stack(cols, axis=1)
        if use.sum() < x.shape[1] + 2 or np.linalg.matrix_rank(x) < x.shape[1]:
            return np.full(3, np.nan)
        coef = np.linalg.lstsq(x, y[use], rcond=None)[0]
        return np.append(coef[:2], coef[2] if width else np.nan)

    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # nanmean of an all-NaN slice: a point no seed reached
        mean = np.nanmean(values, axis=-1)
        point = solve(mean)
        boot = np.stack([solve(np.nanmean(values[..., i], axis=-1)) for i in idx])
        per_width = np.stack([solve(mean, rows == k, width=False) for k in range(len(widths))])
        half = max(len(widths) // 2, 2)
        low, high = solve(mean, rows < half)[2], solve(mean, rows >= len(widths) - half)[2]
    spread = [np.nanmax(per_width[:, j]) - np.nanmin(per_width[:, j]) if np.isfinite(per_width[:, j]).sum() >= 2
              else np.nan for j in range(2)]
    spread = np.array(spread + [abs(high - low)]) / 2
    return dict(zip("abw", point)), boot, spread, int(np.isfinite(mean).sum())


def steady_metric(ds, metric: str) -> xr.DataArray:
    """``metric`` averaged over the records in the last :data:`STEADY_WINDOW` of training, dims ``width, lr,
    weight_decay, seed`` (NaN where a member diverged)."""
    values = squeeze_axes(ds[metric], keep=("width", "lr", "weight_decay", "seed", "step"))
    steps = ds["step"].values
    window = np.flatnonzero(steps >= steps[-1] * (1.0 - STEADY_WINDOW))
    return values.isel(step=window).mean("step").transpose("width", "lr", "weight_decay", "seed")


def optimum(ds, spec, rule: float, metric: str):
    """The optimal ``wd_0`` per width under the rule ``wd = wd_0 (n / n_0)^rule``, with bootstrap replicates.

    At each width and ``wd_0`` the loss is the seed mean of ``metric`` averaged over the records in the last
    :data:`STEADY_WINDOW` of training (a single record of a noisy steady state fluctuates by tens of percent),
    at the best learning rate (the profile over ``lr``); :func:`dynsim.fit.lr_optimum` interpolates its minimum
    in ``log wd_0`` (NaN where the minimum sits at an end of the grid). Returns ``(point [W], boot [N_BOOT, W],
    wd0 grid)``.
    """
    widths = ds["width"].values
    base = float(widths.min())
    wd0s = np.asarray(spec["sweep"]["weight_decay"], float)
    values = steady_metric(ds, metric)
    raw = ds["weight_decay"].values
    n_seeds = values.sizes["seed"]
    idx = np.random.default_rng(1).integers(0, n_seeds, (N_BOOT, n_seeds))
    point, boot = np.full(len(widths), np.nan), np.full((N_BOOT, len(widths)), np.nan)
    for k, n in enumerate(widths):
        want = _rule_wd(wd0s, n, base, rule)
        cols = [int(np.argmin(np.abs(np.log(raw) - np.log(w)))) for w in want]
        curve = values.isel(width=k).values[:, cols, :]  # [L, D, S]
        curve = np.where(np.isfinite(curve), curve, np.inf)
        with np.errstate(invalid="ignore"):
            point[k] = _fit.lr_optimum(wd0s, np.min(curve.mean(axis=-1), axis=0))
            boot[:, k] = _fit.lr_optimum(wd0s, np.min(curve[..., idx].mean(axis=-1), axis=0).T)  # [boot, D]
    return point, boot, wd0s


def _rule_from(a, b, w, e):
    """The rule ``p*`` the exponents ``sigma_max ∝ lr_h^a wd^-b n^w`` predict
    (:func:`dynsim.theory.weight_decay.wd_exponent`), elementwise over replicates; NaN where it is undefined (no
    fit, or ``sigma_max`` not falling with ``wd``)."""
    def one(a, b, w):
        try:
            return _theory.wd_exponent(float(w), e, float(a), float(b))
        except ValueError:
            return math.nan

    out = np.vectorize(one, otypes=[float])(a, b, w)
    return float(out) if out.ndim == 0 else out


def _next_order(widths) -> float:
    """The exponent error of relative ``n^-1/2`` corrections with coefficient 1 over the swept widths (as in
    ``lr-transfer``): ``(n_min^-1/2 - n_max^-1/2) / ln(n_max / n_min)``."""
    widths = np.asarray(widths, float)
    return float((widths.min() ** -0.5 - widths.max() ** -0.5) / np.log(widths.max() / widths.min()))


def analyse(ds, spec, out):
    analysis = spec.get("analysis", {})
    metric = analysis.get("metric", "test_loss")
    rules = [float(p) for p in analysis.get("rules", _theory.RULES)]
    widths = ds["width"].values.astype(float)
    point, boot, spread, n_steady = sv_fit(ds, spec)
    ci = lambda j: _fit.percentile_ci(boot[:, j])
    steady = (f"{n_steady} steady (width, lr, wd) points: >= {STEADY_TIMES:g} decay times 1 / (lr_h wd) of "
              f"training, sigma_max averaged over the last {STEADY_WINDOW:.0%} of it; CI: {N_BOOT}-replicate "
              "bootstrap over seeds")
    per_width = "model error: half the range of the exponent fitted at each width alone; "
    checks = [
        Check(name="sigma_max exponent of lr_h (fixed wd, n)", measured=point["a"], ci=ci(0), predicted=0.5,
              competitor="fixed point of a persistent update W = -u / wd (no lr)", competing=0.0,
              tolerance=spread[0], reason=per_width + steady),
        Check(name="sigma_max exponent of 1 / wd (fixed lr_h, n)", measured=point["b"], ci=ci(1), predicted=0.5,
              competitor="fixed point of a persistent update W = -u / wd", competing=1.0, tolerance=spread[1],
              reason=per_width + steady),
    ]
    for competing, words in ((0.5, "uncorrelated updates (random matrix, n^0.5)"),
                             (1.0, "one persistent direction (rank one, n^1)")):
        checks.append(Check(
            name=f"width exponent of sigma_max / sqrt(lr_h / wd), against {words.split(' (')[0]}",
            measured=point["w"], ci=ci(2), predicted=_theory.PAPER_SV_EXPONENT, competitor=words,
            competing=competing, tolerance=spread[2],
            reason=("model error: half the difference of the exponent fitted over the lower and upper halves of the "
                    "widths, the drift the finite sizes show; " + steady)))
    optima, fits = {}, {}
    # The rule predicted from the measured steady state (theory.weight_decay.wd_exponent): p* = (w + a e) / b with
    # sigma_max ∝ lr_h^a wd^-b n^w and lr_h ∝ n^e, the rule that keeps sigma_max (and the relative step) the same
    # at every width. Its error: the bootstrap CI half-width of p*, plus the exponents' model errors carried
    # through to first order.
    e = -float(_param.get(str(ds["param"].values[0])).table(str(ds["optimizer"].values[0]))[2, 1])
    rule, rule_boot = (_rule_from(v[0], v[1], v[2], e) for v in ((point["a"], point["b"], point["w"]), boot.T))
    rule_err = math.nan
    if math.isfinite(rule) and np.isfinite(rule_boot).sum() >= 2:
        lo, hi = _fit.percentile_ci(rule_boot)
        rule_err = float((hi - lo) / 2 + (spread[2] + abs(e) * spread[0] + abs(rule) * spread[1]) / point["b"])
    next_order = _next_order(widths)
    for p in rules:
        opt, reps, wd0s = optimum(ds, spec, p, metric)
        optima[p] = (opt, reps)
        ok = np.isfinite(opt)
        if ok.sum() >= 2:
            line = _fit.slope(np.log(widths[ok]), np.log(reps[:, ok]))
            measured, lo_hi = line.slope, line.slope_ci
            fits[p] = line
        else:
            measured, lo_hi = math.nan, (math.nan, math.nan)
        predicted = (_theory.optimum_exponent(p, point["w"], e, point["a"], point["b"]) if math.isfinite(rule)
                     else math.nan)
        # Against the predicted rule p*: this rule p transfers (0) when p is not the rule nearest p*; for that
        # nearest rule, the optimum following the next nearest rule q instead, so this rule's wd_0* moves as
        # n^(q - p). The candidates are the swept rules and the three of theory.weight_decay.RULES.
        candidates = sorted(set(rules) | set(_theory.RULES))
        ranked = sorted(candidates, key=lambda q: abs(q - rule)) if math.isfinite(rule) else candidates
        if ranked[0] == p:
            competing, competitor = ranked[1] - p, f"the optimum follows wd ∝ n^{ranked[1]:g}, so wd_0* moves"
        else:
            competing, competitor = 0.0, "wd_0* transfers under this rule (0)"
        tolerance = next_order + rule_err
        checks.append(Check(
            name=f"wd_0* width exponent under wd ∝ n^{p:g}", measured=measured, ci=lo_hi, predicted=predicted,
            competitor=competitor, competing=competing, tolerance=tolerance,
            reason=(f"predicted p* - p, p* = (w + a e) / b = {rule:.3f} the rule the measured steady state gives; "
                    f"model error {tolerance:.3f}: {next_order:.3f} for relative n^-1/2 corrections with coefficient "
                    f"1 over these widths plus {rule_err:.3f}, the error of p* (its CI half-width and the exponents' "
                    "model errors); "
                    f"CI: {N_BOOT}-replicate bootstrap over seeds; wd_0* resolved inside the grid at "
                    f"{int(ok.sum())}/{len(widths)} widths; loss: seed-mean {metric} over the last "
                    f"{STEADY_WINDOW:.0%} of training at the best lr")))
    regimes = {"steady state": f"{n_steady} steady points; sigma_max ∝ lr_h^{point['a']:.2f} wd^-{point['b']:.2f} "
                               f"n^{point['w']:.2f}",
               "rule the steady state predicts": f"wd ∝ n^{rule:.2f} (± {rule_err:.2f}), p* = (w + a e) / b"}
    for p in rules:
        if p in fits:
            regimes[f"wd ∝ n^{p:g}"] = (f"wd_0* ~ n^{fits[p].slope:.2f} [{fits[p].slope_ci[0]:.2f}, "
                                         f"{fits[p].slope_ci[1]:.2f}]")
    with warnings.catch_warnings():  # a width with no steady member, or no resolved optimum, is NaN by design
        warnings.filterwarnings("ignore", "All-NaN slice|Mean of empty slice", RuntimeWarning)
        figures = [_plot_trajectories(ds, spec, out), _plot_sv_width(ds, spec, point, out),
                   _plot_loss_vs_wd(ds, spec, rules, metric, optima, out),
                   _plot_optimum(widths, rules, optima, fits, rule, out)]
    rows = [[f"n^{p:g}"] + [f"{v:.3g}" for v in optima[p][0]] for p in rules]
    report = ("Members are in the steady state when training covers "
              f"{STEADY_TIMES:g} decay times 1 / (lr_h wd), lr_h the hidden matrix's rate (lr / n under muP with "
              "Adam); only those enter the singular-value fit, a least-squares fit of log sigma_max on log lr_h, "
              "log wd and log n. The optimal wd_0 is the minimum, interpolated in log wd_0, of the seed-mean final "
              f"`{metric}` at the best learning rate, per width and rule.\n\n"
              + table(["rule"] + [f"width {int(w)}" for w in widths], rows))
    return {"checks": checks, "regimes": regimes, "figures": figures, "report": report}


def _plot_trajectories(ds, spec, out):
    """sigma_max against steps in decay times, divided by sqrt(lr_h / wd): it settles at one level per width."""
    sv = squeeze_axes(ds["top_singular_value"].isel(hidden_layer=0), keep=("width", "lr", "weight_decay", "seed"))
    lr_h = hidden_lr(ds, spec)
    fig, ax = subplots(1, 1, figsize=(6, 4))
    colors = width_colors(ds.sizes["width"])
    steps = ds["step"].values
    for k, n in enumerate(ds["width"].values):
        for lr in ds["lr"].values:
            for wd in ds["weight_decay"].values:
                y = sv.sel(width=n, lr=lr, weight_decay=wd).mean("seed").values
                if not np.isfinite(y).all():
                    continue
                rate = float(lr_h.sel(width=n, lr=lr)) * wd
                ax.plot(steps * rate, y / math.sqrt(float(lr_h.sel(width=n, lr=lr)) / wd), color=colors[k], lw=0.6,
                        alpha=0.6)
        ax.plot([], [], color=colors[k], label=f"width {n}")
    ax.axvline(STEADY_TIMES, color="k", ls=":", lw=0.8, label="steady from here")
    ax.set(xscale="log", yscale="log", xlabel="steps x lr_h x wd (decay times)", ylabel="sigma_max / sqrt(lr_h / wd)",
           title="AdamW reaches a steady norm")
    ax.legend(fontsize=7)
    return save(fig, out / "sv_trajectories.png")


def _plot_sv_width(ds, spec, point, out):
    level, ok = steady_sv(ds, spec)
    lr_h = hidden_lr(ds, spec)
    ratio = (level / np.sqrt(lr_h / ds["weight_decay"])).where(ok).mean("seed")
    widths = ds["width"].values.astype(float)
    fig, ax = subplots(1, 1, figsize=(6, 4))
    flat = ratio.transpose("width", ...).values.reshape(len(widths), -1)
    for j in range(flat.shape[1]):
        ax.plot(widths, flat[:, j], "o", color="0.6", ms=3)
    med = np.nanmedian(flat, axis=1)
    ax.plot(widths, med, "ks", label="median over (lr, wd)")
    w0, y0 = widths[0], med[0]
    for e, style in ((0.5, ":"), (_theory.PAPER_SV_EXPONENT, "-"), (1.0, "--")):
        ax.plot(widths, y0 * (widths / w0) ** e, style, color="C3" if e == 0.75 else "C0",
                label=f"n^{e:g}" + (" (Fan et al.)" if e == 0.75 else ""))
    ax.plot([], [], " ", label=f"fit: n^{point['w']:.2f}")
    ax.set(xscale="log", yscale="log", xlabel="width", ylabel="steady sigma_max / sqrt(lr_h / wd)",
           title="top singular value of the hidden matrix")
    log_ticks(ax, widths)
    ax.legend(fontsize=7)
    return save(fig, out / "sv_vs_width.png")


def _plot_loss_vs_wd(ds, spec, rules, metric, optima, out):
    values = steady_metric(ds, metric)
    widths = ds["width"].values
    base = float(widths.min())
    wd0s = np.asarray(spec["sweep"]["weight_decay"], float)
    raw = ds["weight_decay"].values
    fig, axes = subplots(1, len(rules), figsize=(4.2 * len(rules), 3.6), squeeze=False)
    colors = width_colors(len(widths))
    for i, p in enumerate(rules):
        ax = axes[0, i]
        for k, n in enumerate(widths):
            cols = [int(np.argmin(np.abs(np.log(raw) - np.log(w)))) for w in _rule_wd(wd0s, n, base, p)]
            curve = values.sel(width=n).isel(weight_decay=cols).mean("seed").min("lr").values
            ax.plot(wd0s, curve, "o-", ms=3, color=colors[k], label=f"width {n}")
            if np.isfinite(optima[p][0][k]):
                ax.axvline(optima[p][0][k], color=colors[k], lw=0.6, ls=":")
        ax.set(xscale="log", yscale="log", xlabel=f"wd_0 = wd / (n / {int(base)})^{p:g}",
               ylabel=f"steady {metric} (best lr)", title=f"wd ∝ n^{p:g}")
    axes[0, -1].legend(fontsize=7)
    return save(fig, out / "loss_vs_wd.png")


def _plot_optimum(widths, rules, optima, fits, rule, out):
    """wd_0* against width under each rule, beside the exponent ``rule - p`` the measured width exponent predicts."""
    fig, ax = subplots(1, 1, figsize=(6, 4))
    paper = rule if math.isfinite(rule) else _theory.wd_exponent()
    for j, p in enumerate(rules):
        y, reps = optima[p]
        lo, hi = (np.nanpercentile(reps, [2.5, 97.5], axis=0) if np.isfinite(reps).any()
                  else (np.full_like(y, np.nan),) * 2)
        line = ax.errorbar(widths * 1.04 ** (j - 1), y, yerr=ci_errors(y, lo, hi), fmt="osD^"[j % 4], capsize=3,
                           label=f"wd ∝ n^{p:g}")
        ok = np.isfinite(y)
        if ok.any():
            w0, y0 = widths[ok][0], y[ok][0]
            ax.plot(widths, y0 * (widths / w0) ** (paper - p), "--", color=line[0].get_color(), lw=1,
                    label=f"predicted: n^{paper - p:.2f}")
    resolved = any(np.isfinite(optima[p][0]).any() for p in rules)
    if not resolved:  # no optimum inside the grid at any width: say so instead of an empty log axis
        ax.text(0.5, 0.5, "no optimum inside the wd_0 grid", ha="center", transform=ax.transAxes)
    ax.set(xscale="log", yscale="log" if resolved else "linear", xlabel="width", ylabel="optimal wd_0",
           title="does the optimal wd transfer?")
    log_ticks(ax, widths)
    ax.legend(fontsize=7)
    return save(fig, out / "wd_star_vs_width.png")


def validate(spec):
    model = spec.get("model", {})
    if model.get("kind", "mlp") != "mlp" or model.get("depth", 2) < 3:
        raise _spec.SpecError("spec keys 'model.kind' and 'model.depth' must give an MLP of depth >= 3 for "
                              "weight-decay-transfer, which measures a hidden n x n matrix.")
    if model.get("norm", "none") == "none":
        raise _spec.SpecError("spec key 'model.norm' must be 'rms' or 'layer' for weight-decay-transfer, whose "
                              "steady state needs the hidden matrix to feed a scale-invariant block.")
    sweep = spec["sweep"]
    if list(sweep.get("optimizer", ["sgd"])) != ["adamw"]:
        raise _spec.SpecError("spec key 'sweep.optimizer' must be ['adamw'] for weight-decay-transfer, whose "
                              "steady state is that of decoupled weight decay.")
    if any(v <= 0 for v in sweep.get("weight_decay", [0.0])):
        raise _spec.SpecError(f"spec key 'sweep.weight_decay' must hold positive coefficients for "
                              f"weight-decay-transfer, got {sweep.get('weight_decay', [0.0])!r}.")
    for name in sweep.get("param", ["sp"]):
        c = _param.get(name).table("adamw")[2, 1]
        if c == 0:
            raise _spec.SpecError(f"spec key 'sweep.param' names {name!r}, whose hidden learning rate does not "
                                  "scale with width, so weight-decay scalings by width have no rule to follow; use "
                                  "'mup'.")
    metric = spec.get("analysis", {}).get("metric", "test_loss")
    if metric not in spec.get("train", {}).get("observables", []):
        raise _spec.SpecError(f"spec key 'analysis.metric' names {metric!r}, which train.observables does not record.")


_rules_ok = lambda v: (isinstance(v, list) and len(v) >= 1 and len(set(v)) == len(v)
                       and all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
                               and -2 <= x <= 2 for x in v))
REQUIRES = Requirements(
    observables=("top_singular_value",),
    single=("param", "optimizer", "init_scale", "momentum"),
    at_least=(("lr", 3, "each optimum is the best learning rate at its weight decay"),
              ("weight_decay", 3, "each optimum is located between two neighbouring coefficients"),
              ("width", 3, "the exponents are slopes against log width, with a model error from two halves"),
              ("seed", 2, "the CIs are a bootstrap over seeds")),
    analysis={"rules": (_rules_ok, "a list of distinct width exponents in [-2, 2]"),
              "metric": (lambda v: v in ("loss", "test_loss"), "'loss' or 'test_loss'")})

EXPERIMENT = Experiment(
    "weight-decay-transfer",
    "AdamW's steady-state top singular value vs sqrt(lr/wd) and width, and which width scaling of weight decay "
    "transfers the optimal (lr, wd) under muP (Fan et al. 2025, Robust layerwise scaling rules by proper weight "
    "decay tuning, arXiv:2510.15262)",
    DEFAULTS, QUICK, analyse, validate, execute=execute, requires=REQUIRES,
    required=("task.d_in", "train.steps", "sweep.width", "sweep.lr", "sweep.weight_decay"))
