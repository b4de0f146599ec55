"""Every notebook runs top to bottom in a Jupyter kernel, and every cell that draws a figure shows it inline.

This is the suite's only run of the notebooks (they are not collected by nbmake as well).
"""

from __future__ import annotations

import os
import pathlib
import re

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = sorted((pathlib.Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
# A cell draws when it calls pyplot, makes axes, or displays a figure.
DRAWS = re.compile(r"\bplt\.\w+\(|\bsubplots\(|\bdisplay\(\s*fig")


def _images(cell) -> int:
    return sum("image/png" in out.get("data", {}) for out in cell.get("outputs", []))


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_and_shows_its_figures(path):
    nb = nbformat.read(path, as_version=4)
    # The kernel chooses the backend a Jupyter kernel gets (inline) unless the environment forces one: drop any
    # MPLBACKEND of the test run so the check is of the notebook, not of the shell that started pytest.
    env = {k: v for k, v in os.environ.items() if k not in ("MPLBACKEND", "DYNSIM_PROGRESS")}
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3")
    client.execute(cwd=str(path.parent), env=env)  # a failing cell raises CellExecutionError with its traceback
    code = [(i, c) for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    drawing = [i for i, c in code if DRAWS.search(c.source)]
    assert drawing, f"{path.name}: no cell draws a figure"
    blank = [i for i, c in code if i in drawing and not _images(c)]
    assert not blank, f"{path.name}: cells {blank} draw a figure but show no image/png output"
