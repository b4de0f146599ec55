"""Results store: one-line loading, chunk-by-chunk writes, and resume after SIGKILL."""

import json
import os
import re
import shutil
import signal
import socket
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

# Runs into each folder it is given, in turn: two buckets of six one-member chunks each. The second folder's run
# reuses the first's compiled programs, so a clean run costs no process start-up and no compilation of its own.
SCRIPT = textwrap.dedent("""
    import sys, dynsim as ds
    from dynsim.models import MLP
    from dynsim.tasks import TeacherStudent
    for out in sys.argv[1:]:
        ds.run(MLP(d_in=8), TeacherStudent(d_in=8, n_train=64, n_test=32),
               ds.Sweep(width=[8, 16], lr=[0.05, 0.1, 0.2], seed=[0, 1]), steps=1000, record_every=100,
               group=1, chunk_members=1, buckets=[[8], [16]], layout="vmap", out=out, progress=False)
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
    # The killed process leaves its compiled program in a cache folder for the resuming one; that only saves time.
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=str(tmp_path / "cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
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
    assert partial.attrs["complete"] == 0 and 0 < stored < 12, stored
    # A fresh process resumes the killed run, then makes the uninterrupted one in a folder of its own.
    subprocess.run([sys.executable, str(script), str(killed), str(tmp_path / "clean")], env=env, check=True)
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


# ---------------------------------------------------------------------------------------------------------------
# damaged or shared result folders

TINY_ARGS = (MLP(d_in=4), TeacherStudent(d_in=4, n_train=8, n_test=8), ds.Sweep(width=[4], lr=[0.1, 0.2, 0.3]))
TINY_KW = dict(steps=4, record_every=2, group=1, chunk_members=1, layout="vmap", progress=False)
RECORDS = ["loss", "test_loss", "diverged_at"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished run of three one-member chunks and its results."""
    out = tmp_path_factory.mktemp("finished") / "run"
    return out, ds.run(*TINY_ARGS, out=out, **TINY_KW)


@pytest.fixture
def run_copy(finished, tmp_path):
    out, _ = finished
    shutil.copytree(out, tmp_path / "run")
    return tmp_path / "run"


def _chunk_members(out):
    return sorted(int(m) for f in (out / "chunks").glob("*.nc") for m in xr.load_dataset(f)["member"].values)


def test_truncated_chunk_is_named_set_aside_and_recomputed(finished, run_copy):
    chunk = sorted((run_copy / "chunks").glob("*.nc"))[1]
    chunk.write_bytes(chunk.read_bytes()[:600])
    with pytest.warns(ds.io.DamageWarning, match=re.escape(str(chunk))) as record:
        resumed = ds.run(*TINY_ARGS, out=run_copy, **TINY_KW)
    assert len(record) == 1 and len(str(record[0].message).splitlines()) == 1
    assert not chunk.exists() and (run_copy / "chunks" / "damaged" / chunk.name).exists()
    assert _chunk_members(run_copy) == [0, 1, 2]  # the lost member recomputed, nobody twice
    xr.testing.assert_equal(resumed[RECORDS], finished[1][RECORDS])
    xr.testing.assert_equal(ds.io.load(run_copy)[RECORDS], finished[1][RECORDS])  # no warning: all sound now


def test_bytes_overwritten_in_a_chunk_are_detected(finished, run_copy):
    (run_copy / "results.nc").unlink()
    chunk = sorted((run_copy / "chunks").glob("*.nc"))[2]
    raw = chunk.read_bytes()
    loss = xr.load_dataset(chunk)["loss"].values.tobytes()
    at = raw.find(loss)
    assert at > 0
    chunk.write_bytes(raw[:at] + (2 * xr.load_dataset(chunk)["loss"].values).tobytes() + raw[at + len(loss):])
    with pytest.warns(ds.io.DamageWarning, match=re.escape(str(chunk)) + ".*sha256"):
        partial = ds.io.load(run_copy)
    assert partial.attrs["complete"] == 0
    assert (partial["diverged_at"].values.ravel() > -2).tolist() == [True, True, False]  # never used
    assert (run_copy / "chunks" / "damaged" / chunk.name).exists()
    resumed = ds.run(*TINY_ARGS, out=run_copy, **TINY_KW)
    xr.testing.assert_equal(resumed[RECORDS], finished[1][RECORDS])


def test_chunk_without_checksum_is_damaged(finished, run_copy):
    chunk = sorted((run_copy / "chunks").glob("*.nc"))[0]
    (run_copy / "chunks" / f"{chunk.name}.sha256").unlink()
    with pytest.warns(ds.io.DamageWarning, match="no checksum"):
        resumed = ds.run(*TINY_ARGS, out=run_copy, **TINY_KW)
    xr.testing.assert_equal(resumed[RECORDS], finished[1][RECORDS])
    # A directory written before checksums existed accepts chunks without one that read correctly.
    meta = json.loads((run_copy / "meta.json").read_text())
    del meta["checksums"]
    (run_copy / "meta.json").write_text(json.dumps(meta))
    for f in [*(run_copy / "chunks").glob("*.sha256"), run_copy / "results.nc", run_copy / "results.nc.sha256"]:
        f.unlink()
    xr.testing.assert_equal(ds.io.load(run_copy)[RECORDS], finished[1][RECORDS])


def test_show_of_an_unfinished_run_with_a_truncated_chunk_warns_and_counts(run_copy, capsys):
    from dynsim import cli

    for name in ("results.nc", "summary.json"):
        (run_copy / name).unlink(missing_ok=True)
    chunk = sorted((run_copy / "chunks").glob("*.nc"))[0]
    chunk.write_bytes(chunk.read_bytes()[:600])
    with pytest.warns(ds.io.DamageWarning, match=re.escape(str(chunk))):
        assert cli.main(["show", str(run_copy)]) == 0
    assert capsys.readouterr().out.strip() == f"{run_copy}: unfinished run, 2/3 members stored; rerun to resume."


@pytest.mark.parametrize("damage", ["truncated", "overwritten"])
def test_damaged_results_file_is_rebuilt_from_the_chunks(finished, run_copy, damage):
    results = run_copy / "results.nc"
    raw = results.read_bytes()
    results.write_bytes(raw[: len(raw) // 2] if damage == "truncated" else raw[:-64] + bytes(64))
    with pytest.warns(ds.io.DamageWarning, match=re.escape(str(results)) + ".*assembled from the chunks"):
        loaded = ds.io.load(run_copy)
    xr.testing.assert_equal(loaded[RECORDS], finished[1][RECORDS])
    assert not results.exists() and (run_copy / "damaged" / "results.nc").exists()
    with pytest.warns(ds.io.DamageWarning):  # loading the file itself does the same
        assert ds.io.load((run_copy / "damaged" / "results.nc").rename(results)).attrs["complete"] == 1
    ds.run(*TINY_ARGS, out=run_copy, **TINY_KW)  # a resumed run writes it anew
    xr.testing.assert_equal(ds.io.load(run_copy)[RECORDS], finished[1][RECORDS])


def test_damaged_files_without_chunks_or_meta_are_one_sentence_errors(finished, run_copy, tmp_path):
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / "results.nc").write_bytes((run_copy / "results.nc").read_bytes()[:300])
    with pytest.raises(ds.io.DamagedError, match=r"results.nc is damaged \(.*\); run the experiment again"):
        ds.io.load(alone)
    (run_copy / "meta.json").write_text('{"axes": ["wid')
    (run_copy / "results.nc").unlink()
    for call in (lambda: ds.io.load(run_copy), lambda: ds.run(*TINY_ARGS, out=run_copy, **TINY_KW)):
        with pytest.raises(ds.io.DamagedError, match=r"meta.json is damaged") as e:
            call()
        assert str(e.value).count(". ") == 0 and str(e.value).endswith(".")


def _claim(out, members, pid, **extra):
    owner = {"pid": pid, "start": ds.io._started(pid), "host": socket.gethostname(), "ns": ds.io._namespace(),
             "time": time.time(), "token": "t", **extra}
    claim = out / "chunks" / f"{ds.io.chunk_id(members)}.claim"
    claim.write_text(json.dumps(owner))
    return claim


def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_claimed_chunks_are_left_to_their_live_owner_and_stale_claims_taken_over(finished, run_copy, monkeypatch):
    chunk = sorted((run_copy / "chunks").glob("*.nc"))[1]
    chunk.unlink()
    (run_copy / "chunks" / f"{chunk.name}.sha256").unlink()
    claim = _claim(run_copy, [1], os.getppid())  # a live process of this machine computes member 1
    monkeypatch.setattr(ds.io, "WAIT_S", 0.3)
    lines = []
    with pytest.raises(ds.io.ClaimTimeout, match=rf"1 chunk of .* claimed by other runs \(pid {os.getppid()} on "):
        ds.run(*TINY_ARGS, out=run_copy, log=lines.append, **TINY_KW)
    assert any("waiting for 1 chunk" in line for line in lines)
    assert _chunk_members(run_copy) == [0, 2] and claim.exists()  # not computed here, the claim left alone
    _claim(run_copy, [1], _dead_pid())  # its owner died: taken over
    resumed = ds.run(*TINY_ARGS, out=run_copy, **TINY_KW)
    xr.testing.assert_equal(resumed[RECORDS], finished[1][RECORDS])
    assert not claim.exists() and _chunk_members(run_copy) == [0, 1, 2]
    _claim(run_copy, [1], os.getppid(), host="elsewhere", ns="0" * 12)  # another machine's: judged by its age
    assert ds.io._claim(claim) is None
    os.utime(claim, (time.time() - 2 * ds.io.STALE_S,) * 2)
    owner = ds.io._claim(claim)
    assert owner is not None and json.loads(claim.read_text())["pid"] == os.getpid()
    ds.io._release(claim, owner)
    assert not claim.exists()


def test_temporary_files_are_deleted_only_when_their_owner_is_gone(finished, run_copy):
    ns = ds.io._namespace()
    live = run_copy / "chunks" / f".chunk-x.nc.{os.getppid()}.{ns}.0123abcd.tmp"
    dead = run_copy / "chunks" / f".chunk-y.nc.{_dead_pid()}.{ns}.0123abcd.tmp"
    other = run_copy / f".results.nc.1.{'f' * 12}.0123abcd.tmp"  # another machine's
    for f in (live, dead, other):
        f.write_bytes(b"in flight")
    ds.run(*TINY_ARGS, out=run_copy, **TINY_KW)
    assert live.exists() and other.exists() and not dead.exists()
    os.utime(other, (time.time() - 2 * ds.io.TMP_STALE_S,) * 2)
    ds.run(*TINY_ARGS, out=run_copy, **TINY_KW)
    assert not other.exists()


SHARED = textwrap.dedent("""
    import pathlib, sys, time
    import dynsim as ds
    from dynsim.models import MLP
    from dynsim.tasks import TeacherStudent
    here = pathlib.Path(sys.argv[1]).parent

    def log(line):  # called after each stored chunk, its claim still held
        print(line, flush=True)
        (here / f"stored-{sys.argv[2]}").touch()
        deadline = time.time() + 120
        while len(list(here.glob("stored-*"))) < 2 and time.time() < deadline:  # until both runs stored one
            time.sleep(0.01)

    ds.run(MLP(d_in=4), TeacherStudent(d_in=4, n_train=8, n_test=8), ds.Sweep(width=[4], lr=[0.1, 0.2, 0.3],
           seed=[0, 1, 2]), steps=4, record_every=2, group=1, chunk_members=1, layout="vmap", out=sys.argv[1],
           progress=False, log=log)
""")


@pytest.mark.slow
def test_two_runs_into_one_directory_share_the_work(finished, tmp_path):  # `finished` compiled the program here
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    script = tmp_path / "job.py"
    script.write_text(SHARED)
    out = tmp_path / "shared"
    procs = [subprocess.Popen([sys.executable, str(script), str(out), str(i)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in results]
    stored = [sum("stored" in line for line in stdout.splitlines()) for stdout, _ in results]
    files = sorted((out / "chunks").glob("*.nc"))
    assert sum(stored) == len(files) == 9 and min(stored) >= 1, stored  # each chunk computed once, both runs worked
    assert _chunk_members(out) == list(range(9))  # no member lost or stored twice
    assert not list(out.rglob("*.claim")) and not list(out.rglob(".*.tmp"))
    single = ds.run(*TINY_ARGS[:2], ds.Sweep(width=[4], lr=[0.1, 0.2, 0.3], seed=[0, 1, 2]), **TINY_KW)
    xr.testing.assert_equal(ds.io.load(out)[RECORDS], single[RECORDS])
