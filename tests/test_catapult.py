"""The catapult experiment: phase classification, boundary estimates, spec validation and the quick run."""

import json

import numpy as np
import pytest

from dynsim import experiments
from dynsim.experiments import catapult
from dynsim.spec import SpecError


def test_classify_reads_the_phase_off_the_loss_trajectory():
    lazy = np.array([1.0, 0.5, 0.1, 0.01])
    catapulted = np.array([1.0, 30.0, 2.0, 0.01])  # rises by more than PEAK_FACTOR, then converges
    stuck = np.array([1.0, 30.0, 5.0, 3.0])  # never comes back below its start
    phase = catapult.classify(np.stack([lazy, catapulted, stuck, lazy]), np.array([False, False, False, True]))
    np.testing.assert_array_equal(phase, [0, 1, 2, 2])


def test_boundary_is_the_midpoint_of_the_gap():
    x = np.array([0.5, 1.9, 2.1, 3.0, 4.2])
    phase = np.array([0, 0, 1, 1, 2])
    mid, ci = catapult.boundary(x, phase, 0)
    assert mid == pytest.approx(2.0) and ci == (1.9, 2.1)
    assert np.isnan(catapult.boundary(x[:2], phase[:2], 0)[0])  # no upper phase: no boundary


@pytest.mark.parametrize("sets,match", [
    (["model.kind='mlp'"], "model.kind"),
    (["task.n_train=4"], "one scalar sample"),
    (["param=['mup']"], "sweep.param"),
    (["momentum=[0.5]"], "sweep.momentum"),
])
def test_spec_validation(sets, match):
    with pytest.raises(SpecError, match=match):
        experiments.resolve_spec("catapult", quick=True, sets=sets)


def test_catapult_quick(tmp_path):
    out, summary = experiments.run("catapult", quick=True, out=tmp_path, progress=False, log=lambda s: None)
    assert json.loads((out / "summary.json").read_text())["experiment"] == "catapult"
    assert (out / "phase_diagram.png").exists() and (out / "report.md").exists()
    checks = summary["checks"]
    assert len(checks) == 6  # two boundaries at each of three widths
    # Lewkowycz et al. (2020): lazy below lr*lambda0 = 2, catapult up to 4, divergence above; measured 1.92-4.08.
    for c in checks:
        assert c["agrees"], c
    for regime in summary["regimes"].values():
        assert "lazy" in regime and "catapult" in regime and "divergent" in regime
