"""The hypergradient benchmark runs at smoke size and reports the cost ratios of docs/measurements.md."""

import json
import math

import pytest

from benchmarks.hypergrad import main


@pytest.mark.slow
def test_hypergrad_benchmark_smoke(tmp_path):
    path = tmp_path / "h.json"
    out = main(["--smoke", "--json", str(path)])
    saved = json.loads(path.read_text())
    assert set(saved["modes"]) == {"forward_1", "reverse_3"}  # the smoke size; the full one adds forward_2, _3
    for name, r in saved["modes"].items():
        assert math.isfinite(r["ratio"]) and r["ratio"] > 0, (name, r)
    m = saved["memory"]
    assert m["steps"] == 100 and m["remat_every"] == 10
    # Reverse mode holds more than a plain step (the checkpoints and their cotangents): a ratio at or below 1 would
    # mean nothing was differentiated; the estimate that refuses groups before compiling must not undercount it.
    assert m["reverse_ratio"] > 1 and m["estimate_bytes"] >= m["reverse_bytes"]
    assert out["memory"] == saved["memory"]
