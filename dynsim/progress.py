"""Progress reports for long loops: a bar where someone watches, plain lines where output goes to a log.

:func:`tracker` returns an object with tqdm's ``update(n)`` / ``close()`` and context-manager protocol:

- a tqdm bar when stderr is a terminal, or in a Jupyter kernel (a widget there when ipywidgets is installed, text
  otherwise, which needs no widgets);
- otherwise (logs, CI, ``nohup``) plain lines on stderr, at most one every ``interval`` seconds (default 10, or the
  environment variable ``DYNSIM_PROGRESS_INTERVAL``), with the work done, the rate and an ETA, e.g.
  ``dynsim: training 1234/5000 member-steps (25%), 12 s elapsed, 103 member-steps/s, ETA 36 s``.

``enabled=False`` silences both and ``enabled=True`` forces the bar; ``None`` chooses as above. For ``None`` the
environment variable ``DYNSIM_PROGRESS`` can also decide: ``0``/``off``/``false`` silences, ``lines`` asks for
lines, any other non-empty value the bar.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time

__all__ = ["tracker", "Lines", "Silent", "in_kernel", "INTERVAL_ENV", "DEFAULT_INTERVAL"]

INTERVAL_ENV = "DYNSIM_PROGRESS_INTERVAL"
DEFAULT_INTERVAL = 10.0


def in_kernel() -> bool:
    """Whether this process is a Jupyter (IPython) kernel."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    shell = ipython.get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def tracker(total: int | None, enabled: bool | None = None, desc: str = "", unit: str = "it", *,
            interval: float | None = None):
    """A progress report over ``total`` units of work (``None``: unknown), chosen as the module says.

    ``interval``: seconds between lines when reporting in lines (default ``DYNSIM_PROGRESS_INTERVAL`` or 10).
    """
    mode = _mode(enabled)
    if mode == "off":
        return Silent()
    if mode == "lines":
        return Lines(total, desc, unit, interval=interval)
    return _bar(total, desc, unit)


def _mode(enabled: bool | None) -> str:
    if enabled is not None:
        return "bar" if enabled else "off"
    env = os.environ.get("DYNSIM_PROGRESS", "").strip().lower()
    if env in ("0", "off", "false", "no"):
        return "off"
    if env == "lines":
        return "lines"
    if env or in_kernel() or _isatty(sys.stderr):
        return "bar"
    return "lines"


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def _bar(total, desc, unit):
    if in_kernel() and importlib.util.find_spec("ipywidgets") is not None:
        from tqdm.notebook import tqdm  # a widget
    else:
        from tqdm import tqdm  # text; tqdm.auto would warn in a kernel without ipywidgets
    return tqdm(total=total, desc=desc, unit=unit, unit_scale=True, dynamic_ncols=True, leave=False)


class Silent:
    """Reports nothing."""

    n = 0

    def update(self, n: int = 1) -> None:
        self.n += n

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Lines:
    """Plain progress lines on ``stream`` (default stderr), at most one every ``interval`` seconds, and a last one on
    :meth:`close` when the work took longer than ``interval`` and the last line written is out of date."""

    def __init__(self, total: int | None, desc: str = "", unit: str = "it", *, interval: float | None = None,
                 stream=None):
        if interval is None:
            interval = float(os.environ.get(INTERVAL_ENV) or DEFAULT_INTERVAL)
        self.total, self.desc, self.unit, self.interval = total, desc, unit, float(interval)
        self.stream = stream
        self.n = 0
        self.written = 0
        self._written_n = None
        self.closed = False
        self.start = self._last = time.perf_counter()

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.perf_counter()
        if now - self._last >= self.interval:
            self._write(now)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        now = time.perf_counter()
        if self._written_n != self.n and (self.written or now - self.start >= self.interval):
            self._write(now, done=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def line(self, now: float | None = None, done: bool = False) -> str:
        """The progress line at time ``now`` (default: this moment)."""
        now = time.perf_counter() if now is None else now
        elapsed = now - self.start
        units = self.unit if self.unit.endswith("s") else self.unit + "s"
        count = f"{_count(self.n)}/{_count(self.total)}" if self.total else _count(self.n)
        parts = [f"dynsim: {self.desc + ' ' if self.desc else ''}{count} {units}"]
        if self.total:
            parts[0] += f" ({100 * self.n / self.total:.0f}%)"
        parts.append(f"{_duration(elapsed)} {'in all' if done else 'elapsed'}")
        rate = self.n / elapsed if elapsed > 0 else 0.0
        if rate > 0:
            parts.append(f"{_count(rate, rate < 10)} {units}/s")
        if not done and self.total:
            parts.append(f"ETA {_duration((self.total - self.n) / rate)}" if rate > 0 else "ETA unknown")
        return ", ".join(parts)

    def _write(self, now: float, done: bool = False) -> None:
        stream = self.stream if self.stream is not None else sys.stderr
        print(self.line(now, done), file=stream, flush=True)
        self.written += 1
        self._written_n = self.n
        self._last = now


def _count(x: float | None, fraction: bool = False) -> str:
    if x is None:
        return "?"
    if fraction:
        return f"{x:.2g}"
    if abs(x) < 1e5:
        return f"{x:.0f}"
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{suffix}"
    return f"{x:.0f}"


def _duration(seconds: float) -> str:
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, s = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {s:02d} s"
    hours, m = divmod(minutes, 60)
    return f"{hours} h {m:02d} min"
