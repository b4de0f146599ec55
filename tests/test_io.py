"""Results store: one-line loading, chunk-by-chunk writes, and resume after SIGKILL."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import xarray as xr

import dynsim as ds
from dynsim.models import MLP
from dynsim.tasks import TeacherStudent

SCRIPT = textwrap.dedent("""
    import sys, dynsim as ds
    from dynsim.models import MLP
    from dynsim.tasks import TeacherStudent
    ds.run(MLP(d_in=8), TeacherStudent(d_in=8, n_train=64, n_test=32),
           ds.Sweep(width=[8, 16, 32, 48], lr=[0.05, 0.1, 0.2], seed=[0, 1, 2]), steps=2000, record_every=100,
           group=1, chunk_members=1, buckets=[[8], [16], [32], [48]], layout="vmap", out=sys.argv[1],
           progress=False)
""")


def test_load_roundtrip(tmp_path):
    sweep = ds.Sweep(width=[8, 16], lr=[0.1, 0.2], seed=[0, 1], param=["sp", "mup"])
    res = ds.run(MLP(d_in=4), TeacherStudent(d_in=4, n_train=16, n_test=16), sweep, steps=10, record_every=5,
                 out=tmp_path / "run", progress=False, spec={"note": "roundtrip"})
    loaded = ds.io.load(tmp_path / "run")
    assert dict(loaded.sizes) == {"optimizer": 1, "param": 2, "width": 2, "lr": 2, "seed": 2, "init_scale": 1,
                                  "weight_decay": 1, "momentum": 1, "step": 3}
    xr.testing.assert_allclose(loaded["loss"], res["loss"])
    assert list(loaded["param"].values) == ["sp", "mup"]
    assert '"roundtrip"' in loaded.attrs["spec"] and loaded.attrs["jax"] and loaded.attrs["complete"] == 1
    # The file alone loads in one line with plain xarray.
    plain = xr.load_dataset(tmp_path / "run" / "results.nc")
    np.testing.assert_array_equal(plain["diverged_at"].values, loaded["diverged_at"].values)


def test_other_spec_in_same_directory_is_refused(tmp_path):
    kw = dict(steps=10, record_every=5, out=tmp_path, progress=False)
    ds.run(MLP(d_in=4), TeacherStudent(d_in=4, n_train=16), ds.Sweep(width=[8], lr=[0.1]), **kw)
    with pytest.raises(ds.io.MetaMismatch, match="different spec"):
        ds.run(MLP(d_in=4), TeacherStudent(d_in=4, n_train=16), ds.Sweep(width=[8], lr=[0.3]), **kw)


@pytest.mark.slow
def test_sigkill_then_resume_matches_uninterrupted_run(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    script = tmp_path / "job.py"
    script.write_text(SCRIPT)
    killed = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, str(script), str(killed)], env=env)
    # Wait until some, but not all, chunks are on disk, then kill without warning.
    deadline = time.time() + 120
    while time.time() < deadline:
        n = len(list((killed / "chunks").glob("*.nc"))) if (killed / "chunks").exists() else 0
        if n >= 3 or proc.poll() is not None:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the job finished before it could be killed; make it longer"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = ds.io.load(killed)
    stored = int((partial["diverged_at"] > -2).sum())
    assert partial.attrs["complete"] == 0 and 0 < stored < 36, stored
    subprocess.run([sys.executable, str(script), str(killed)], env=env, check=True)
    subprocess.run([sys.executable, str(script), str(tmp_path / "clean")], env=env, check=True)
    resumed, clean = ds.io.load(killed), ds.io.load(tmp_path / "clean")
    assert resumed.attrs["complete"] == 1
    # Same members in the same groups on the same backend: bit-identical values (timings differ, naturally).
    xr.testing.assert_equal(resumed[["loss", "test_loss", "diverged_at"]], clean[["loss", "test_loss",
                                                                                 "diverged_at"]])
    assert resumed.attrs["spec"] == clean.attrs["spec"]


def test_resume_with_other_group_settings_stores_each_member_once(tmp_path):
    model, task = MLP(d_in=4, depth=3), TeacherStudent(d_in=4, n_train=16, n_test=16)
    sweep = ds.Sweep(width=[8], lr=[0.05, 0.1, 0.2, 0.3])
    kw = dict(steps=10, record_every=5, out=tmp_path, progress=False)
    first = ds.run(model, task, sweep, group=2, chunk_members=2, **kw)
    chunk_files = sorted((tmp_path / "chunks").glob("*.nc"))
    assert len(chunk_files) == 2
    chunk_files[0].unlink()
    (tmp_path / "results.nc").unlink()
    again = ds.run(model, task, sweep, group=4, chunk_members=4, **kw)
    members = np.concatenate([xr.load_dataset(f)["member"].values for f in (tmp_path / "chunks").glob("*.nc")])
    assert sorted(members.tolist()) == [0, 1, 2, 3]  # the two lost members recomputed, nobody twice
    xr.testing.assert_allclose(again["loss"], first["loss"])


def test_overlapping_forced_buckets_are_refused():
    with pytest.raises(ValueError, match="more than once"):
        ds.run(MLP(d_in=4), TeacherStudent(d_in=4, n_train=16), ds.Sweep(width=[8, 16, 32], lr=[0.1]), steps=5,
               record_every=5, buckets=[[8, 16], [16, 32]], progress=False)
