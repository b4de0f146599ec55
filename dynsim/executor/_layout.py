"""The interface both layouts implement."""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from ._program import Hyper, Program

__all__ = ["Layout"]


class Layout(Protocol):
    """How a group of members is laid out in one compiled program.

    :class:`~dynsim.executor.VmapLayout` pads members to their bucket's width and ``vmap``-s them;
    :class:`~dynsim.executor.PackedLayout` puts the hidden units of two-layer members side by side. The driver
    (:func:`dynsim.run`) calls, per group: ``place`` once, ``init`` once, then ``advance`` once per segment.
    """

    name: str

    @staticmethod
    def supports(model, observables) -> bool:
        """Whether this layout can train ``model`` and record ``observables``."""

    @staticmethod
    def place(prog: Program, hyper: Hyper, widths: np.ndarray) -> Any:
        """The group's arguments on the devices, from its members' numbers and true widths."""

    @staticmethod
    def init(prog: Program, data, placed) -> tuple[Any, dict]:
        """``(state, records at step 0)``; records have a leading member axis."""

    @staticmethod
    def advance(prog: Program, data, state, placed, step0) -> tuple[Any, dict]:
        """``(state, records)`` after ``prog.steps_per_segment`` more steps; records ``[records, member, ...]``."""
