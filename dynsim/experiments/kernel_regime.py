"""``kernel-regime``: does a wide network train like kernel regression with its analytic NTK, and under which
parametrization?

Two-layer networks are trained by full-batch GD on a teacher-student task at widths over two decades and several
seeds, in NTK parametrization and in muP, recording the empirical NTK on fixed probe inputs
(:mod:`dynsim.obs_ntk`). Three comparisons with theory:

1. **Kernel movement.** The relative distance ``||K_T - K_0||_F / ||K_0||_F`` of the empirical NTK at the end of
   training from its value at init, fitted as ``c n^-e`` over widths (bootstrap CI over seeds). Predicted
   (:func:`dynsim.theory.ntk_regime.kernel_change_exponent`): in NTK parametrization ``e = 3/4`` for ReLU and
   ``e = 1`` for smooth activations. Lee et al. (2019) bound the change by ``O(n^-1/2)``, but in a two-layer
   network the first-order changes of the units' kernel terms are odd in their readout weights and average out
   over units, leaving ``O(1/n)`` (Dyer & Gur-Ari 2020; Huang & Yau 2020); ReLU's kink adds ``n^-3/4`` from the
   ``O(n^1/2)`` units whose activation flips, with random signs. Under muP ``e = 0``: features move by
   ``Theta(1)`` at every width (Yang & Hu 2021). This exponent is the one compared, rather than that of the
   kernel's distance from its infinite-width value, because the latter is dominated at init by the ``O(n^-1/2)``
   seed fluctuation, which is not a statement about training. Measured over widths 64-4096 (defaults): ReLU
   ``0.757 [0.721, 0.790]``, local slopes 0.67-0.80 all along; erf ``0.75 [0.72, 0.79]``, with local slopes
   rising from 0.5 to 0.87 towards the predicted 1 (1.07 between 4096 and 16384), so at these widths erf is still
   pre-asymptotic and its check does not agree (``--set model.act=erf``).
2. **Output movement.** ``||f_T - f_0|| / ||y||`` on the probes, fitted the same way: predicted exponent 0 for
   both (:func:`~dynsim.theory.ntk_regime.output_change_exponent`). Together with 1: a lazy network's outputs move
   by ``O(1)`` while its kernel freezes.
3. **The kernel-regression prediction.** The seed-mean test loss of the NTK-parametrized network at its largest
   width against :func:`~dynsim.theory.ntk_regime.gd_test_loss`: GD with the analytic NTK
   (:func:`~dynsim.theory.ntk_regime.two_layer_kernels`) from a Gaussian-process init, at the same learning rate
   and step count. Under muP the same curve is drawn for contrast; it is not a prediction there.
"""

from __future__ import annotations

import numpy as np

from .. import fit as _fit
from ..plot import log_ticks, plt, save, width_colors
from ..theory import ntk_regime
from ._base import Check, Experiment, build, register, squeeze_axes

N_BOOT = 1000
# Exponent tolerance: the fits run over 1-2 decades of width, where next-order terms (for ReLU the smooth O(1/n)
# beside the leading n^-3/4; under muP the approach of a finite-width network to its infinite-width feature-learning
# limit, O(n^-1/2)) bend a log-log slope: measured local slopes of the ReLU kernel movement scatter between 0.67
# and 0.91 between neighbouring widths. 0.15 on the fit over the whole range covers that and still separates the
# lazy exponent 3/4 from muP's 0 by five tolerances.
EXPONENT_TOLERANCE = 0.15
# Test loss at the largest width against the infinite-width prediction: the seed-mean differs by O(1/n) (the kernel's
# O(n^-1/2) fluctuation and movement enter the mean loss at second order), measured at 1-3% at n = 512-4096 on this
# task (tests/theory/test_ntk_limit.py); 5% of the predicted loss covers it, the CI covers seed noise.
LOSS_RTOL = 0.05
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


_FIXED = ("optimizer", "lr", "init_scale", "weight_decay", "momentum")  # one value each (validate)


def _final(ds, name):
    """``name`` at the last step as ``[param, seed, width]`` (other axes have length 1)."""
    return squeeze_axes(ds[name].isel(step=-1), _FIXED).transpose("param", "seed", "width").values


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


def analyse(ds, spec, out):
    widths = ds["width"].values.astype(float)
    params = [str(p) for p in ds["param"].values]
    checks, regimes, fits = [], {}, {}
    act = spec.get("model", {}).get("act", "relu")
    kernel_exponent = lambda par: ntk_regime.kernel_change_exponent(par, act)
    for name, theory, what in (("ntk_distance", kernel_exponent, "kernel"),
                               ("output_distance", ntk_regime.output_change_exponent, "outputs")):
        values = _final(ds, name)
        for j, par in enumerate(params):
            line = _fit.power_law(widths, values[j], n_boot=N_BOOT)
            fits[(name, par)] = line
            predicted = theory(par)
            checks.append(Check(f"{what} movement exponent, {par}", line.exponent, line.exponent_ci, predicted,
                                EXPONENT_TOLERANCE,
                                _fit.agrees(line.exponent_ci, predicted, EXPONENT_TOLERANCE),
                                "next-order finite-width terms bend the log-log slope over this width range "
                                "(see EXPONENT_TOLERANCE); the CI is a 95% bootstrap over seeds"))
    for par in params:
        e = fits[("ntk_distance", par)].exponent
        regimes[par] = (f"lazy: the kernel freezes as width^-{e:.2f} while the outputs move by O(1)" if e > 0.25
                        else f"feature learning: the kernel moves by O(1) at every width (width^-{e:.2f})")

    steps = ds["step"].values
    theory_curve = infinite_width_test_loss(spec, steps)
    test_loss = _final(ds, "test_loss")
    if "ntk" in params:
        measured, ci = _fit.mean_ci(test_loss[params.index("ntk"), :, -1], n_boot=N_BOOT)
        predicted = float(theory_curve[-1])
        tol = LOSS_RTOL * predicted
        checks.append(Check(f"test loss at width {int(widths[-1])} (ntk) vs kernel GD with the analytic NTK",
                            measured, ci, predicted, tol, _fit.agrees(ci, predicted, tol),
                            "the seed-mean differs from the infinite-width value by O(1/n), 1-3% at these widths; "
                            "the CI is a 95% bootstrap over seeds"))
    figures = [_plot_movement(widths, ds, params, fits, kernel_exponent, out),
               _plot_loss(ds, params, theory_curve, out), _plot_eigs(ds, spec, out)]
    report = (f"Full-batch GD for {int(steps[-1])} steps at lr {float(ds['lr'].values[0]):g}; the kernel and the "
              "outputs are measured on the first test inputs (the probes). Exponents are fits of "
              "`c * width^-e` to the seed-mean at the last step, with 95% bootstrap CIs over seeds; a check agrees "
              "when the prediction lies within the CI widened by the tolerance. The theory curve of the test loss is "
              "gradient descent with the analytic NTK from a Gaussian-process init (Lee et al. 2019), which is the "
              "prediction for NTK parametrization only.")
    return {"checks": checks, "regimes": regimes, "figures": figures, "report": report}


def _plot_movement(widths, ds, params, fits, kernel_exponent, out):
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, (name, theory, label) in zip(axes, (
            ("ntk_distance", kernel_exponent, "||K_T - K_0|| / ||K_0||"),
            ("output_distance", ntk_regime.output_change_exponent, "||f_T - f_0|| / ||y||"))):
        values = _final(ds, name)
        for j, par in enumerate(params):
            y = values[j]
            mean = np.nanmean(y, axis=0)
            err = np.nanstd(y, axis=0, ddof=1) / np.sqrt(y.shape[0]) if y.shape[0] > 1 else None
            pts = ax.errorbar(widths, mean, yerr=err, fmt="o", capsize=3, label=f"{par}")
            color = pts[0].get_color()
            line = fits[(name, par)]
            ax.plot(widths, line.predict(widths), "-", color=color, lw=1, label=f"{par} fit: e = {line.exponent:.2f}")
            # Theory fixes the exponent only: its line passes through the fit at the geometric-mean width.
            w0 = np.exp(np.mean(np.log(widths)))
            ax.plot(widths, line.predict(w0) * (widths / w0) ** (-theory(par)), "--", color=color, lw=1,
                    alpha=0.7, label=f"{par} theory: e = {theory(par):g}")
        ax.set(yscale="log", xlabel="width", ylabel=label)
        log_ticks(ax, widths)
        ax.legend(fontsize=7)
    axes[0].set_title("kernel movement")
    axes[1].set_title("output movement")
    return save(fig, out / "movement_vs_width.png")


def _plot_loss(ds, params, theory_curve, out):
    steps, widths = ds["step"].values, ds["width"].values
    test = squeeze_axes(ds["test_loss"], _FIXED)
    fig, axes = plt.subplots(1, len(params) + 1, figsize=(4.2 * (len(params) + 1), 3.6))
    colors = width_colors(len(widths))
    for ax, par in zip(axes, params):
        for k, w in enumerate(widths):
            ax.plot(steps, test.sel(param=par, width=w).mean("seed").values, "o-", ms=3, color=colors[k],
                    label=f"width {w}")
        ax.plot(steps, theory_curve, "k--", lw=1.2, label="analytic NTK, n = inf")
        ax.set(yscale="log", xlabel="step", ylabel="test loss (seed mean)", title=par)
        ax.legend(fontsize=7)
    ax = axes[-1]
    final = test.isel(step=-1)
    for par in params:
        ax.errorbar(widths, final.sel(param=par).mean("seed").values,
                    yerr=final.sel(param=par).std("seed", ddof=1).values / np.sqrt(final.sizes["seed"]),
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
    fig, ax = plt.subplots(figsize=(5, 3.6))
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
    from ..spec import SpecError

    if spec.get("analysis"):
        raise SpecError(f"unknown spec key 'analysis.{sorted(spec['analysis'])[0]}'; kernel-regime takes no "
                        "analysis settings.")
    model, train, sweep = spec.get("model", {}), spec.get("train", {}), spec["sweep"]
    if model.get("kind", "mlp") != "mlp" or model.get("depth", 2) != 2:
        raise SpecError("spec keys 'model.kind' and 'model.depth' must be 'mlp' and 2 for kernel-regime: the "
                        "analytic NTK in dynsim's units is derived for two-layer networks.")
    if model.get("act", "relu") not in ("relu", "erf", "linear"):
        raise SpecError(f"spec key 'model.act' must be relu, erf or linear for kernel-regime (the activations with "
                        f"closed-form kernels), got {model['act']!r}.")
    missing = sorted(set(OBSERVABLES) - set(train.get("observables", [])))
    if missing:
        raise SpecError(f"spec key 'train.observables' must include {', '.join(missing)} for kernel-regime.")
    for key, ok, what in (("optimizer", ["sgd"], "['sgd']"), ("momentum", [0.0], "[0]"),
                          ("weight_decay", [0.0], "[0]")):
        if [float(v) if key != "optimizer" else v for v in sweep.get(key, ok)] != ok:
            raise SpecError(f"spec key 'sweep.{key}' must be {what} for kernel-regime: the prediction is plain "
                            "full-batch gradient descent.")
    for key in ("lr", "init_scale"):
        if len(sweep.get(key, [1.0])) != 1:
            raise SpecError(f"spec key 'sweep.{key}' must hold one value for kernel-regime (one theory curve).")
    if not set(sweep.get("param", ["mup"])) <= {"ntk", "mup", "mean_field"}:
        raise SpecError("spec key 'sweep.param' must list parametrizations among ntk, mup and mean_field for "
                        "kernel-regime (the ones with a predicted kernel-movement exponent).")
    if train.get("batch_size", 0) != 0 or spec["task"].get("n_train", 1) == 0:
        raise SpecError("spec key 'train.batch_size' must be 0 (full batch, with task.n_train > 0) for "
                        "kernel-regime.")
    if len(sweep["width"]) < 3 or len(sweep.get("seed", [0])) < 2:
        raise SpecError("spec key 'sweep.width' needs at least 3 widths and 'sweep.seed' at least 2 seeds for "
                        "kernel-regime's exponent fits.")


EXPERIMENT = register(Experiment("kernel-regime", "kernel and output movement vs width under NTK parametrization and "
                                 "muP, and the trained network against GD with its analytic NTK", DEFAULTS, QUICK,
                                 analyse, validate))
