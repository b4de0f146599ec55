"""The throughput benchmark runs at smoke size and reports the ratios docs/measurements.md describes."""

import json
import math

import pytest

from benchmarks.throughput import main


@pytest.mark.slow
def test_throughput_smoke(tmp_path):
    path = tmp_path / "b.json"
    out = main(["--smoke", "--json", str(path)])
    saved = json.loads(path.read_text())
    assert set(saved["shapes"]) == {"i", "ii", "iii"}
    assert saved["peak_gflops"] > 0
    for name, r in saved["shapes"].items():
        for key in ("speedup", "peak_fraction"):
            assert math.isfinite(r[key]) and r[key] > 0, (name, key, r[key])
        assert r["engine_s"] > 0 and r["loop_s"] > 0
        assert r["diverged"] == 0
    assert out["shapes"].keys() == saved["shapes"].keys()


@pytest.mark.slow
def test_superposition_benchmark_smoke(tmp_path):
    from benchmarks.superposition import main as superposition_main

    path = tmp_path / "s.json"
    out = superposition_main(["--smoke", "--json", str(path)])
    saved = json.loads(path.read_text())
    assert saved["engine"]["models"] == saved["loop"]["models"] == 12
    assert math.isfinite(out["speedup"]) and out["speedup"] > 0
    # Same members, init draws, steps, schedule and batch stream on both sides: the mean final losses agree up to
    # float32 round-off of differently ordered products over 20 steps (1e-3 leaves a wide margin over ~1e-6).
    assert saved["engine"]["final_loss"] == pytest.approx(saved["loop"]["final_loss"], rel=1e-3)


def test_roofline_smoke(tmp_path):
    from benchmarks.roofline import main as roofline

    path = tmp_path / "r.json"
    out = roofline(["--smoke", "--json", str(path)])
    saved = json.loads(path.read_text())
    assert {(r["layout"], r["units"]) for r in saved["rows"]} == {(lay, u) for lay in ("units-major", "samples-major")
                                                                  for u in (64, 256)}
    # A step is a matmul plus more, and the peak is the best matmul measured: the ratio lies in (0, 1].
    assert all(0 < r["peak_fraction"] <= 1.0 for r in saved["rows"])
    assert saved["ceiling"] == max(r["peak_fraction"] for r in saved["rows"]) == out["ceiling"]
