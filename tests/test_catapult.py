"""The catapult experiment: phase classification, brackets and their bisection, the exact finite-width uv dynamics
that set the model error, spec validation before training, the quick run and wrongly simulated datasets."""

import jax
import numpy as np
import pytest
import xarray as xr
from jax.flatten_util import ravel_pytree

from dynsim import experiments
from dynsim import param as _param
from dynsim.experiments import catapult
from dynsim.models import MLP
from dynsim.padding import width_mask
from dynsim.spec import SpecError
from dynsim.theory import stability


def test_classify_reads_the_phase_off_the_loss_trajectory():
    lazy = np.array([1.0, 0.5, 0.1, 0.01])
    catapulted = np.array([1.0, 30.0, 2.0, 0.01])  # rises by more than PEAK_FACTOR, then converges
    stuck = np.array([1.0, 30.0, 5.0, 3.0])  # never comes back below its start
    phase = catapult.classify(np.stack([lazy, catapulted, stuck, lazy]), np.array([False, False, False, True]))
    np.testing.assert_array_equal(phase, [0, 1, 2, 2])


def test_classify_mlp_reads_a_catapult_off_a_rise_between_records():
    lazy = np.array([1.0, 0.5, 0.1, 0.01])
    wobble = np.array([1.0, 0.5, 0.51, 0.01])  # a 2% rise: float32 round-off, not a catapult
    catapulted = np.array([1.0, 0.1, 0.5, 0.01])  # never above its start, yet it rose 5x: a catapult
    converged = np.array([1.0, 1e-6, 1.25e-13, 1.43e-13])  # +14% at the float32 floor (measured): round-off
    phase = catapult.classify_mlp(np.stack([lazy, wobble, catapulted, catapulted, converged]),
                                  np.array([False, False, False, True, False]))
    np.testing.assert_array_equal(phase, [0, 0, 1, 2, 0])
    assert catapult.classify(catapulted, np.array(False)) == 0  # the uv model's peak test misses it


@pytest.mark.slow
def test_mlp_lambda0_is_the_top_eigenvalue_of_the_loss_hessian_at_zero_residual(x64):
    # With targets equal to the outputs at init the residual term of the Hessian vanishes and the loss Hessian is
    # exactly the Gauss-Newton matrix J^T J / P, whose top eigenvalue ntk_lambda0 returns. float64: the comparison
    # is of two exact expressions, agreeing to round-off.
    model, width, seed = MLP(d_in=3, depth=3, act="relu"), 6, 2
    x = jax.random.normal(jax.random.key(0), (3, 5))
    scales = model.scales(width, _param.get("ntk").table("sgd"), 1.0)
    mask = width_mask(width, width)
    params = model.init(jax.random.key(seed), width, width, scales.std)
    flat, unravel = ravel_pytree(params)
    apply = lambda p: model.apply(unravel(p), x, scales.mult, mask)
    y = apply(flat)
    hessian = jax.jit(jax.hessian(lambda p: model.loss(apply(p), y)))(flat)
    expected = np.linalg.eigvalsh(np.asarray(hessian))[-1]
    # float64: one eigenvalue two ways (J J^T / P and the Hessian), round-off ~1e-15.
    np.testing.assert_allclose(catapult.ntk_lambda0(model, x, width, [seed]), [expected], rtol=1e-10)


def test_bracket_is_the_first_change_of_phase():
    lr = np.array([0.5, 1.9, 2.1, 3.0, 4.2, 4.5, np.nan])
    phase = np.array([0, 0, 1, 1, 2, 1, 0])  # a catapult above the first divergence does not move the bracket
    assert catapult.bracket(lr, phase, 0) == (1.9, 2.1)
    assert catapult.bracket(lr, phase, 1) == (3.0, 4.2)
    assert np.isnan(catapult.bracket(lr[:2], phase[:2], 0)).all()  # no upper phase: no boundary
    assert np.isnan(catapult.bracket(lr[2:4], phase[2:4], 0)).all()  # nothing below the first catapult


def test_boundary_is_the_mean_midpoint_and_the_hull_of_the_seeds():
    mid, ci = catapult.boundary(np.array([[1.9, 2.1], [2.0, 2.4], [np.nan, np.nan]]))
    # (2.0 + 2.2) / 2 and the hull: float64 round-off (default rel 1e-6)
    assert mid == pytest.approx(2.1) and ci == (1.9, 2.4)
    assert np.isnan(catapult.boundary(np.full((2, 2), np.nan))[0])


def _synthetic(widths, lrs, seeds, lam0, edges=(2.0, 4.0)):
    """A sweep of one width whose members are lazy below ``lr * lambda0 = edges[0]``, catapult up to ``edges[1]``
    and diverge above, with loss trajectories that :func:`catapult.classify` reads that way; ``lam0[seed]``."""
    lam0 = np.asarray(lam0, float)[None, list(seeds)]
    x = np.asarray(lrs)[None, :, None] * lam0[:, None, :]
    phase = np.where(x < edges[0], 0, np.where(x < edges[1], 1, 2))
    shapes = np.array([[1.0, 0.5, 0.1], [1.0, 3.0, 0.1], [1.0, np.nan, np.nan]])
    return xr.Dataset({"loss": (("width", "lr", "seed", "step"), shapes[phase]),
                       "diverged_at": (("width", "lr", "seed"), np.where(phase == 2, 1, -1)),
                       "lambda0": (("width", "seed"), lam0)},
                      coords={"width": widths, "lr": lrs, "seed": seeds, "step": [0, 1, 2]})


def test_bisect_halves_every_seeds_bracket_of_both_boundaries():
    lam0 = [1.0, 1.37]  # of seeds 0 and 1
    run = lambda widths, lrs, seeds: _synthetic(widths, lrs, seeds, lam0)  # noqa: E731
    lrs = np.linspace(0.3, 6.0, 12)
    grid = _synthetic([64], lrs, [0, 1], lam0)
    rounds = 5
    extras, _ = catapult.bisect(grid, run, lowers=(0, 1), rounds=rounds, classify_fn=catapult.classify)
    part = xr.merge([grid, extras])
    for lower, edge in ((0, 2.0), (1, 4.0)):
        b = catapult.member_brackets(part, lower, catapult.classify)[0]  # [seed, 2] in lr * lambda0
        assert np.all((b[:, 0] < edge) & (edge <= b[:, 1])), b  # each boundary is assigned to the upper phase
        # each round halves the grid's bracket; float64 round-off of the midpoints (1e-12)
        np.testing.assert_allclose(b[:, 1] - b[:, 0], (lrs[1] - lrs[0]) * np.asarray(lam0) / 2**rounds,
                                   rtol=1e-12)
        mid, ci = catapult.boundary(b)
        assert ci[0] < mid < ci[1] and ci[0] < edge <= ci[1]
    assert np.isfinite(extras["extra_lr"]).sum() == 2 * 2 * rounds  # one member per seed, boundary and round


def test_uv_gd_is_gradient_descent_on_the_uv_model():
    # The two-dimensional map against GD on the weights themselves, in float64, below, inside and at the top of the
    # catapult phase (lr lambda0 = 1.5, 2.5, 3.5; the loss peaks 12x and 77x above its start in the last two): the
    # map is exact algebra, so the two agree to round-off amplified by the catapult's growth (measured <= 4e-15
    # over 40 steps; 1e-12 allows for other BLAS summation orders).
    rng = np.random.default_rng(0)
    n, x, y = 64, 1.3, -0.7
    u0, v0 = rng.normal(size=(2, n))
    lam0 = (u0 @ u0 + v0 @ v0) * x**2 / n
    for x_lr in (1.5, 2.5, 3.5):
        lr, u, v, fs, lams = x_lr / lam0, u0.copy(), v0.copy(), [], []
        for _ in range(41):
            f = v @ u * x / np.sqrt(n)
            fs.append(f)
            lams.append((u @ u + v @ v) * x**2 / n)
            u, v = u - lr * (f - y) * x * v / np.sqrt(n), v - lr * (f - y) * x * u / np.sqrt(n)
        f_map, lam_map = stability.uv_gd(lr, lam0, fs[0], y, x**2 / n, 40)
        np.testing.assert_allclose(f_map, fs, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(lam_map, lams, rtol=1e-12)


def test_exact_dynamics_boundaries_tend_to_2_and_4():
    # map_brackets at the infinite-width lambda0 = 2 x^2 and f0 = 0, widths 2^7, 2^11, 2^15. The lazy / catapult
    # boundary sits where the catapult's peak reaches PEAK_FACTOR times the initial loss: from the conserved
    # (lr lambda - 2)^2 + 2 lr^2 x^2 r^2 / n of the continuum limit near 2, the peak is 1 + eps^2 n / (2 lr^2 x^2 r0^2)
    # at lr lambda0 = 2 + eps, so eps = sqrt(2 (PEAK_FACTOR - 1)) |r0| / (x sqrt(n)) (lr = 1 / x^2 at the edge).
    # That approximation errs by O(eps) relatively: measured 10%, 3% and 0.7% at the three widths, so 15%. The
    # catapult / divergent boundary moves by O(1/n) (measured -0.030, -0.0019, -1.2e-4): 16x per 16x width.
    _, spec = experiments.resolve_spec("catapult", quick=True)
    data = experiments.build(spec)[1].make()
    x, y = float(np.asarray(data.x_train)[0, 0]), float(np.asarray(data.y_train)[0, 0])
    widths = np.array([2**7, 2**11, 2**15])
    part = xr.Dataset({"lambda0": (("width", "seed"), np.full((3, 1), 2 * x**2)),
                       "f0": (("width", "seed"), np.zeros((3, 1)))},
                      coords={"width": widths, "seed": [0], "step": np.arange(spec["train"]["steps"] + 1)})
    edges = catapult.map_brackets(part, spec)[:, 0]
    continuum = np.sqrt(2 * (catapult.PEAK_FACTOR - 1)) * abs(y) / (x * np.sqrt(widths))
    np.testing.assert_allclose(edges[:, 0] - 2, continuum, rtol=0.15)
    top = np.abs(edges[:, 1] - 4)
    assert np.all(top[1:] < top[:-1] / 8) and top[0] < 0.05, top


@pytest.mark.parametrize("sets,match", [
    (["model.kind='mlp'"], "model.kind"),
    (["task.n_train=4"], "one scalar sample"),
    (["param=['mup']"], "sweep.param"),
    (["momentum=[0.5]"], "sweep.momentum"),
    (["lr=[0.5, 1.0]"], "sweep.lr"),  # too few learning rates to hold three phases
    (["lr=[0.1, 0.2, 0.3]"], "sweep.lr"),  # never reaches the catapult / divergent boundary
    (["train.observables=['loss']"], "train.observables"),
    (["train.batch_size=1"], "train.batch_size"),
    (["analysis.mlp_width=[]"], "analysis.mlp_width"),
    (["analysis.mlp_lr_lambda0=[4.0, 2.0, 8]"], "analysis.mlp_lr_lambda0"),
    (["analysis.mlp_lr_lambda0=[2.5, 12.0, 8]"], "analysis.mlp_lr_lambda0"),  # no lazy member below 2
    (["analysis.bisect_rounds=-1"], "analysis.bisect_rounds"),
    (["analysis.mlp_steps=61"], "multiple"),
    (["analysis.mlp_dpth=3"], "unknown spec key 'analysis.mlp_dpth'"),
])
def test_spec_validation_before_training(sets, match):
    with pytest.raises(SpecError, match=match) as err:
        experiments.resolve_spec("catapult", quick=True, sets=sets)
    assert "\n" not in str(err.value)


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """One quick run (20-30 s on 2 shared cores) for the slow tests of this module."""
    out = tmp_path_factory.mktemp("catapult")
    return experiments.run("catapult", quick=True, out=out, progress=False, log=lambda s: None)


@pytest.mark.slow
def test_catapult_quick(quick):
    out, summary = quick
    assert (out / "phase_diagram.png").exists() and (out / "report.md").exists()
    assert (out / "mlp_phase_diagram.png").exists()
    checks = summary["checks"]
    # two uv boundaries at each of three widths, and the ReLU MLP's lazy / catapult boundary at width 1024
    assert len(checks) == 7 and "ReLU MLP" in checks[-1]["name"]
    for c in checks:
        # Lewkowycz et al. (2020): lazy below lr*lambda0 = 2, catapult up to 4 (uv), divergence above
        assert c["verdict"] == "agrees", c
        assert c["ci"][0] < c["measured"] < c["ci"][1]  # bisected brackets: no zero-width interval
        assert c["competing"] in (2.0, 4.0) and c["competing"] != c["predicted"]
        assert 0 < c["tolerance"] < 0.3, c  # a model error computed at the width, not a flat band
    uv_errors = [c["tolerance"] for c in checks if c["name"].startswith("lazy")]
    assert uv_errors == sorted(uv_errors, reverse=True)  # the exact dynamics' shift falls with width
    for regime in summary["regimes"].values():
        assert "lazy" in regime and "catapult" in regime and "divergent" in regime
        assert "disagrees" not in regime and "inconclusive" not in regime
    ds = xr.load_dataset(out / "results.nc")
    rows = catapult.analyse_mlp(catapult.mlp_part(ds), summary["spec"])[2]
    for n, _, _, lazy, _, _, top, _ in rows:
        # ReLU MLPs catapult over a band above the lazy edge and diverge beyond it (measured 6-8 in lr*lambda0 at
        # quick size; the literature's 12 for deep ReLU nets is a figure in the report, not asserted)
        assert lazy + 1.0 < top, (n, lazy, top)
    report = (out / "report.md").read_text()
    # the literature's figure and each width's measured boundary stand side by side in the report
    assert f"about {catapult.LITERATURE_RELU_MAX:g} / lambda0" in report
    for n, *_, top, _ in rows:
        assert f"{top:.2f} at width {n}" in report


@pytest.mark.slow
@pytest.mark.parametrize("wrong", ["lambda0 doubled", "lr labels shuffled"])
def test_wrong_simulations_do_not_agree(quick, wrong, tmp_path):
    out, summary = quick
    ds = xr.load_dataset(out / "results.nc")
    if wrong == "lambda0 doubled":  # a kernel mis-scaled by 2: the lazy / catapult boundary lands on 4
        ds = ds.assign(lambda0=2 * ds["lambda0"], mlp_lambda0=2 * ds["mlp_lambda0"])
    else:  # every grid member's trajectory attributed to another learning rate
        rng = np.random.default_rng(0)
        ds = ds.assign_coords(lr=ds["lr"].values[rng.permutation(ds.sizes["lr"])],
                              mlp_lr=ds["mlp_lr"].values[rng.permutation(ds.sizes["mlp_lr"])])
    checks = catapult.analyse(ds, summary["spec"], tmp_path)["checks"]
    verdicts = [c.verdict for c in checks]
    assert "agrees" not in verdicts, verdicts
    if wrong == "lambda0 doubled":
        assert set(verdicts) == {"disagrees"}
        lazy = [c.measured for c in checks if "lazy / catapult" in c.name]
        assert all(abs(m - 4.0) < 0.3 for m in lazy), lazy  # on the competitor
