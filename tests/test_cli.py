"""The command line end to end: ``list``, one-line errors with exit code 2, a tiny run, ``show`` and resume."""

import json
import subprocess
import sys

import pytest
import xarray as xr

from dynsim import cli, experiments

TINY = """\
experiment = "sweep"

[task]
d_in = 4
n_train = 16
n_test = 16

[train]
steps = 10
record_every = 5

[sweep]
width = [4, 8]
lr = [0.1]
"""


def _dynsim(*args, cwd):
    return subprocess.run([sys.executable, "-m", "dynsim.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


def _assert_one_line_error(stderr: str, fragments) -> None:
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("dynsim: error: "), stderr
    assert "Traceback" not in stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, stderr)


def test_list_names_the_experiments(tmp_path):
    r = _dynsim("list", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    names = [line.split()[0] for line in r.stdout.splitlines()]
    assert names == list(experiments.names())  # every registered experiment, sorted
    assert {"catapult", "edge-of-stability", "kernel-regime", "lr-transfer", "sharpness-width", "superposition",
            "sweep", "width-scaling"} <= set(names)
    assert "muP" in r.stdout  # each with its one-line description
    assert r.stderr == ""


# ---------------------------------------------------------------------------------------------------------------
# bad invocations, in process: (id, files to write into the working directory, argv after `run`, fragments)

BAD_RUNS = [
    ("unknown-experiment", {}, ["nope"], ["'nope'", "dynsim list"]),
    ("missing-spec-file", {}, ["missing.toml"], ["missing.toml", "No such file"]),
    ("malformed-toml", {"bad.toml": "[sweep\nwidth = [4]\n"}, ["bad.toml"], ["bad.toml", "not valid TOML"]),
    ("non-utf8-spec", {"bin.toml": b"\xff\xfe[sweep]\n"}, ["bin.toml"], ["bin.toml", "UTF-8"]),
    ("unknown-experiment-in-file", {"s.toml": 'experiment = "nope"\n'}, ["s.toml"], ["'nope'"]),
    ("unknown-top-key", {"s.toml": 'experimnt = "sweep"\n'}, ["s.toml"], ["'experimnt'", "'experiment'"]),
    ("unknown-sweep-axis", {"s.toml": "[sweep]\nwidht = [4]\n"}, ["s.toml"], ["'sweep.widht'", "'width'"]),
    ("steps-string", {"s.toml": '[train]\nsteps = "ten"\n'}, ["s.toml"], ["'train.steps'"]),
    ("negative-lr", {"s.toml": "[sweep]\nlr = [-1]\n"}, ["s.toml"], ["'sweep.lr'"]),
    ("bad-range", {"s.toml": "[sweep]\nlr = {logspace = [-4, 1]}\n"}, ["s.toml"], ["'sweep.lr'", "logspace"]),
    ("section-not-table", {"s.toml": "model = 3\n"}, ["s.toml"], ["'model'"]),
    ("set-unknown-key", {}, ["sweep", "--set", "widht=[4]"], ["'widht'", "'width'"]),
    ("set-repeated-width", {}, ["sweep", "--set", "width=[4,4]"], ["'sweep.width'"]),
    ("set-not-multiple", {}, ["sweep", "--set", "train.steps=55"], ["'train.steps'", "'train.record_every'"]),
    ("set-depth-one", {}, ["sweep", "--set", "model.depth=1"], ["'model.depth'"]),
    ("set-bad-param", {}, ["sweep", "--set", "param=mu_p"], ["'sweep.param'", "'mu_p'"]),
    ("set-bad-optimizer", {}, ["lr-transfer", "--quick", "--set", "optimizer=rmsprop"], ["'sweep.optimizer'"]),
    ("set-ambiguous", {}, ["sweep", "--set", "kind=uv"], ["'kind'", "model.kind"]),
    ("set-no-equals", {}, ["sweep", "--set", "width"], ["'width'", "key=value"]),
    ("set-online-no-batch", {}, ["sweep", "--set", "task.n_train=0"], ["'train.batch_size'"]),
    ("set-batch-too-big", {}, ["sweep", "--set", "batch_size=1000"], ["'train.batch_size'", "'task.n_train'"]),
    ("set-uv-vector-output", {}, ["sweep", "--set", "model.kind=uv", "--set", "task.d_out=2"], ["'task.d_out'"]),
    ("set-over-file", {"s.toml": TINY}, ["s.toml", "--set", "lr=[0.1,0.1]"], ["'sweep.lr'"]),
    ("out-is-a-file", {"taken": "x"}, ["sweep", "--out", "taken"], ["--out", "'taken'"]),
    ("quick-hidden-by-file", {"s.toml": TINY}, ["s.toml", "--quick"], ["--quick", "train.steps", "[quick]"]),
    ("quick-not-a-table", {"s.toml": "quick = 3\n"}, ["s.toml", "--quick"], ["'quick'", "table"]),
    ("quick-table-misses-a-size", {"s.toml": TINY + "[quick.task]\nn_test = 8\n"}, ["s.toml", "--quick"],
     ["--quick", "train.steps"]),
]


@pytest.mark.parametrize("files,argv,fragments", [c[1:] for c in BAD_RUNS], ids=[c[0] for c in BAD_RUNS])
def test_bad_run_is_one_line_exit_2(tmp_path, monkeypatch, capsys, files, argv, fragments):
    monkeypatch.chdir(tmp_path)
    for name, content in files.items():
        (tmp_path / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    if "--out" not in argv:
        argv = [*argv, "--out", "out"]
    assert cli.main(["run", *argv, "--no-progress"]) == 2
    captured = capsys.readouterr()
    _assert_one_line_error(captured.err, fragments)
    assert captured.out == ""
    assert not (tmp_path / "out").exists()  # nothing was started
    assert not (tmp_path / "runs").exists()


def test_quick_table_of_a_spec_file_shrinks_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    quick = "\n[quick.train]\nsteps = 5\nrecord_every = 5\n\n[quick.sweep]\nwidth = [4]\n"
    (tmp_path / "s.toml").write_text(TINY + quick)
    assert cli.main(["run", "s.toml", "--quick", "--out", "q", "--no-progress"]) == 0
    assert cli.main(["run", "s.toml", "--out", "full", "--no-progress"]) == 0
    quick, full = xr.load_dataset(tmp_path / "q" / "results.nc"), xr.load_dataset(tmp_path / "full" / "results.nc")
    assert quick.sizes["width"] == 1 and quick["step"].values.tolist() == [0, 5]
    assert full.sizes["width"] == 2 and full["step"].values.tolist() == [0, 5, 10]


def test_missing_required_key_is_one_line_exit_2(tmp_path, monkeypatch, capsys):
    # an experiment's declared keys are checked for every experiment, those that supply their own execute too
    def execute(spec, out, progress):
        raise AssertionError("execute ran on a spec without its required key")

    probe = experiments.Experiment("probe", "needs analysis.size", {"experiment": "probe", "analysis": {}}, {},
                                   analyse=None, execute=execute, required=("analysis.size",))
    monkeypatch.setitem(experiments.EXPERIMENTS, "probe", probe)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["run", "probe", "--out", "out", "--no-progress"]) == 2
    captured = capsys.readouterr()
    _assert_one_line_error(captured.err, ["spec key 'analysis.size' is required."])
    assert captured.out == "" and not (tmp_path / "out").exists()
    assert experiments.resolve_spec("probe", sets=["analysis.size=3"])[1]["analysis"] == {"size": 3}


def test_show_of_an_unfinished_run_in_one_store_or_in_parts(tmp_path, capsys):
    import dynsim as ds

    part = tmp_path / "run" / "alpha=1"
    ds.run(ds.models.MLP(d_in=4), ds.tasks.TeacherStudent(d_in=4, n_train=8, n_test=8),
           ds.Sweep(width=[4], lr=[0.1, 0.2]), steps=2, record_every=1, out=part, chunk_members=1, group=1,
           progress=False)
    (part / "results.nc").unlink()  # written last, by a run that finishes
    chunks = sorted((part / "chunks").glob("*.nc"))
    assert len(chunks) == 2
    chunks[1].unlink()  # as if killed before the second chunk was written
    assert cli.main(["show", str(part)]) == 0
    assert capsys.readouterr().out.strip() == f"{part}: unfinished run, 1/2 members stored; rerun to resume."
    assert cli.main(["show", str(tmp_path / "run")]) == 0
    assert capsys.readouterr().out.strip() == (f"{tmp_path / 'run'}: unfinished run, 1/2 members stored in the 1 "
                                               "part started (alpha=1); rerun to resume.")
    (part / "summary.json").write_text("{}")  # a finished run inside a folder: the folder is not a run
    assert cli.main(["show", str(tmp_path / "run")]) == 2
    _assert_one_line_error(capsys.readouterr().err, ["runs of its own", "alpha=1"])


def test_show_of_a_directory_without_a_run(tmp_path, capsys):
    assert cli.main(["show", str(tmp_path)]) == 2
    _assert_one_line_error(capsys.readouterr().err, [str(tmp_path), "summary.json"])


@pytest.mark.parametrize("content", [b'{"experiment": "sweep", "checks": [{"name": "a", "meas', b"\xff\xfe{",
                                     b"[]", b'{"experiment": "sweep", "checks": [{"name": "a"}]}'],
                         ids=["truncated", "not-utf8", "not-an-object", "check-without-fields"])
def test_show_of_a_damaged_summary_is_one_line_exit_2(tmp_path, capsys, content):
    (tmp_path / "summary.json").write_bytes(content)
    assert cli.main(["show", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    _assert_one_line_error(captured.err, [str(tmp_path / "summary.json"), "damaged", f"--out {tmp_path}"])
    assert captured.out == ""


@pytest.mark.parametrize("files,argv,fragments", [
    ({"bad.toml": "[sweep\n"}, ["run", "bad.toml"], ["bad.toml", "not valid TOML"]),
    ({}, ["run", "nope"], ["'nope'"]),
    ({}, ["run", "sweep", "--set", "sweep.lr=[-1]"], ["'sweep.lr'"]),
], ids=["malformed-toml", "unknown-experiment", "bad-set"])
def test_bad_run_subprocess(tmp_path, files, argv, fragments):
    for name, content in files.items():
        (tmp_path / name).write_text(content)
    r = _dynsim(*argv, "--no-progress", cwd=tmp_path)
    assert r.returncode == 2
    _assert_one_line_error(r.stderr, fragments)
    assert r.stdout == ""
    assert not (tmp_path / "runs").exists()


# ---------------------------------------------------------------------------------------------------------------
# a tiny valid run, show, resume


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("cli")
    (cwd / "tiny.toml").write_text(TINY)
    r = _dynsim("run", "tiny.toml", "--out", "out", "--no-progress", cwd=cwd)
    return cwd, r


def test_tiny_run_writes_results_report_and_figure(tiny_run):
    cwd, r = tiny_run
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    out = cwd / "out"
    assert f"report: {out.relative_to(cwd) / 'report.md'}" in r.stdout.splitlines()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["experiment"] == "sweep"
    assert summary["spec"]["sweep"]["width"] == [4, 8]
    assert summary["timing"]["members"] == 2  # both members were trained
    assert (out / "report.md").read_text().startswith("# sweep\n")
    pngs = sorted(out.glob("*.png"))
    assert pngs and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    assert [p.name for p in pngs] == summary["figures"]
    ds = xr.load_dataset(out / "results.nc")
    assert ds["width"].values.tolist() == [4, 8]
    assert ds["step"].values.tolist() == [0, 5, 10]
    loss = ds["loss"].values
    assert loss.shape[-1] == 3 and (loss > 0).all()
    assert (ds["diverged_at"].values == -1).all()


def test_show_prints_the_report_path(tiny_run):
    cwd, _ = tiny_run
    r = _dynsim("show", "out", cwd=cwd)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == "sweep: out"
    assert "report: out/report.md" in r.stdout.splitlines()


def test_rerun_with_same_out_resumes(tiny_run):
    cwd, first = tiny_run
    assert first.returncode == 0, first.stderr
    out = cwd / "out"
    before = xr.load_dataset(out / "results.nc")
    chunks = {p.name: p.stat().st_mtime_ns for p in (out / "chunks").glob("*.nc")}
    assert chunks
    r = _dynsim("run", "tiny.toml", "--out", "out", "--no-progress", cwd=cwd)
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "summary.json").read_text())["timing"]["members"] == 0  # nothing retrained
    assert f"{len(chunks)} stored chunks found" in r.stdout and "stored chunks" not in first.stdout
    assert {p.name: p.stat().st_mtime_ns for p in (out / "chunks").glob("*.nc")} == chunks
    xr.testing.assert_equal(xr.load_dataset(out / "results.nc"), before)


def test_rerun_with_a_different_spec_into_the_same_out_is_refused(tiny_run, monkeypatch, capsys):
    cwd, first = tiny_run
    assert first.returncode == 0, first.stderr
    monkeypatch.chdir(cwd)
    meta = (cwd / "out" / "meta.json").read_text()
    assert cli.main(["run", "tiny.toml", "--out", "out", "--no-progress", "--set", "lr=[0.2]"]) == 2
    _assert_one_line_error(capsys.readouterr().err, ["out", "--out"])
    assert (cwd / "out" / "meta.json").read_text() == meta


def test_layout_key(tmp_path, capsys):
    from dynsim import io

    assert cli.main(["run", "sweep", "--quick", "--set", "train.layout=vmap", "--out", str(tmp_path / "v"),
                     "--no-progress"]) == 0
    assert io.load(tmp_path / "v").attrs["layout"] == "vmap"
    assert cli.main(["run", "sweep", "--quick", "--set", "train.layout=packed", "--set", "depth=3", "--out",
                     str(tmp_path / "p"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "packed layout" in err[0] and not (tmp_path / "p").exists()


def test_checks_have_three_verdicts_and_name_their_competitor(capsys):
    from dynsim.experiments import Check, verdict_text

    kw = dict(predicted=1.0, competitor="the other law", competing=2.0)
    inside = Check(name="a", measured=1.0, ci=(0.9, 1.1), tolerance=0.2, **kw).to_dict()
    band = Check(name="b", measured=1.3, ci=(1.25, 1.35), tolerance=0.3, **kw).to_dict()
    both = Check(name="c", measured=1.5, ci=(0.9, 2.1), tolerance=0.0, **kw).to_dict()
    off = Check(name="d", measured=2.0, ci=(1.9, 2.1), tolerance=0.3, **kw).to_dict()
    assert [c["verdict"] for c in (inside, band, both, off)] == ["agrees", "agrees", "inconclusive", "disagrees"]
    assert [c["in_ci"] for c in (inside, band, both, off)] == [True, False, True, False]
    assert [verdict_text(c) for c in (inside, band, both, off)] == [
        "agrees (in CI)", "agrees (within model error)", "inconclusive (also consistent with the other law)",
        "disagrees"]
    cli._print_checks({"checks": [inside, band, both, off]})
    lines = capsys.readouterr().out.splitlines()
    assert [line[:7] for line in lines] == ["  [ok] ", "  [ok] ", "  [??] ", "  [NO] "]
    assert all("competitor the other law: 2" in line for line in lines)
    assert lines[1].endswith("agrees (within model error)") and lines[2].endswith("the other law)")
    with pytest.raises(ValueError, match="names no competing law"):
        Check(name="e", measured=1.0, ci=(0.9, 1.1), predicted=1.0, competitor="", competing=2.0)


HYPERGRAD = TINY.replace("lr = [0.1]", "lr = [0.1, 0.3]") + """
[model]
depth = 3

[hypergrad]
wrt = ["log_lr", "log_lr_layer"]
objective = "mean_loss"
mode = "reverse"
remat_every = 3
"""


def test_hypergrad_table_runs_hypergrad_and_stores_its_dataset(tmp_path, monkeypatch, capsys):
    import numpy as np

    import dynsim as ds

    monkeypatch.chdir(tmp_path)
    (tmp_path / "hg.toml").write_text(HYPERGRAD)
    assert cli.main(["run", "hg.toml", "--out", "out", "--no-progress"]) == 0
    assert "report: out/report.md" in capsys.readouterr().out.splitlines()
    stored = ds.io.load("out")  # one line, like any other results folder
    assert json.loads(stored.attrs["spec"])["hypergrad"]["objective"] == "mean_loss"  # self-describing
    assert stored.attrs["mode"] == "reverse" and int(stored.attrs["remat_every"]) == 3
    assert stored["d_mean_loss_d_log_lr_layer"].sizes["layer"] == 3
    # The table's keys reach ds.hypergrad: the same call in Python gives the same numbers (one compiled program).
    direct = ds.hypergrad(ds.models.MLP(d_in=4, depth=3), ds.tasks.TeacherStudent(d_in=4, n_train=16, n_test=16),
                          ds.Sweep(width=[4, 8], lr=[0.1, 0.3]), steps=10, wrt=("log_lr", "log_lr_layer"),
                          objective="mean_loss", mode="reverse", remat_every=3)
    for name in ("mean_loss", "d_mean_loss_d_log_lr", "d_mean_loss_d_log_lr_layer"):
        assert np.isfinite(stored[name].values).all(), name
        np.testing.assert_array_equal(stored[name].values, direct[name].values, err_msg=name)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["checks"] == [] and sorted(summary["figures"]) == sorted(
        f"{n}.png" for n in ("mean_loss", "d_mean_loss_d_log_lr", "d_mean_loss_d_log_lr_layer"))
    assert cli.main(["show", "out"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "sweep: out"


def test_hypergrad_table_with_bad_input_is_one_line_before_training(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "hg.toml").write_text(HYPERGRAD)
    assert cli.main(["run", "hg.toml", "--out", "out", "--no-progress", "--set", "hypergrad.wrt=['beta1']"]) == 2
    _assert_one_line_error(capsys.readouterr().err, ["'hypergrad.wrt'", "'beta1'"])
    # momentum under Adam: a name the optimizer has no hyperparameter for
    assert cli.main(["run", "hg.toml", "--out", "out", "--no-progress", "--set", "hypergrad.wrt=['momentum']",
                     "--set", "optimizer=['adam']"]) == 2
    _assert_one_line_error(capsys.readouterr().err, ["'momentum'"])
    assert not (tmp_path / "out").exists()
