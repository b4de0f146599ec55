"""Runs over several processes on JAX's distributed runtime (``dynsim run --coordinator ...``), on one machine:
3 CPU processes on the loopback address, each with 2 forced host devices, against a one-process run with the same
devices; 2 processes resuming what a killed process left; and the inputs that are refused."""

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import xarray as xr

from dynsim import cli, io
from dynsim.executor import DistributedError, initialize_distributed

# 12 members in groups of 2 (a multiple of the 2 local devices) and chunks of one group: 6 chunks to share out.
SPEC = """\
experiment = "sweep"

[task]
d_in = 8
n_train = 64
n_test = 64

[train]
steps = 20
record_every = 10
group = 2
chunk_members = 2

[sweep]
width = [16, 32]
lr = [0.05, 0.1]
seed = [0, 1, 2]
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(cache):
    # Every process sees 2 CPU devices; compiled programs are shared through one cache folder, which only saves time.
    return {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2", "DYNSIM_CACHE_DIR": str(cache),
            "JAX_PLATFORMS": "cpu"}


def _launch(n, spec, out, cache, sets=None):
    """Start ``n`` processes of ``dynsim run`` (one plain process for ``n == 0``); their (returncode, stdout,
    stderr)."""
    port = _free_port()
    argv = [sys.executable, "-m", "dynsim.cli", "run", str(spec), "--out", str(out), "--no-progress"]
    procs = []
    for i in range(max(n, 1)):
        extra = [] if n == 0 else ["--coordinator", f"127.0.0.1:{port}", "--num-processes", str(n),
                                   "--process-id", str(i), "--init-timeout", "60"]
        for s in (sets or {}).get(i, []):
            extra += ["--set", s]
        procs.append(subprocess.Popen(argv + extra, env=_env(cache), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    results = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=120)
        results.append((stdout, stderr, p.returncode))
    return results


def _ok(results):
    for _, err, code in results:
        assert code == 0, err[-3000:]


def _stored(out):
    """Chunk file name -> bytes."""
    return {f.name: f.read_bytes() for f in sorted((out / "chunks").glob("*.nc"))}


def _chunk_members(path):
    with xr.open_dataset(path, engine="h5netcdf") as d:
        return sorted(d["member"].values.tolist())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A one-process run (2 local devices) and a 3-process run (2 local devices each) of SPEC."""
    root = tmp_path_factory.mktemp("distributed")
    spec = root / "spec.toml"
    spec.write_text(SPEC)
    cache = root / "cache"
    _ok(_launch(0, spec, root / "one", cache))
    three = _launch(3, spec, root / "three", cache)
    _ok(three)
    return root, spec, cache, three


def _assert_same_results(a, b):
    da, db = xr.load_dataset(a / "results.nc"), xr.load_dataset(b / "results.nc")
    assert int(da.attrs["complete"]) == int(db.attrs["complete"]) == 1
    # The same chunks, groups and compiled programs on the same kind and number of local devices: each member runs
    # the same floating-point operations whichever process trains it, so the records are equal bit for bit.
    for name in ("loss", "test_loss", "diverged_at"):
        np.testing.assert_array_equal(da[name].values, db[name].values, err_msg=name)


@pytest.mark.slow
def test_three_processes_store_what_one_process_stores(runs):
    root, _, _, three = runs
    _assert_same_results(root / "one", root / "three")
    # process 0 wrote the report; the others trained their share and said where it went
    assert (root / "three" / "report.md").is_file() and (root / "three" / "summary.json").is_file()
    assert "report:" in three[0][0]
    assert all(f"process {i}: its chunks are stored" in three[i][0] for i in (1, 2))
    assert len(_stored(root / "three")) == 6  # every chunk once: no process trained a chunk another had stored
    members = sorted(m for f in (root / "three" / "chunks").glob("*.nc") for m in _chunk_members(f))
    assert members == list(range(12))
    assert not list((root / "three").rglob("*.claim"))


def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.slow
def test_two_processes_rerun_after_a_killed_process_compute_only_the_missing_chunks(runs):
    """What a process killed in mid-run leaves: chunks it had not yet written, and the claim of the one it was
    computing (its process is gone). Two processes started on it compute exactly those chunks, and the results are
    the one-process run's."""
    root, spec, cache, _ = runs
    out = root / "resumed"
    (out / "chunks").mkdir(parents=True)
    (out / "meta.json").write_bytes((root / "three" / "meta.json").read_bytes())
    kept = _stored(root / "three")
    lost = list(kept)[1::3]  # 2 of the 6 chunks
    for name in kept:
        if name not in lost:
            for suffix in ("", ".sha256"):
                source = root / "three" / "chunks" / (name + suffix)
                (out / "chunks" / (name + suffix)).write_bytes(source.read_bytes())
    lost_members = [_chunk_members(root / "three" / "chunks" / name) for name in lost]
    owner = {"pid": _dead_pid(), "start": None, "host": socket.gethostname(), "ns": io._namespace(),
             "time": time.time(), "token": "killed"}
    (out / "chunks" / f"{io.chunk_id(lost_members[0])}.claim").write_text(json.dumps(owner))
    before = {n: b for n, b in kept.items() if n not in lost}

    _ok(_launch(2, spec, out, cache))
    after = _stored(out)
    assert {n: after[n] for n in before} == before  # stored chunks untouched
    new = sorted(set(after) - set(before))
    assert sorted(_chunk_members(out / "chunks" / n) for n in new) == sorted(lost_members)  # only the lost ones
    _assert_same_results(root / "one", out)


@pytest.mark.slow
def test_processes_with_different_specs_are_refused(tmp_path):
    spec = tmp_path / "spec.toml"
    spec.write_text(SPEC)
    results = _launch(2, spec, tmp_path / "out", tmp_path / "cache", sets={1: ["train.steps=30"]})
    for _, err, code in results:
        assert code == 2, err[-3000:]
        assert "dynsim: error: process 1 of 2 differs from process 0 in the spec" in err, err[-3000:]
    assert not list((tmp_path / "out").glob("chunks/*.nc"))  # refused before anything was trained


def test_process_id_outside_the_range_is_refused(tmp_path, capsys):
    spec = tmp_path / "spec.toml"
    spec.write_text(SPEC)
    for pid in ("2", "-1"):
        code = cli.main(["run", str(spec), "--coordinator", "127.0.0.1:1", "--num-processes", "2", "--process-id",
                         pid])
        err = capsys.readouterr().err
        assert code == 2 and err.startswith("dynsim: error: process_id must "), err
    assert not (tmp_path / "runs").exists()


def test_unreachable_coordinator_fails_after_the_timeout(tmp_path, capsys):
    port = _free_port()  # nothing listens there
    start = time.monotonic()
    with pytest.raises(DistributedError, match=rf"cannot reach the coordinator at 127.0.0.1:{port} within 0.5 s"):
        initialize_distributed(f"127.0.0.1:{port}", 2, 1, timeout=0.5)
    # The wait is bounded by the timeout; 5 s leaves room for a loaded machine and is still far from a hang.
    assert time.monotonic() - start < 5
    spec = tmp_path / "spec.toml"
    spec.write_text(SPEC)
    code = cli.main(["run", str(spec), "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2",
                     "--process-id", "1", "--init-timeout", "0.5"])
    err = capsys.readouterr().err
    assert code == 2 and "dynsim: error: cannot reach the coordinator" in err, err


def test_malformed_coordinator_address_is_refused():
    with pytest.raises(DistributedError, match="HOST:PORT"):
        initialize_distributed("localhost", 2, 1, timeout=1)


def test_a_restarted_process_takes_over_the_claims_of_its_killed_predecessor(tmp_path, monkeypatch):
    """A claim made on another machine cannot be judged by its process id; one that carries this process's own
    distributed slot (coordinator address and process index) was left by the process this one replaces."""
    monkeypatch.setattr(io, "_JOB", {"job": "10.0.0.1:1234", "process": 1})
    chunks = tmp_path / "chunks"
    chunks.mkdir()
    elsewhere = {"pid": 1, "start": None, "host": "other-host", "ns": "another-machine", "time": time.time()}
    mine = chunks / "mine.claim"
    mine.write_text(json.dumps({**elsewhere, "token": "a", "job": "10.0.0.1:1234", "process": 1}))
    peer = chunks / "peer.claim"
    peer.write_text(json.dumps({**elsewhere, "token": "b", "job": "10.0.0.1:1234", "process": 0}))
    assert io._take_over(mine) and not mine.exists()
    assert not io._take_over(peer) and peer.exists()  # a live peer's, for all this process can tell
    held = io._claim(mine)  # this process's own claim, held: not stale
    assert held["job"] == "10.0.0.1:1234" and held["process"] == 1
    assert not io._take_over(mine)
    io._release(mine, held)
