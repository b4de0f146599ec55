"""Figures: measured points, fitted laws and theory curves on the same axes.

Figures are made with matplotlib's object API (:class:`matplotlib.figure.Figure`) and written with
``Figure.savefig``: no pyplot state, no open-figure registry and no backend switch, so importing dynsim leaves the
user's backend (a notebook's inline one, say) as it was. In a notebook a Figure from :func:`subplots` shows when it is
the cell's last expression or is passed to ``IPython.display.display``.
"""

from __future__ import annotations

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter

__all__ = ["Figure", "NullFormatter", "subplots", "colors", "width_colors", "log_ticks", "save"]


def subplots(nrows: int = 1, ncols: int = 1, *, figsize=None, **kwargs):
    """``(Figure, axes)`` like ``pyplot.subplots``, without pyplot: the figure belongs to no backend or registry.

    ``kwargs`` go to :meth:`matplotlib.figure.Figure.subplots` (``squeeze``, ``sharex``, ``sharey``, ...).
    """
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, **kwargs)


def colors(n: int, lo: float = 0.05, hi: float = 0.9, cmap: str = "viridis"):
    """``n`` colours of the colormap ``cmap`` evenly between its fractions ``lo`` and ``hi``."""
    return matplotlib.colormaps[cmap](np.linspace(lo, hi, n))


def width_colors(n: int):
    """``n`` colours from light to dark, one per width."""
    return colors(n, 0.05, 0.9)


def log_ticks(ax, values, axis: str = "x", max_labels: int = 8) -> None:
    """A log axis labelled at the swept ``values`` themselves (every other one, or sparser, beyond ``max_labels``),
    with matplotlib's minor labels, which overlap on short log ranges, turned off."""
    values = np.unique(np.asarray(values, dtype=float))
    step = int(np.ceil(len(values) / max_labels))
    shown = values[::step]
    getattr(ax, f"set_{axis}scale")("log")
    getattr(ax, f"set_{axis}ticks")(shown, [f"{v:g}" for v in shown])
    getattr(ax, f"{axis}axis").set_minor_formatter(NullFormatter())


def save(fig: Figure, path) -> str:
    """Lay out ``fig`` and write it to ``path`` (the format from the suffix); returns the path as a string."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return str(path)
