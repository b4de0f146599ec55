"""Figures are made and saved without pyplot, and importing dynsim leaves matplotlib's backend alone."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from dynsim import plot

IMPORT_ALL = "import dynsim, dynsim.plot, dynsim.experiments, dynsim.ridge"


def _python(code: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


@pytest.mark.slow
def test_import_leaves_the_backend_alone():
    # Nothing chosen: importing dynsim neither picks a backend nor imports pyplot, so the backend is the one
    # matplotlib would resolve without dynsim.
    before = _python("import matplotlib; print(matplotlib.get_backend())")
    after = _python("import matplotlib, sys\n"
                    f"{IMPORT_ALL}\n"
                    "print(dict.__getitem__(matplotlib.rcParams, 'backend') is "
                    "matplotlib.rcsetup._auto_backend_sentinel, 'matplotlib.pyplot' in sys.modules)\n"
                    "print(matplotlib.get_backend())")
    assert after.splitlines() == ["True False", before]
    # A backend the user chose (a notebook's inline one, say) stays chosen.
    chosen = _python("import matplotlib; matplotlib.use('svg')\n"
                     f"{IMPORT_ALL}\nprint(matplotlib.get_backend())")
    assert chosen == "svg"


def test_subplots_and_save_without_pyplot(tmp_path):
    fig, axes = plot.subplots(1, 2, figsize=(4, 2), squeeze=False)
    assert isinstance(fig, plot.Figure) and axes.shape == (1, 2)
    for ax, color in zip(axes[0], plot.width_colors(2)):
        ax.plot([1, 10, 100], [3, 2, 1], color=color)
        plot.log_ticks(ax, [1, 10, 100])
    path = plot.save(fig, tmp_path / "f.png")
    assert pathlib.Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert np.shape(plot.colors(3, 0.0, 0.75)) == (3, 4)
