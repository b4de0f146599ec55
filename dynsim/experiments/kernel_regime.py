"""``kernel-regime``: does a wide network train like kernel regression with its analytic NTK, and under which
parametrization?

Two-layer networks are trained by full-batch GD on a teacher-student task at widths over two decades and several
seeds, in NTK parametrization and in muP, recording the empirical NTK on fixed probe inputs
(:mod:`dynsim.observables`). Three comparisons with theory, each against the law it exists to rule out:

1. **Kernel movement.** The relative distance ``||K_T - K_0||_F / ||K_0||_F`` of the empirical NTK at the end of
   training from its value at init, fitted as ``c n^-e`` over widths (95% CI over seeds, :func:`movement`).
   Predicted (:func:`dynsim.theory.ntk_regime.kernel_change_exponent`): in NTK parametrization ``e = 3/4`` for ReLU
   and ``e = 1`` for smooth activations. Lee et al. (2019) bound the change by ``O(n^-1/2)``, but in a two-layer
   network the first-order changes of the units' kernel terms are odd in their readout weights and average out
   over units, leaving ``O(1/n)`` (Dyer & Gur-Ari 2020; Huang & Yau 2020); ReLU's kink adds ``n^-3/4`` from the
   ``O(n^1/2)`` units whose activation flips, with random signs. Under muP ``e = 0``: features move by
   ``Theta(1)`` at every width (Yang & Hu 2021). Competitors: muP's 0 for the NTK exponent and the NTK's for muP's.
   This exponent is the one compared, rather than that of the kernel's distance from its infinite-width value,
   because the latter is dominated at init by the ``O(n^-1/2)`` seed fluctuation, which is not a statement about
   training.
2. **Output movement.** ``||f_T - f_0|| / ||y||`` on the probes, fitted the same way: predicted exponent 0 for
   both (:func:`~dynsim.theory.ntk_regime.output_change_exponent`); competitor: outputs freezing as fast as the lazy
   kernel. Together with 1: a lazy network's outputs move by ``O(1)`` while its kernel freezes. A network that did
   not move at all (its records at step 0) has exponent ``+inf``, which disagrees with every prediction.
3. **The kernel-regression prediction.** The seed-mean test loss of the NTK-parametrized network at its largest
   width against :func:`~dynsim.theory.ntk_regime.gd_test_loss`: GD with the analytic NTK
   (:func:`~dynsim.theory.ntk_regime.two_layer_kernels`) from a Gaussian-process init, at the same learning rate
   and step count (95% bootstrap CI over seeds). Competitor: the muP network's test loss at that width (an
   untrained network's expected test loss when muP is not swept). Under muP the theory curve is drawn for contrast;
   it is not a prediction there.

Model errors, from the finite-width terms at the swept widths. An exponent's (:func:`curvature_error`): next-order
terms bend the log-log line, so the local exponent drifts across the widths while a straight fit returns its
mid-range value; the drift from the middle to the ends, ``|kappa| ln(n_max / n_min)`` from a quadratic fit of log
movement in log width, is the part of the distance to the asymptotic exponent that the data show. The test loss's
(:func:`loss_trend_error`): ``|c| n_max^-1/2`` from a fit of ``L_inf + c n^-1/2`` to the seed-mean losses over
the widths, the slowest finite-width correction (the empirical kernel's ``O(n^-1/2)`` deviation from the analytic
one) at the largest width.

Measured: quick size (widths 32-512, 4 seeds, 100 steps; 15-30 s wall on 2 CPU cores shared with other jobs)
kernel exponent ntk 0.758 [0.550, 0.966] (model error 0.006), muP 0.024 [-0.152, 0.200] (0.127); output exponent
ntk 0.099 [-0.126, 0.325] (0.037), muP 0.016 [-0.018, 0.050] (0.008); test loss at width 512 0.0663
[0.0527, 0.0789] against the analytic 0.0642 (model error 0.003; muP's 0.0344). Full size (widths 64-4096, 8 seeds,
200 steps; about 1 min wall): kernel exponent ntk 0.757 [0.712, 0.802] (0.002), muP 0.049 [0.005, 0.092] (0.041:
it agrees only within the model error, muP's kernel movement still falling slowly towards its limit); output
exponent ntk 0.043 [-0.029, 0.114] (0.140), muP 0.003 [-0.006, 0.013] (0.017); test loss at width 4096 0.0560
[0.0446, 0.0692] against 0.0590 (0.001; muP's 0.0297). With erf (``--set model.act='erf'``) the kernel exponent is
0.750 [0.707, 0.792] against 1 with model error 0.133, and disagrees: its local slopes rise from 0.5 at n = 64
towards 1 (1.07 between 4096 and 16384, 4 seeds), so at these widths erf is pre-asymptotic beyond what the curvature
of the swept range shows; its test loss (0.494 [0.481, 0.507] against 0.502) is inconclusive, muP's 0.481 lying in
the interval (neither network learns much of this task with erf).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .. import fit as _fit
from ..plot import log_ticks, save, subplots, width_colors
from ..theory import ntk_regime
from ._contract import Check, Experiment, Requirements
from ._report import final, squeeze_axes, table
from ._runner import build

N_BOOT = 1000
OBSERVABLES = ["loss", "test_loss", "ntk_eigs", "ntk_distance", "output_distance"]

DEFAULTS = {
    "experiment": "kernel-regime",
    "model": {"kind": "mlp", "depth": 2, "act": "relu"},
    "task": {"d_in": 8, "n_train": 64, "n_test": 64, "teacher": "mlp", "teacher_width": 16, "noise": 0.0,
             "seed": 0},
    "train": {"steps": 200, "record_every": 50, "observables": OBSERVABLES},
    "sweep": {"width": [64, 128, 256, 512, 1024, 2048, 4096], "lr": [0.5], "seed": list(range(8)),
              "param": ["ntk", "mup"], "optimizer": ["sgd"]},
}
QUICK = {
    "train": {"steps": 100, "record_every": 50},
    "sweep": {"width": [32, 64, 128, 256, 512], "seed": [0, 1, 2, 3]},
}

_FIXED = ("optimizer", "lr", "init_scale", "weight_decay", "momentum")  # one value each (requirements, validate)


def _final(ds, name):
    """``name`` at the last record as ``[param, seed, width]`` (the other sweep axes hold one value)."""
    return final(ds, name, keep=("param", "seed", "width")).transpose("param", "seed", "width").values


def _seed_mean(values: np.ndarray) -> np.ndarray:
    """Mean over seeds (axis 0) of the finite entries; NaN where a width has none."""
    ok = np.isfinite(values)
    count = ok.sum(axis=0)
    return np.where(count > 0, np.where(ok, values, 0.0).sum(axis=0) / np.maximum(count, 1), np.nan)


def _seed_se(values: np.ndarray) -> np.ndarray:
    """Standard error over seeds (axis 0) of the seed mean, from the finite entries; NaN with fewer than 2."""
    ok = np.isfinite(values)
    count = ok.sum(axis=0)
    dev = np.where(ok, values - _seed_mean(values), 0.0)
    var = (dev**2).sum(axis=0) / np.maximum(count - 1, 1)
    return np.where(count >= 2, np.sqrt(var / np.maximum(count, 1)), np.nan)


def curvature_error(widths, means) -> float:
    """Model error of a power-law exponent fitted over ``widths``: how far the local exponent of ``means`` moves from
    the middle of the swept range to its ends.

    A next-order finite-width term, ``m = c n^-e (1 + b n^-delta)``, bends the log-log line; to second order in
    ``l = log n``,

    .. math:: \\log m = a - e\\, (l - \\bar l) + \\kappa \\big[(l - \\bar l)^2 - \\overline{(l - \\bar l)^2}\\big],

    so the local exponent ``-d log m / dl = e - 2 kappa (l - lbar)`` runs from ``e + kappa L`` to ``e - kappa L``
    over the range ``L = l_max - l_min`` of a symmetric (log-spaced) design, and a straight fit returns its
    mid-range value ``e``. ``|kappa| L`` is how far the exponent still moves within the swept widths: the part of
    the distance to the asymptotic exponent that the data show. Least squares on the log of the seed-mean at the
    widths where it is positive; NaN with fewer than 3 of them.
    """
    widths, means = np.asarray(widths, float), np.asarray(means, float)
    ok = np.isfinite(means) & (means > 0)
    if ok.sum() < 3:
        return float("nan")
    lc = np.log(widths[ok]) - np.log(widths[ok]).mean()
    basis = np.stack([np.ones_like(lc), lc, lc**2 - np.mean(lc**2)], axis=1)
    kappa = np.linalg.lstsq(basis, np.log(means[ok]), rcond=None)[0][2]
    return float(abs(kappa) * np.ptp(lc))


@dataclasses.dataclass(frozen=True)
class Movement:
    """A movement exponent: estimate, 95% CI, model error (:func:`curvature_error`), the fit and how it was made."""

    exponent: float
    ci: tuple[float, float]
    tolerance: float
    line: _fit.PowerLawFit | None
    reason: str


def movement(widths, values) -> Movement:
    """Exponent of the movement ``values[seed, width]`` against width, ``values ~ width^-e``.

    A movement that is zero at every width (the records of an untrained network) vanishes faster than any power: its
    exponent is ``+inf``, which no finite prediction holds. Otherwise :func:`dynsim.fit.power_law` (CI: Student-t
    with a seed-bootstrap standard error) and the model error of :func:`curvature_error`.
    """
    widths = np.asarray(widths, float)
    means = _seed_mean(values)
    if np.all(means == 0):
        return Movement(float("inf"), (float("inf"), float("inf")), 0.0, None,
                        "no movement at any width (the records of an untrained network): it vanishes faster than "
                        "any power, exponent +inf")
    try:
        line = _fit.power_law(widths, values, n_boot=N_BOOT)
    except ValueError as e:
        return Movement(float("nan"), (float("nan"), float("nan")), float("nan"), None, f"no fit: {e}")
    tol = curvature_error(widths, means)
    return Movement(line.exponent, line.exponent_ci, tol, line,
                    f"model error {tol:.3f}: how far the local exponent moves from the middle of widths "
                    f"{widths.min():g}-{widths.max():g} to their ends (|curvature| x ln(n_max / n_min) of a quadratic "
                    "fit of log movement in log width: next-order finite-width terms bend the line, and the fitted "
                    "exponent is its mid-range slope); CI: 95% Student-t with a seed-bootstrap standard error")


def loss_trend_error(widths, losses) -> float:
    """Model error of the seed-mean test loss at the largest width: ``|c| n_max^-1/2`` from a fit of
    ``L(n) = L_inf + c n^-1/2`` to the seed-means over ``widths`` (``losses[seed, width]``), weighted by their
    standard errors.

    ``n^-1/2`` is the slowest finite-width correction: the empirical kernel deviates from the analytic one by
    ``O(n^-1/2)`` (it is a mean over ``n`` units), which moves one seed's loss at first order (the seed mean at
    second); the kernel's movement in training is smaller still (``n^-3/4`` for ReLU). ``c n_max^-1/2`` is the part
    of the largest width's loss that the trend over the swept widths attributes to finite width.
    """
    widths = np.asarray(widths, float)
    mean, se = _seed_mean(losses), _seed_se(losses)
    ok = np.isfinite(mean) & np.isfinite(se)
    if ok.sum() < 3:
        return float("nan")
    weight = np.where(se[ok] > 0, 1.0 / np.where(se[ok] > 0, se[ok], 1.0), 1.0)
    basis = np.stack([np.ones(ok.sum()), widths[ok] ** -0.5], axis=1)
    c = np.linalg.lstsq(basis * weight[:, None], mean[ok] * weight, rcond=None)[0][1]
    return float(abs(c) * widths.max() ** -0.5)


def infinite_width_test_loss(spec, steps) -> np.ndarray:
    """The analytic NTK's test-loss curve (:func:`dynsim.theory.ntk_regime.gd_test_loss`) at ``steps``."""
    model, task, sweep, _ = build(spec)
    data = task.make()
    x, xt = np.asarray(data.x_train).T, np.asarray(data.x_test).T
    act, scale = model.act, sweep.init_scale[0]
    k_tr = ntk_regime.two_layer_kernels(x, x, act, scale)
    k_x = ntk_regime.two_layer_kernels(xt, x, act, scale)
    diag = np.diag(np.asarray(ntk_regime.two_layer_kernels(xt, xt, act, scale).nngp))
    return ntk_regime.gd_test_loss(k_tr.ntk, k_x.ntk, k_tr.nngp, k_x.nngp, diag, np.asarray(data.y_train)[0],
                                   np.asarray(data.y_test)[0], sweep.lr[0], steps)


def _competitor(what: str, par: str, lazy: float) -> tuple[str, float]:
    """The law a movement exponent's check exists to rule out."""
    if what == "outputs":
        return f"outputs frozen as fast as the lazy kernel (width^-{lazy:g})", lazy
    if par == "ntk":
        return "muP's feature-learning exponent", 0.0
    return f"NTK parametrization's lazy exponent ({lazy:g})", lazy


def _regime(kernel: Check, outputs: Check) -> str:
    """The regime of one parametrization in words that follow the two movement checks' verdicts."""
    lazy = kernel.predicted > 0
    name = "lazy" if lazy else "feature learning"
    if np.isinf(kernel.measured) and np.isinf(outputs.measured):
        return "no movement at any width: the records are those of an untrained network"
    if kernel.verdict == "agrees" and outputs.verdict == "agrees":
        if lazy:
            return (f"lazy, as predicted: the kernel freezes as width^-{kernel.measured:.2f} while the outputs move "
                    f"by O(1) (width^-{outputs.measured:.2f})")
        return (f"feature learning, as predicted: the kernel moves by O(1) at every width "
                f"(width^-{kernel.measured:.2f}), and so do the outputs (width^-{outputs.measured:.2f})")
    return (f"not shown to be {name}: kernel exponent {kernel.measured:.2f} {kernel.verdict} with the predicted "
            f"{kernel.predicted:g}, output exponent {outputs.measured:.2f} {outputs.verdict} with "
            f"{outputs.predicted:g}")


def analyse(ds, spec, out):
    widths = ds["width"].values.astype(float)
    params = [str(p) for p in ds["param"].values]
    act = spec.get("model", {}).get("act", "relu")
    lazy = ntk_regime.kernel_change_exponent("ntk", act)
    theory = {"kernel": lambda par: ntk_regime.kernel_change_exponent(par, act),
              "outputs": ntk_regime.output_change_exponent}
    checks, regimes, fits, by_name = [], {}, {}, {}
    for name, what in (("ntk_distance", "kernel"), ("output_distance", "outputs")):
        values = _final(ds, name)
        for j, par in enumerate(params):
            m = fits[(name, par)] = movement(widths, values[j])
            competitor, competing = _competitor(what, par, lazy)
            c = Check(name=f"{what} movement exponent, {par}", measured=m.exponent, ci=m.ci,
                      predicted=theory[what](par), competitor=competitor, competing=competing,
                      tolerance=m.tolerance, reason=m.reason)
            checks.append(c)
            by_name[(what, par)] = c
    for par in params:
        regimes[par] = _regime(by_name[("kernel", par)], by_name[("outputs", par)])

    steps = ds["step"].values
    theory_curve = infinite_width_test_loss(spec, steps)
    test_loss = _final(ds, "test_loss")
    rows = []
    if "ntk" in params:
        j = params.index("ntk")
        measured, ci = _fit.mean_ci(test_loss[j, :, -1], n_boot=N_BOOT)
        tol = loss_trend_error(widths, test_loss[j])
        others = [p for p in params if p != "ntk"]
        if others:
            competing = float(_seed_mean(test_loss[params.index(others[0]), :, -1:])[0])
            competitor = f"the {others[0]} network's test loss at that width (feature learning)"
        else:
            competing, competitor = float(theory_curve[0]), "an untrained network's test loss (the GP prior's)"
        checks.append(Check(name=f"test loss at width {int(widths.max())} (ntk) vs kernel GD with the analytic NTK",
                            measured=measured, ci=ci, predicted=float(theory_curve[-1]), competitor=competitor,
                            competing=competing, tolerance=tol,
                            reason=f"model error {tol:.3g}: the finite-width term c n^-1/2 at the largest width, c "
                            "from a fit of L_inf + c n^-1/2 to the seed-mean test loss over the swept widths "
                            "(weighted by its standard errors); CI: 95% bootstrap over seeds"))
    for j, par in enumerate(params):
        k, o = fits[("ntk_distance", par)], fits[("output_distance", par)]
        rows.append([par, k.exponent, f"[{k.ci[0]:.3g}, {k.ci[1]:.3g}]", k.tolerance, o.exponent,
                     f"[{o.ci[0]:.3g}, {o.ci[1]:.3g}]", o.tolerance,
                     float(_seed_mean(test_loss[j, :, -1:])[0])])
    figures = [_plot_movement(widths, ds, params, fits, theory, out), _plot_loss(ds, params, theory_curve, out),
               _plot_eigs(ds, spec, out)]
    report = (f"Full-batch GD for {int(steps[-1])} steps at lr {float(ds['lr'].values[0]):g}; the kernel and the "
              "outputs are measured on the first test inputs (the probes). Exponents are fits of "
              "`c * width^-e` to the seed-mean at the last step, with 95% CIs over seeds; the model error of an "
              "exponent is how far the local exponent moves across the swept widths (the curvature of the log-log "
              "line). The theory curve of the test loss is gradient descent with the analytic NTK from a "
              "Gaussian-process init (Lee et al. 2019), the prediction for NTK parametrization only; its model "
              "error is the finite-width trend of the measured loss over the widths, c n^-1/2 at the largest.\n\n"
              + table(["param", "kernel exponent", "CI", "model error", "output exponent", "CI", "model error",
                       f"test loss at width {int(widths.max())}"], rows)
              + f"\n\nAnalytic NTK, width -> inf: test loss {float(theory_curve[-1]):.4g} at step {int(steps[-1])} "
              f"(untrained: {float(theory_curve[0]):.4g}).")
    return {"checks": checks, "regimes": regimes, "figures": figures, "report": report}


def _plot_movement(widths, ds, params, fits, theory, out):
    fig, axes = subplots(1, 2, figsize=(9, 3.6))
    for ax, (name, what, label) in zip(axes, (("ntk_distance", "kernel", "||K_T - K_0|| / ||K_0||"),
                                              ("output_distance", "outputs", "||f_T - f_0|| / ||y||"))):
        values = _final(ds, name)
        for j, par in enumerate(params):
            y = values[j]
            mean = _seed_mean(y)
            err = np.nan_to_num(_seed_se(y))
            pts = ax.errorbar(widths, mean, yerr=err, fmt="o", capsize=3, label=f"{par}")
            color = pts[0].get_color()
            line = fits[(name, par)].line
            if line is None:  # nothing moved, or nothing to fit
                continue
            ax.plot(widths, line.predict(widths), "-", color=color, lw=1, label=f"{par} fit: e = {line.exponent:.2f}")
            # Theory fixes the exponent only: its line passes through the fit at the geometric-mean width.
            w0 = np.exp(np.mean(np.log(widths)))
            e = theory[what](par)
            ax.plot(widths, line.predict(w0) * (widths / w0) ** (-e), "--", color=color, lw=1, alpha=0.7,
                    label=f"{par} theory: e = {e:g}")
        if np.any(np.isfinite(values) & (values > 0)):
            ax.set(yscale="log")
        ax.set(xlabel="width", ylabel=label)
        log_ticks(ax, widths)
        ax.legend(fontsize=7)
    axes[0].set_title("kernel movement")
    axes[1].set_title("output movement")
    return save(fig, out / "movement_vs_width.png")


def _plot_loss(ds, params, theory_curve, out):
    steps, widths = ds["step"].values, ds["width"].values
    test = squeeze_axes(ds["test_loss"], _FIXED)
    fig, axes = subplots(1, len(params) + 1, figsize=(4.2 * (len(params) + 1), 3.6))
    colors = width_colors(len(widths))
    for ax, par in zip(axes, params):
        for k, w in enumerate(widths):
            ax.plot(steps, test.sel(param=par, width=w).mean("seed").values, "o-", ms=3, color=colors[k],
                    label=f"width {w}")
        ax.plot(steps, theory_curve, "k--", lw=1.2, label="analytic NTK, n = inf")
        ax.set(yscale="log", xlabel="step", ylabel="test loss (seed mean)", title=par)
        ax.legend(fontsize=7)
    ax = axes[-1]
    final_loss = test.isel(step=-1)
    for par in params:
        ax.errorbar(widths, final_loss.sel(param=par).mean("seed").values,
                    yerr=final_loss.sel(param=par).std("seed", ddof=1).values / np.sqrt(final_loss.sizes["seed"]),
                    fmt="o", capsize=3, label=par)
    ax.axhline(theory_curve[-1], color="k", ls="--", lw=1.2, label="analytic NTK, n = inf")
    ax.set(xlabel="width", ylabel=f"test loss at step {int(steps[-1])}", title="final test loss")
    log_ticks(ax, widths)
    ax.legend(fontsize=7)
    return save(fig, out / "test_loss.png")


def _plot_eigs(ds, spec, out):
    """Empirical NTK eigenvalues at init (seed mean, NTK parametrization) against the analytic kernel's."""
    model, task, sweep, _ = build(spec)
    data = task.make()
    k = ds.sizes["ntk_eig"]
    x = np.asarray(data.x_test[:, :k]).T
    theory = np.sort(np.linalg.eigvalsh(np.asarray(
        ntk_regime.two_layer_kernels(x, x, model.act, sweep.init_scale[0]).ntk, np.float64)))[::-1]
    eigs = squeeze_axes(ds["ntk_eigs"].isel(step=0), _FIXED)
    fig, ax = subplots(figsize=(5, 3.6))
    colors = width_colors(ds.sizes["width"])
    par = "ntk" if "ntk" in [str(p) for p in ds["param"].values] else str(ds["param"].values[0])
    for c, w in zip(colors, ds["width"].values):
        ax.plot(np.arange(1, k + 1), eigs.sel(param=par, width=w).mean("seed").values, "o", ms=3, color=c,
                label=f"width {w}")
    ax.plot(np.arange(1, k + 1), theory, "k--", lw=1.2, label="analytic NTK")
    ax.set(xscale="log", yscale="log", xlabel="index", ylabel="NTK eigenvalue at init",
           title=f"empirical NTK spectrum ({par})")
    ax.legend(fontsize=7)
    return save(fig, out / "ntk_spectrum.png")


def validate(spec):
    """What the requirements cannot say as data: the model, the activation and the plain-GD values of the axes."""
    from ..spec import SpecError

    model, sweep = spec.get("model", {}), spec["sweep"]
    if model.get("kind", "mlp") != "mlp" or model.get("depth", 2) != 2:
        raise SpecError("spec keys 'model.kind' and 'model.depth' must be 'mlp' and 2 for kernel-regime: the "
                        "analytic NTK in dynsim's units is derived for two-layer networks.")
    if model.get("act", "relu") not in ("relu", "erf", "linear"):
        raise SpecError(f"spec key 'model.act' must be relu, erf or linear for kernel-regime (the activations with "
                        f"closed-form kernels), got {model['act']!r}.")
    for key, ok, what in (("optimizer", ["sgd"], "['sgd']"), ("momentum", [0.0], "[0]"),
                          ("weight_decay", [0.0], "[0]")):
        if [float(v) if key != "optimizer" else v for v in sweep.get(key, ok)] != ok:
            raise SpecError(f"spec key 'sweep.{key}' must be {what} for kernel-regime: the prediction is plain "
                            "full-batch gradient descent.")
    if not set(sweep.get("param", ["mup"])) <= {"ntk", "mup", "mean_field"}:
        raise SpecError("spec key 'sweep.param' must list parametrizations among ntk, mup and mean_field for "
                        "kernel-regime (the ones with a predicted kernel-movement exponent).")
    if spec["task"].get("n_train", 1) == 0:
        raise SpecError("spec key 'task.n_train' must be positive for kernel-regime (full-batch GD on a training "
                        "set).")


REQUIRES = Requirements(
    observables=tuple(OBSERVABLES),
    single=("lr", "init_scale"),
    at_least=(("width", 4, "a power-law fit and the curvature that sets its model error"),
              ("seed", 2, "the seed bootstrap of the intervals")),
    full_batch=True,
    analysis={},
)

EXPERIMENT = Experiment("kernel-regime", "kernel and output movement vs width under NTK parametrization and "
                                 "muP, and the trained network against GD with its analytic NTK", DEFAULTS, QUICK,
                                 analyse, validate, requires=REQUIRES)
