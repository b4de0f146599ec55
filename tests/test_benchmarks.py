"""The throughput benchmark runs at smoke size and reports what DESIGN.md section 9 asks for."""

import json
import math
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # benchmarks/ is a top-level folder beside the package, not installed with it
    sys.path.insert(0, str(ROOT))

from benchmarks.throughput import main  # noqa: E402


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
