"""The sharpness-cost benchmark runs at smoke size and reports the ratio docs/measurements.md describes."""

import json
import math

import pytest

from benchmarks.sharpness import main
from dynsim.observables import _registry


@pytest.mark.slow
def test_sharpness_benchmark_smoke(tmp_path, monkeypatch):
    # --breakdown registers a one-product observable
    monkeypatch.setattr(_registry, "_REGISTRY", dict(_registry._REGISTRY))
    path = tmp_path / "s.json"
    out = main(["--smoke", "--repeat", "1", "--breakdown", "--json", str(path)])
    saved = json.loads(path.read_text())
    assert saved["members"] == 4  # one lr, two seeds (the experiment's spec needs two), one momentum, GD and Adam
    assert "preconditioned_sharpness" in saved["observables"]
    assert saved["hvp"] == "fd"  # the experiment's own products: forward differences of the tanh network's gradient
    for name in ("plain", "sharpness"):
        assert saved["best_s"][name] > 0 and saved["compile_s"][name] > 0
    # Recording Hessian-vector products cannot be free: a ratio at or below 1 would mean nothing was recorded.
    assert math.isfinite(saved["ratio"]) and saved["ratio"] > 1
    assert out["ratio"] == saved["ratio"]
    # The breakdown timed a one-product twin of the sharpness observable and split the cost with it.
    assert saved["best_s"]["one_product"] > 0 and saved["compile_s"]["one_product"] > 0
    assert math.isfinite(saved["per_product_steps"]) and math.isfinite(saved["fixed_steps"])
