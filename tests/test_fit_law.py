"""Tests for dynsim.fit.law: joint scaling laws, their intervals, model comparison, `dynsim fit`.

Synthetic data have a known truth and fixed seeds, so every test is deterministic; statistical bands are chosen so
that they would also hold for the great majority of seeds. The published fit reproduced is Besiroglu et al. (2024)
on their extraction of Hoffmann et al.'s (2022) Figure 4 (tests/data/chinchilla_svg_extracted_data.csv).
"""

from __future__ import annotations

import json
import math
import pathlib

import numpy as np
import pytest
import xarray as xr

from dynsim import cli, fit, io

DATA = pathlib.Path(__file__).parent / "data" / "chinchilla_svg_extracted_data.csv"
TRUTH = {"E": 1.7, "A": 400.0, "B": 410.0, "alpha": 0.34, "beta": 0.28}


def _chinchilla(N, D, p=TRUTH):
    return p["E"] + p["A"] * N ** -p["alpha"] + p["B"] * D ** -p["beta"]


def _sweep(seed: int, sigma_run: float = 0.01, sigma_point: float = 0.003):
    """A width x data sweep: 8 model sizes, each one run whose loss is recorded at 6 checkpoints (D). A run's
    checkpoints share its noise (``sigma_run``, e.g. its seed) besides their own (``sigma_point``)."""
    rng = np.random.default_rng(seed)
    N = np.repeat(np.geomspace(1e6, 1e9, 8), 6)
    D = np.tile(np.geomspace(1e8, 1e11, 6), 8)
    run = np.repeat(np.arange(8), 6)
    noise = sigma_run * rng.standard_normal(8)[run] + sigma_point * rng.standard_normal(N.size)
    return {"N": N, "D": D, "run": run, "loss": _chinchilla(N, D) * np.exp(noise)}


# ----------------------------------------------------------------------------------------------------------------------
# Recovery, intervals, coverage
# ----------------------------------------------------------------------------------------------------------------------


def test_noiseless_forms_recover_their_parameters():
    N, D = (a.ravel() for a in np.meshgrid(np.geomspace(1e6, 1e9, 6), np.geomspace(1e8, 1e11, 6)))
    res = fit.law("chinchilla", {"N": N, "D": D, "loss": _chinchilla(N, D)})
    # Exact data: the minimum is the truth; L-BFGS stops within ~1e-9 relative, so 1e-6 is generous.
    for k, v in TRUTH.items():
        assert res.params[k] == pytest.approx(v, rel=1e-6)
    assert res.converged and res.objective < 1e-12

    kaplan = {"N_c": 8.8e13, "D_c": 5.4e13, "alpha_N": 0.076, "alpha_D": 0.095}
    L = ((kaplan["N_c"] / N) ** (kaplan["alpha_N"] / kaplan["alpha_D"]) + kaplan["D_c"] / D) ** kaplan["alpha_D"]
    res = fit.law("kaplan", {"N": N, "D": D, "loss": L}, starts={"log_N_c": [25.0, 32.0], "log_D_c": [25.0, 32.0]})
    for k, v in kaplan.items():
        assert res.params[k] == pytest.approx(v, rel=1e-4)  # exact data; N_c, D_c enter through logs of ~30

    x = np.geomspace(1.0, 1e6, 40)
    broken = {"E": 0.1, "A": 2.0, "alpha1": 0.2, "alpha2": 0.8, "x_b": 1e3, "f": 0.5}
    y = broken["E"] + broken["A"] * x ** -broken["alpha1"] * (1 + (x / broken["x_b"]) ** (1 / broken["f"])) ** (
        -(broken["alpha2"] - broken["alpha1"]) * broken["f"])
    res = fit.law("broken_power", {"x": x, "y": y}, y="y")
    for k, v in broken.items():
        assert res.params[k] == pytest.approx(v, rel=1e-3)  # exact data; the bend's width is the loosest


def test_user_callable_form_matches_the_named_one():
    x = np.geomspace(10.0, 1e4, 12)
    y = 0.5 + 3.0 * x**-0.6
    named = fit.law("power", {"x": x, "y": y}, y="y")
    custom = fit.law(lambda v, E, A, alpha: E + A * v["x"] ** -alpha, {"x": x, "y": y}, x={"x": "x"}, y="y",
                     starts={"E": [0.1, 1.0], "A": [1.0, 10.0], "alpha": [0.3, 1.0]})
    for k in ("E", "A", "alpha"):
        assert custom.params[k] == pytest.approx(named.params[k], rel=1e-5)  # both exact; differences-gradient
    assert custom.form == "<lambda>"


def test_synthetic_truth_within_run_bootstrap_intervals():
    data = _sweep(seed=1)
    res = fit.law("chinchilla", data, runs="run", bootstrap=200, seed=0)
    assert res.ci_method == "bootstrap" and res.n_runs == 8 and res.n_boot >= 190
    for k, v in TRUTH.items():
        lo, hi = res.ci[k]
        assert lo < v < hi, (k, res.ci[k])  # a 95% interval: fixed seeds, checked deterministically
    assert res.cov.shape == (5, 5) and np.all(np.diag(res.cov) > 0)


def _power_runs(seed: int, n_runs: int = 16):
    """``n_runs`` runs (seeds), each a curve over 5 sizes whose exponent is the truth plus the run's own deviation
    (standard deviation 0.03), with independent noise of 0.005 on each point: the points of one run are correlated,
    the runs are independent."""
    rng = np.random.default_rng(seed)
    x = np.tile(np.geomspace(10.0, 1e4, 5), n_runs)
    run = np.repeat(np.arange(n_runs), 5)
    lx = np.log(x) - np.log(x).mean()
    noise = -0.03 * rng.standard_normal(n_runs)[run] * lx + 0.005 * rng.standard_normal(x.size)
    return {"x": x, "run": run, "loss": (0.5 + 3.0 * x**-0.6) * np.exp(noise)}


@pytest.mark.slow
def test_run_bootstrap_coverage_is_nominal():
    # 200 replicate sweeps; the 95% interval of alpha should cover the truth in 95% of them. The binomial standard
    # error of a coverage measured on 200 replicates is sqrt(.95 * .05 / 200) = 1.5%, so the +-5% band is 3.2 sigma.
    start = np.array([[math.log(0.5), math.log(3.0), 0.6]])  # one start: the truth's neighbourhood is not in doubt
    covered = []
    for seed in range(200):
        res = fit.law("power", _power_runs(seed), runs="run", bootstrap=100, seed=seed, starts=start)
        lo, hi = res.ci["alpha"]
        covered.append(lo < 0.6 < hi)
    coverage = float(np.mean(covered))
    assert abs(coverage - 0.95) <= 0.05, coverage


@pytest.mark.slow
def test_wald_interval_coverage_is_nominal():
    # Independent points (each its own run), least squares: the Gauss-Newton (Wald) interval is the textbook one.
    # 200 replicates: the coverage's binomial standard error is 1.5%, so the +-5% band is 3.2 sigma.
    x = np.geomspace(10.0, 1e4, 10)
    truth = 0.5 + 3.0 * x**-0.6
    covered = []
    for seed in range(200):
        y = truth * np.exp(0.02 * np.random.default_rng(seed).standard_normal(x.size))
        res = fit.law("power", {"x": x, "y": y}, y="y", loss="lsq", starts=np.array([[math.log(0.5), math.log(3.0),
                                                                                        0.6]]))
        lo, hi = res.ci["alpha"]
        covered.append(lo < 0.6 < hi)
    assert abs(float(np.mean(covered)) - 0.95) <= 0.05


# ----------------------------------------------------------------------------------------------------------------------
# Additive versus bottleneck laws, model comparison
# ----------------------------------------------------------------------------------------------------------------------

BOTTLENECK = {**TRUTH, "q": 8.0}


def _bottleneck_data(seed: int, sigma: float = 0.003):
    N, D = (a.ravel() for a in np.meshgrid(np.geomspace(1e6, 1e10, 7), np.geomspace(1e8, 1e12, 7)))
    p = BOTTLENECK
    term = ((p["A"] * N ** -p["alpha"]) ** p["q"] + (p["B"] * D ** -p["beta"]) ** p["q"]) ** (1 / p["q"])
    noise = sigma * np.random.default_rng(seed).standard_normal(N.size)
    return {"N": N, "D": D, "loss": (p["E"] + term) * np.exp(noise)}


@pytest.mark.slow
def test_additive_form_is_biased_on_bottleneck_data_and_the_bottleneck_form_is_not():
    data = _bottleneck_data(seed=2)
    bottleneck = fit.law("bottleneck", data, bootstrap=50)
    additive = fit.law("chinchilla", data)
    exact = fit.law("chinchilla", {**data, "loss": _bottleneck_data(seed=2, sigma=0.0)["loss"]})
    for k in ("alpha", "beta"):
        lo, hi = bottleneck.ci[k]
        assert lo < BOTTLENECK[k] < hi, (k, bottleneck.ci[k])  # 95% interval, fixed seed
        # Where one term dominates, the additive form must bend to follow a max: fitted to the exact bottleneck law
        # it steepens both exponents (measured: alpha by 1.36, beta by 1.46), a bias no amount of data removes. On
        # the noisy data its estimate lies that far off too, many of the bottleneck fit's interval widths away.
        assert exact.params[k] > 1.25 * BOTTLENECK[k]
        assert additive.params[k] > 1.25 * BOTTLENECK[k]
        assert additive.params[k] - BOTTLENECK[k] > 5 * (hi - lo)
    # Model comparison: the bottleneck form fits better despite its extra parameter, and extrapolates better from
    # the smaller models to the larger.
    assert bottleneck.aic < additive.aic and bottleneck.bic < additive.bic
    train = data["N"] < 1e8
    err_add, _ = fit.extrapolation_error("chinchilla", data, train=train)
    err_bot, _ = fit.extrapolation_error("bottleneck", data, train=train)
    assert err_bot < 0.5 * err_add


# ----------------------------------------------------------------------------------------------------------------------
# Compute-optimal allocation
# ----------------------------------------------------------------------------------------------------------------------


def test_compute_optimal_allocation_matches_the_closed_form():
    N, D = (a.ravel() for a in np.meshgrid(np.geomspace(1e6, 1e9, 6), np.geomspace(1e8, 1e11, 6)))
    res = fit.law("chinchilla", {"N": N, "D": D, "loss": _chinchilla(N, D)})
    C = np.array([1e18, 1e21, 1e24])
    n_opt, d_opt = res.optimal(C)
    p = res.params
    G = (p["alpha"] * p["A"] / (p["beta"] * p["B"])) ** (1 / (p["alpha"] + p["beta"]))
    # Closed form of Hoffmann et al. (2022), eq. 4; bounded scalar search to xatol 1e-10 in log N.
    np.testing.assert_allclose(n_opt, G * (C / 6) ** (p["beta"] / (p["alpha"] + p["beta"])), rtol=1e-6)
    np.testing.assert_allclose(6 * n_opt * d_opt, C, rtol=1e-12)
    # A user cost: the same budget written by hand gives the same allocation; another cost moves it.
    n_user, _ = res.optimal(C, cost=lambda n, d: 6 * n * d)
    np.testing.assert_allclose(n_user, n_opt, rtol=1e-6)
    n_dear, d_dear = res.optimal(C, cost=lambda n, d: 12 * n * d)  # twice the cost per token: half the budget
    np.testing.assert_allclose(n_dear, res.optimal(C / 2)[0], rtol=1e-6)
    np.testing.assert_allclose(12 * n_dear * d_dear, C, rtol=1e-9)


# ----------------------------------------------------------------------------------------------------------------------
# The annealing law
# ----------------------------------------------------------------------------------------------------------------------


def test_annealing_areas():
    s1, s2 = fit.annealing_areas(np.full(5, 0.1))
    np.testing.assert_allclose(s1, [0.1, 0.2, 0.3, 0.4, 0.5])
    np.testing.assert_array_equal(s2, 0.0)  # a constant rate anneals nothing
    lr = np.array([1.0, 1.0, 0.5, 0.5, 0.5])
    _, s2 = fit.annealing_areas(lr, decay=0.0)  # no momentum: m_i is the drop at step i, S2 the total drop so far
    np.testing.assert_allclose(s2, [0.0, 0.0, 0.5, 0.5, 0.5])
    _, s2 = fit.annealing_areas(lr, decay=0.5)  # m = 0, 0, .5, .25, .125
    np.testing.assert_allclose(s2, [0.0, 0.0, 0.5, 0.75, 0.875])


def test_annealing_law_recovered_and_predicts_another_schedule():
    steps = np.arange(1, 2001)
    every = slice(9, None, 10)  # every 10th step is fitted (a checkpoint), the areas summed over all
    constant = np.full(steps.size, 1e-2)
    cosine = 1e-2 * 0.5 * (1 + np.cos(np.pi * steps / steps.size))
    law = {"L0": 2.0, "A": 1.5, "alpha": 0.5, "C": 0.05}  # C S2 reaches 0.3 by the cosine's end

    def curve(lr):
        s1, s2 = fit.annealing_areas(lr)
        return s1, s2, law["L0"] + law["A"] * s1 ** -law["alpha"] - law["C"] * s2

    s1a, s2a, la = curve(constant)
    s1b, s2b, lb = curve(cosine)
    data = {"S1": np.concatenate([s1a[every], s1b[every]]), "S2": np.concatenate([s2a[every], s2b[every]]),
            "loss": np.concatenate([la[every], lb[every]])}
    res = fit.law("annealing", data)
    for k, v in law.items():
        assert res.params[k] == pytest.approx(v, rel=1e-4)  # exact data
    step = np.where(steps < 1500, 1e-2, 1e-3)
    s1c, s2c, lc = curve(step)
    np.testing.assert_allclose(res.predict(S1=s1c, S2=s2c), lc, rtol=1e-5)


# ----------------------------------------------------------------------------------------------------------------------
# Bad input: one sentence each
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, message", [
    ({"form": "chinchila"}, "unknown form 'chinchila'; the named forms are"),
    ({"x": {"N": "N", "D": "tokens"}}, "no column 'tokens' in the data"),
    ({"select": np.arange(48) < 5}, "the chinchilla form has 5 parameters and needs more points than that; got 5."),
    ({"y": "loss - 10"}, "non-positive values; the fit is on log y"),
    ({"x": {"N": "N - 1e7", "D": "D"}}, "variable N (N - 1e7) has 18 non-positive values; the chinchilla form takes"),
    ({"x": {"N": "__import__('os').getcwd()", "D": "D"}}, "may use only column names, numbers"),
    ({"loss": "l1"}, "unknown loss 'l1'"),
])
def test_bad_input_is_one_sentence(kwargs, message):
    args = {"form": "chinchilla", "x": {"N": "N", "D": "D"}, **kwargs}
    form = args.pop("form")
    with pytest.raises(ValueError) as e:
        fit.law(form, _sweep(seed=0), **args)
    text = str(e.value)
    assert message in text and text.endswith(".") and "\n" not in text


# ----------------------------------------------------------------------------------------------------------------------
# `dynsim fit`, and a published fit reproduced
# ----------------------------------------------------------------------------------------------------------------------


def test_cli_reproduces_the_published_chinchilla_replication(tmp_path, capsys):
    # Besiroglu et al. (2024), Table 1, "our estimate" from this data (the 5 highest losses dropped, Huber delta 1e-3
    # on log residuals summed, L-BFGS from a grid): E 1.82 (0.03), A 482.01 (124.58), B 2085.43 (1293.23),
    # alpha 0.3478 (0.02), beta 0.3658 (0.02), standard errors in parentheses. The objective is flat along the A-B
    # ridge their standard errors describe, so optimisers stop at slightly different points on it: agreement is
    # asked within a tenth of each standard error (and E to its two published digits).
    out = tmp_path / "fit.json"
    code = cli.main([ "fit", str(DATA), "--form", "chinchilla", "--x", "N=Model Size,D=Training FLOP/(6*Model Size)",
                      "--y", "loss", "--drop-top", "5", "--json", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "alpha" in printed and "objective" in printed
    got = json.loads(out.read_text())
    assert set(got) >= {"form", "params", "ci", "objective", "n_points"}
    assert got["form"] == "chinchilla" and got["n_points"] == 240
    published = {"A": (482.01, 124.58), "B": (2085.43, 1293.23), "alpha": (0.3478, 0.02), "beta": (0.3658, 0.02)}
    for k, (value, se) in published.items():
        assert abs(got["params"][k] - value) < 0.1 * se, (k, got["params"][k])
    assert round(got["params"]["E"], 2) == 1.82
    assert (tmp_path / "fit.png").stat().st_size > 0


def test_cli_fits_a_results_folder_and_reports_bad_input(tmp_path, capsys):
    width = np.array([16.0, 32.0, 64.0, 128.0, 256.0, 512.0])
    seed = np.arange(3)
    loss = (0.1 + 2.0 * width**-0.8)[None, :] * np.exp(0.01 * np.random.default_rng(0).standard_normal((3, 6)))
    ds = xr.Dataset({"loss": (("seed", "width"), loss)}, coords={"seed": seed, "width": width})
    io.write_results(ds, tmp_path / "results.nc")
    code = cli.main(["fit", str(tmp_path), "--form", "power", "--x", "x=width", "--y", "loss", "--runs", "seed",
                     "--bootstrap", "50", "--figure", str(tmp_path / "f.png")])
    assert code == 0
    assert "3 runs" in capsys.readouterr().out
    for argv, message in [
        (["--form", "powr", "--x", "x=width"], "unknown form 'powr'"),
        (["--form", "power", "--x", "x=depth"], "no column 'depth'"),
        (["--form", "power", "--x", "width"], "--x takes VAR=COLUMN pairs"),
    ]:
        assert cli.main(["fit", str(tmp_path), *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1
    assert cli.main(["fit", str(tmp_path / "none.csv"), "--form", "power", "--x", "x=w"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_width_scaling_joint_law_follows_the_deterministic_equivalent():
    # The equivalent itself, with 2% seed noise, stands in for the solves on the four curves' cells: the joint law
    # fitted across them must find the resolution-limited exponents and lie near the equivalent everywhere.
    from dynsim import ridge
    from dynsim.experiments import width_scaling as ws
    from dynsim.theory import kernel_regression as kr

    analysis = {**ws.DEFAULTS["analysis"], **ws.QUICK["analysis"]}
    cells = sorted({(int(n), int(p)) for c in ws.CURVES for n, p in zip(*ws.curve_points(analysis, c))})
    widths, n_trains = sorted({n for n, _ in cells}), sorted({p for _, p in cells})
    seeds = np.arange(6)
    loss = np.full((len(widths), len(n_trains), seeds.size), np.nan)
    rng = np.random.default_rng(0)
    lam, coefs = ridge.PowerLawRF(n_latent=analysis["n_latent"], alpha=analysis["alpha"], beta=analysis["beta"],
                                  noise_var=analysis["noise_var"]).spectrum()
    for n, p in cells:
        de = kr.rf_excess_risk(lam, coefs, np.array([n]), np.array([p]), analysis["ridge"], analysis["noise_var"])[0]
        loss[widths.index(n), n_trains.index(p)] = de * np.exp(0.02 * rng.standard_normal(seeds.size))
    ds = xr.Dataset({"test_loss": (("width", "n_train", "seed"), loss)},
                    coords={"width": widths, "n_train": n_trains, "seed": seeds})
    law, rows = ws.joint_law(ds, analysis)
    assert len(rows) == len(cells)
    # The equivalent's own slope over these sizes is 1.458 against the asymptotic 1.5 (the report's table), and the
    # 2% seed noise moves a fitted exponent by a few hundredths: 0.1 (measured: 1.46 and 1.49).
    for k in ("alpha", "beta"):
        assert abs(law.params[k] - 1.5) < 0.1, (k, law.params[k])
    # An additive surface describes the variance-limited cells' 1/n approach with the resolution-limited exponent:
    # measured 6.8% from the equivalent at worst (8% on the simulated quick run); 12% leaves room for the noise.
    for n, p, _, fitted, equivalent in rows:
        assert abs(fitted / equivalent - 1) < 0.12, (n, p, fitted, equivalent)
