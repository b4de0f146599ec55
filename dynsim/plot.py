"""Figures: measured points, fitted laws and theory curves on the same axes."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

__all__ = ["plt", "width_colors", "log_ticks", "save"]


def width_colors(n: int):
    """``n`` colours from light to dark, one per width."""
    return plt.cm.viridis(np.linspace(0.05, 0.9, n))


def log_ticks(ax, values, axis: str = "x", max_labels: int = 8) -> None:
    """A log axis labelled at the swept ``values`` themselves (every other one, or sparser, beyond ``max_labels``),
    with matplotlib's minor labels, which overlap on short log ranges, turned off."""
    values = np.unique(np.asarray(values, dtype=float))
    step = int(np.ceil(len(values) / max_labels))
    shown = values[::step]
    getattr(ax, f"set_{axis}scale")("log")
    getattr(ax, f"set_{axis}ticks")(shown, [f"{v:g}" for v in shown])
    getattr(ax, f"{axis}axis").set_minor_formatter(plt.NullFormatter())


def save(fig, path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)
