"""Figures: measured points, fitted laws and theory curves on the same axes."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

__all__ = ["plt", "width_colors", "save"]


def width_colors(n: int):
    """``n`` colours from light to dark, one per width."""
    return plt.cm.viridis(np.linspace(0.05, 0.9, n))


def save(fig, path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)
