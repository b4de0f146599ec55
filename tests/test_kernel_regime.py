"""The kernel-regime experiment: quick size end to end, every check agreeing, and one-sentence spec errors."""

import json

import pytest

from dynsim import experiments
from dynsim.spec import SpecError


def test_quick_run_agrees_with_theory(tmp_path):
    out, summary = experiments.run("kernel-regime", quick=True, out=tmp_path, progress=False, log=lambda m: None)
    checks = {c["name"]: c for c in summary["checks"]}
    assert all(c["agrees"] for c in checks.values()), checks
    assert len(checks) == 5
    # The two parametrizations are told apart: the lazy kernel exponent is far from muP's.
    assert checks["kernel movement exponent, ntk"]["ci"][0] > checks["kernel movement exponent, mup"]["ci"][1] + 0.3
    assert summary["regimes"]["ntk"].startswith("lazy") and summary["regimes"]["mup"].startswith("feature")
    assert json.loads((out / "summary.json").read_text())["experiment"] == "kernel-regime"
    for name in ("movement_vs_width.png", "test_loss.png", "ntk_spectrum.png", "report.md"):
        assert (out / name).stat().st_size > 0


@pytest.mark.parametrize("sets,key", [
    (["model.depth=3"], "model.kind"),
    (["model.act='tanh'"], "model.act"),
    (["sweep.momentum=[0.5]"], "sweep.momentum"),
    (["sweep.seed=[0]"], "sweep.width"),
    (["sweep.lr=[0.1, 0.5]"], "sweep.lr"),
    (["sweep.param=['sp']"], "sweep.param"),
    (["train.observables=['loss']"], "train.observables"),
])
def test_spec_errors_are_one_sentence(sets, key):
    with pytest.raises(SpecError, match=key.replace(".", r"\.")) as err:
        experiments.resolve_spec("kernel-regime", quick=True, sets=sets)
    assert str(err.value).count(". ") == 0 and "\n" not in str(err.value)
