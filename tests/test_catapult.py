"""The catapult experiment: phase classification, boundary estimates, spec validation and the quick run."""

import json

import jax
import numpy as np
import pytest
import xarray as xr
from jax.flatten_util import ravel_pytree

from dynsim import experiments
from dynsim import param as _param
from dynsim.experiments import catapult
from dynsim.models import MLP, width_mask
from dynsim.spec import SpecError


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
    phase = catapult.classify_mlp(np.stack([lazy, wobble, catapulted, catapulted]),
                                  np.array([False, False, False, True]))
    np.testing.assert_array_equal(phase, [0, 0, 1, 2])
    assert catapult.classify(catapulted, np.array(False)) == 0  # the uv model's peak test misses it


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
    hessian = jax.hessian(lambda p: model.loss(apply(p), y))(flat)
    expected = np.linalg.eigvalsh(np.asarray(hessian))[-1]
    # float64: one eigenvalue two ways (J J^T / P and the Hessian), round-off ~1e-15.
    np.testing.assert_allclose(catapult.ntk_lambda0(model, x, width, [seed]), [expected], rtol=1e-10)


def test_boundary_is_the_midpoint_of_the_gap():
    x = np.array([0.5, 1.9, 2.1, 3.0, 4.2])
    phase = np.array([0, 0, 1, 1, 2])
    mid, ci = catapult.boundary(x, phase, 0)
    assert mid == pytest.approx(2.0) and ci == (1.9, 2.1)  # (1.9 + 2.1) / 2: float64 round-off (default rel 1e-6)
    assert np.isnan(catapult.boundary(x[:2], phase[:2], 0)[0])  # no upper phase: no boundary


@pytest.mark.parametrize("sets,match", [
    (["model.kind='mlp'"], "model.kind"),
    (["task.n_train=4"], "one scalar sample"),
    (["param=['mup']"], "sweep.param"),
    (["momentum=[0.5]"], "sweep.momentum"),
    (["analysis.mlp_width=[]"], "analysis.mlp_width"),
    (["analysis.mlp_lr_lambda0=[4.0, 2.0, 8]"], "analysis.mlp_lr_lambda0"),
    (["analysis.mlp_steps=61"], "multiple"),
    (["analysis.mlp_dpth=3"], "unknown spec key 'analysis.mlp_dpth'"),
])
def test_spec_validation(sets, match):
    with pytest.raises(SpecError, match=match):
        experiments.resolve_spec("catapult", quick=True, sets=sets)


def test_catapult_quick(tmp_path):
    out, summary = experiments.run("catapult", quick=True, out=tmp_path, progress=False, log=lambda s: None)
    assert json.loads((out / "summary.json").read_text())["experiment"] == "catapult"
    assert (out / "phase_diagram.png").exists() and (out / "report.md").exists()
    assert (out / "mlp_phase_diagram.png").exists()
    checks = summary["checks"]
    # two uv boundaries at each of three widths, and the ReLU MLP's lazy / catapult boundary at width 1024
    assert len(checks) == 7 and "ReLU MLP" in checks[-1]["name"]
    # Lewkowycz et al. (2020): lazy below lr*lambda0 = 2, catapult up to 4 (uv), divergence above; measured 1.92-4.08.
    for c in checks:
        assert c["agrees"], c
    for regime in summary["regimes"].values():
        assert "lazy" in regime and "catapult" in regime and "divergent" in regime
    ds = xr.load_dataset(out / "results.nc")
    mlp = catapult.mlp_part(ds)
    _, rows = catapult.analyse_mlp(mlp)[1:]
    for n, _, _, lazy, _, top, _ in rows:
        # ReLU MLPs catapult over a band above the lazy edge and diverge beyond it (measured 6-8 in lr*lambda0 at
        # quick size; the literature's 12 for deep ReLU nets is a figure in the report, not asserted)
        assert lazy + 1.0 < top, (n, lazy, top)
    report = (out / "report.md").read_text()
    # the literature's figure and each width's measured boundary stand side by side in the report
    assert f"about {catapult.LITERATURE_RELU_MAX:g} / lambda0" in report
    for n, *_, top, _ in rows:
        assert f"{top:.2f} at width {n}" in report
