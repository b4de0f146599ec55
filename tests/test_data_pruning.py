"""Data pruning in the teacher-student perceptron: the replica theory, the exact max-margin solver, the spec's
refusals, and the experiment at quick size with simulations that must fail its checks.

Measured with ``dynsim run data-pruning --quick`` (N = 100 and 50, 6 seeds; simulations 9-11 s, theory 5-7 s on
2 cores): unpruned exponent -0.694 [-0.737, -0.648] against the theory's -0.711 (Hebbian competitor -0.5); frontier
exponent -1.61 [-1.68, -1.26] against -1.48 (unpruned -0.82); log(hard / easy) 0.851 [0.783, 0.935] against 0.857
with scarce data and -0.669 [-0.764, -0.586] against -0.735 with abundant data; log(pruned / unpruned) at probe angle
0.4 -0.63 [-0.80, -0.47] against -0.48 (the perfect probe's -1.58): every check agrees.
"""

import math

import numpy as np
import pytest

from dynsim import experiments
from dynsim.experiments import data_pruning
from dynsim.spec import SpecError
from dynsim.theory import data_pruning as theory


def test_unpruned_theory_recovers_gardners_asymptote():
    # The optimal-stability perceptron's error tends to 0.50 / alpha (Engel & Van den Broeck 2001); at alpha = 64
    # the next-order term is 0.1% of it (0.5003 at 64 against 0.4997 at 16, quadrature 24 x 48 nodes).
    assert 64 * theory.test_error(64.0) == pytest.approx(0.50, abs=2e-3)
    # Below the asymptote the error is larger than 0.5 / alpha would say, and it decreases with alpha.
    errs = theory.test_error(np.array([1.0, 2.0, 4.0]))
    assert np.all(np.diff(errs) < 0) and errs[0] > 0.25


def test_theory_symmetries_and_limits():
    # A perfect probe leaves the student no reason to lean along another direction: rho = 0 by symmetry.
    assert theory.kept_overlaps(2.0, 0.5, 0.0, "hard")[1] == 0.0
    # An imperfect probe: the student picks up the probe's direction, so rho differs from 0.
    assert abs(theory.kept_overlaps(4.0, 0.8, 0.4, "hard")[1]) > 1e-3
    # Keeping the easy half loses against keeping the hard half with abundant data, and wins with scarce data.
    assert theory.test_error(8.0, 0.5, 0.0, "hard") < theory.test_error(8.0, 0.5, 0.0, "easy")
    assert theory.test_error(0.5, 0.5, 0.0, "hard") > theory.test_error(0.5, 0.5, 0.0, "easy")


@pytest.mark.parametrize("kwargs, words", [
    (dict(prune=1.0), "pruning fraction"), (dict(prune=-0.1), "pruning fraction"),
    (dict(theta=2.0), "probe angle"), (dict(theta=-0.1), "probe angle"), (dict(mode="middle"), "mode"),
])
def test_theory_refuses_bad_input_in_one_sentence(kwargs, words):
    with pytest.raises(ValueError, match=words) as info:
        theory.test_error(1.0, **kwargs)
    assert str(info.value).endswith(".") and str(info.value).count(". ") == 0


@pytest.mark.parametrize("kwargs, words", [(dict(prunes=[0.0, 1.0]), "pruning fraction"),
                                            (dict(thetas=[0.0, 1.6]), "probe angle")])
def test_simulate_refuses_bad_input_in_one_sentence(kwargs, words):
    args = dict(dim=8, alphas=[1.0], prunes=[0.0], thetas=[0.0], seeds=[0]) | kwargs
    with pytest.raises(ValueError, match=words) as info:
        data_pruning.simulate(**args, progress=False)
    assert str(info.value).count(". ") == 0


def test_max_margin_solver_satisfies_the_kkt_conditions():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((60, 20))
    g = np.sign(x[:, :1]) * x / math.sqrt(20)
    w = data_pruning.max_margin(g)
    margins = g @ w
    # Feasible with margin 1 (float64 NNLS; 1e-9 leaves room for its residual tolerance) ...
    assert margins.min() > 1 - 1e-9
    support = margins < 1 + 1e-7
    # ... and optimal: w lies in the cone of the support vectors' rows (stationarity with multipliers >= 0).
    coef, *_ = np.linalg.lstsq(g[support].T, w, rcond=None)
    np.testing.assert_allclose(g[support].T @ coef, w, atol=1e-8)
    assert coef.min() > -1e-8
    # A perturbation of w that keeps every margin >= 1 is longer: w has the least norm.
    for _ in range(20):
        other = w + 0.05 * rng.standard_normal(20)
        other = other / (g @ other).min()
        assert np.linalg.norm(other) >= np.linalg.norm(w) - 1e-12


@pytest.mark.parametrize("sets, key", [
    (["analysis.prune=[0.0, 1.0]"], "analysis.prune"),
    (["analysis.prune=[0.0, 1.5]"], "analysis.prune"),
    (["analysis.theta=[0.0, 2.0]"], "analysis.theta"),
    (["analysis.theta=[-0.1, 0.2]"], "analysis.theta"),
    (["analysis.prune=[0.5, 0.8]"], "analysis.prune"),  # no unpruned baseline
    (["analysis.seeds=1"], "analysis.seeds"),
    (["model.depth=2"], "model"),
])
def test_bad_specs_are_refused_in_one_sentence(sets, key):
    with pytest.raises(SpecError, match=key.replace(".", "\\.")) as info:
        experiments.resolve_spec("data-pruning", quick=True, sets=sets)
    assert str(info.value).endswith(".") and str(info.value).count(". ") == 0


def test_listed_with_its_paper():
    assert "Sorscher" in experiments.get("data-pruning").doc


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("data-pruning")
    # Quick size with 4 seeds instead of 6 (the CIs widen by sqrt(6/4); every check still agrees).
    return experiments.run("data-pruning", quick=True, out=out, sets=["analysis.seeds=4"], progress=False,
                           log=lambda s: None)


@pytest.mark.slow
def test_data_pruning_quick(quick):
    out, summary = quick
    for name in ("report.md", "summary.json", "results.nc", "power_law.png", "frontier.png", "easy_vs_hard.png",
                 "probe_angle.png"):
        assert (out / name).exists(), name
    assert len(summary["checks"]) == 5
    for c in summary["checks"]:
        assert c["verdict"] == "agrees", c


@pytest.mark.slow
def test_a_wrong_simulation_fails_its_checks(quick):
    from dynsim import io

    out, summary = quick
    ds = io.load(out)
    verdicts = lambda d: {c.name: c.verdict for c in data_pruning.checks(d)[0]}  # the analysis without figures
    # Hard and easy examples exchanged: the mode that should win loses, at both ends.
    swapped = ds.assign(test_error=ds["test_error"].assign_coords(mode=["easy", "hard"]).sel(mode=["hard", "easy"]))
    v = verdicts(swapped)
    assert v["log(hard / easy), scarce data"] == "disagrees", v
    assert v["log(hard / easy), abundant data"] == "disagrees", v
    # The probe's angle ignored (every angle's students those of the perfect probe): the gain does not fade.
    perfect = ds["test_error"].isel(theta=[0] * ds.sizes["theta"]).assign_coords(theta=ds["theta"].values)
    assert verdicts(ds.assign(test_error=perfect))["log(pruned / unpruned), largest angle"] == "disagrees"
    # A Hebbian student (w = mean of y x over the kept examples) in place of the max-margin one.
    hebb = _hebbian(ds)
    v = verdicts(ds.assign(test_error=hebb))
    assert v["unpruned error exponent"] != "agrees", v


def _hebbian(ds):
    """Test errors of the Hebbian student on the same kind of data (its error falls as alpha^-1/2)."""
    err = ds["test_error"].copy()
    alphas, dims = ds["alpha"].values, ds["dim"].values
    for d, n in enumerate(dims):
        rng = np.random.default_rng(int(n))
        for a, alpha in enumerate(alphas):
            p = int(round(alpha * n))
            x = rng.standard_normal((ds.sizes["seed"], p, int(n)))
            w = (np.sign(x[..., :1]) * x).mean(1)
            e = np.arccos(w[:, 0] / np.linalg.norm(w, axis=1)) / np.pi
            err[d, :, :, :, :, a] = e[:, None, None, None]
    return err
