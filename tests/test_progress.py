"""Progress reports: plain lines with an ETA when stderr is not a terminal, nothing with ``progress=False``."""

from __future__ import annotations

import io
import re

import pytest

import dynsim as ds
from dynsim import progress
from dynsim.models import MLP
from dynsim.tasks import TeacherStudent

LINE = re.compile(r"^dynsim: training (\d+)/(\d+) member-steps \(\d+%\), \d+ s elapsed, .*ETA \d+", re.M)


def _run(progress_arg):
    # Two records per member, so the report is updated more than once.
    return ds.run(MLP(d_in=4), TeacherStudent(d_in=4, n_train=16, n_test=16), ds.Sweep(width=[8], lr=[0.1]),
                  steps=10, record_every=5, progress=progress_arg)


@pytest.fixture
def lines_every_update(monkeypatch):
    monkeypatch.setenv(progress.INTERVAL_ENV, "0")
    monkeypatch.delenv("DYNSIM_PROGRESS", raising=False)


def test_run_writes_progress_lines_when_stderr_is_not_a_terminal(capsys, lines_every_update):
    _run(None)  # under capsys stderr is not a terminal
    err = capsys.readouterr().err
    found = LINE.findall(err)
    assert found, err
    assert all(int(total) == 10 for _, total in found)
    assert err.rstrip().splitlines()[-1].startswith("dynsim: training 10/10 member-steps (100%)")


def test_progress_false_prints_nothing(capsys, lines_every_update):
    _run(False)
    assert capsys.readouterr().err == ""


def test_progress_true_forces_the_bar(capsys, lines_every_update):
    with progress.tracker(4, True, "training", "member-step") as bar:
        bar.update(4)
    err = capsys.readouterr().err
    assert "training" in err and "dynsim:" not in err  # tqdm's bar, not the lines


def test_line_format():
    out = io.StringIO()
    report = progress.Lines(5000, "training", "member-step", interval=3600, stream=out)
    report.start -= 12.0  # twelve seconds in
    report.update(1234)
    assert out.getvalue() == ""  # less than an interval since the start
    assert report.line(report.start + 12.0) == ("dynsim: training 1234/5000 member-steps (25%), 12 s elapsed, "
                                                 "103 member-steps/s, ETA 37 s")
    report.close()  # nothing written and under an interval of work: no closing line either
    assert out.getvalue() == ""
    assert isinstance(progress.tracker(10, False), progress.Silent)
