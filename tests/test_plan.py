"""``dynsim plan``: the plan a run follows, printed without training, with memory and time estimates; and what the
planner does with several local devices (vmapped groups sharded over them, packs on one device each)."""

import json
import os
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import dynsim as ds
from dynsim import cli, experiments
from dynsim.models import MLP

SPEC = """\
experiment = "sweep"

[model]
depth = 3

[task]
d_in = 8
n_train = 64
n_test = 64

[train]
steps = 20
record_every = 10
group = 4

[sweep]
width = [8, 16]
lr = [0.05, 0.1]
seed = [0, 1]
"""


@pytest.fixture
def spec(tmp_path):
    path = tmp_path / "spec.toml"
    path.write_text(SPEC)
    return path


def test_plan_is_the_plan_the_run_follows(spec, tmp_path, capsys):
    assert cli.main(["plan", str(spec), "--no-calibration", "--json", str(tmp_path / "plan.json")]) == 0
    printed = capsys.readouterr().out
    plan = json.loads((tmp_path / "plan.json").read_text())
    assert not (tmp_path / "runs").exists()  # nothing trained, nothing written but the JSON asked for

    _, s = experiments.resolve_spec(str(spec))
    model, task, sweep, opts = experiments.build(s)
    res = ds.run(model, task, sweep, progress=False, **opts)
    # The buckets the run trained are the planned ones: optimizer, padded width, members, group.
    ran = json.loads(res.attrs["buckets"])
    assert [[b["optimizer"], b["n_pad"], b["members"], b["group"]] for b in plan["buckets"]] == [r[:4] for r in ran]
    assert plan["layout"] == res.attrs["layout"] == "vmap" and plan["members"] == 8
    assert sum(b["groups"] for b in plan["buckets"]) == sum(-(-r[2] // r[3]) for r in ran) == 2
    for b in plan["buckets"]:
        # A group holds at least every member's parameters, twice (weights and gradients), in float32.
        params = MLP(d_in=8, depth=3).n_params(b["n_pad"])
        assert b["memory_bytes"] > b["group"] * 2 * params * 4
        assert b["seconds"] is None  # no calibration, no estimate
    assert f"total: {len(ran)} bucket" in printed and "time: about" not in printed


@pytest.mark.slow
def test_time_estimate_is_near_the_run_time(spec, tmp_path):
    _, s = experiments.resolve_spec(str(spec))
    model, task, sweep, opts = experiments.build(s)
    start = time.perf_counter()
    plan = ds.run(model, task, sweep, dry_run=True, **opts).calibrate()
    calibration_s = time.perf_counter() - start
    res = ds.run(model, task, sweep, progress=False, **opts)
    for b in plan.buckets:
        assert b.compile_s > 0 and b.init_s > 0 and b.segment_s > 0
    # The estimate times one group per bucket (compilation, then a second call) and extrapolates to every group.
    # At this size both the estimate and the run are mostly compilation (a program per bucket, of the same size), so
    # the estimate and the run's own time agree to within a factor 10 each way, which leaves room for a machine
    # shared with other processes; the calibration itself took longer than the compilation it measured.
    run_s = json.loads(res.attrs["timing"])["run_s"]
    assert run_s / 10 < plan.seconds < 10 * run_s
    assert sum(b.compile_s for b in plan.buckets) < calibration_s


def test_plan_without_calibration_and_for_a_packed_sweep(spec, capsys):
    assert cli.main(["plan", str(spec), "--no-calibration", "--set", "model.depth=2", "--set", "train.group=1",
                     "--set", "train.layout='packed'"]) == 0
    printed = capsys.readouterr().out
    assert "layout packed" in printed and "units" in printed and "packs" in printed
    assert "time: about" not in printed  # no calibration, no time estimate


@pytest.mark.parametrize("argv, fragment", [
    (["plan", "no-such-experiment"], "no-such-experiment"),
    (["plan", "{spec}", "--set", "train.steps=25"], "must be a multiple of"),
    (["plan", "width-scaling", "--quick"], "has no sweep of its own to plan"),
])
def test_plan_refuses_what_run_refuses(spec, capsys, argv, fragment):
    assert cli.main([a.format(spec=spec) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dynsim: error: ") and fragment in err and len(err.splitlines()) == 1, err


DEVICES = """
import json, os
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
import dynsim as ds
from dynsim.models import MLP
from dynsim.tasks import TeacherStudent
task = TeacherStudent(d_in=8, n_train=64, n_test=64)
sweep = ds.Sweep(width=[8, 16], lr=[0.05, 0.1, 0.2], seed=[0, 1])
out = {}
for layout in ("auto", "packed"):
    p = ds.run(MLP(d_in=8), task, sweep, steps=10, record_every=10, layout=layout, dry_run=True)
    out[layout] = [p.layout, p.local_devices, [[b.bucket.group, b.memory] for b in p.buckets]]
p = ds.run(MLP(d_in=8), task, sweep, steps=10, record_every=10, layout="vmap", group=6, dry_run=True)
out["vmap"] = [p.layout, p.local_devices, [[b.bucket.group, b.memory] for b in p.buckets]]
print(json.dumps(out))
"""


def test_planner_on_two_host_devices_shards_vmapped_groups_and_not_packs(tmp_path):
    """With two (forced) host devices, ``auto`` picks the vmapped layout for a sweep it packs on one device, because
    only vmapped groups are sharded over devices: the members of a pack share one matmul over their units, and each
    pack runs on one device. A vmapped group's memory per device is half a group's; a pack's is the whole pack."""
    script = tmp_path / "devices.py"
    script.write_text(DEVICES)
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    two = json.loads(subprocess.run([sys.executable, str(script)], capture_output=True, text=True, check=True,
                                    env=env, timeout=120).stdout.strip().splitlines()[-1])
    task = ds.tasks.TeacherStudent(d_in=8, n_train=64, n_test=64)
    sweep = ds.Sweep(width=[8, 16], lr=[0.05, 0.1, 0.2], seed=[0, 1])
    one = ds.run(MLP(d_in=8), task, sweep, steps=10, record_every=10, dry_run=True)
    assert jax.local_device_count() == 1 and one.layout == "packed"  # small two-layer members pack on one device
    assert two["auto"][:2] == ["vmap", 2]
    assert two["packed"][:2] == ["packed", 2]
    vmap1 = ds.run(MLP(d_in=8), task, sweep, steps=10, record_every=10, layout="vmap", group=6, dry_run=True)
    (g1, m1), = [[b.bucket.group, b.memory] for b in vmap1.buckets][-1:]
    (g2, m2), = two["vmap"][2][-1:]
    assert g1 == g2 == 6 and m2 < m1  # half the group on each of two devices: less memory per device
    assert np.isclose(m2, ds.executor.memory_estimate(vmap1.buckets[-1].program, 3))
    packed1 = ds.run(MLP(d_in=8), task, sweep, steps=10, record_every=10, layout="packed", dry_run=True)
    assert [[b.bucket.group, b.memory] for b in packed1.buckets] == two["packed"][2]  # a pack is not split
