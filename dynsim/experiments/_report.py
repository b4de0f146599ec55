"""Shared pieces of analyses and reports: final records, error bars, markdown tables, verdicts in words, and the
report page every experiment writes."""

from __future__ import annotations

import math

import numpy as np

from ..executor import AXES
from ._contract import Experiment

__all__ = ["squeeze_axes", "final", "ci_errors", "table", "verdict_text", "report"]


def squeeze_axes(obj, dims=None, *, keep=()):
    """``obj`` (a DataArray or Dataset) without its length-1 axes among ``dims`` (default: all of them) and not in
    ``keep``: the sweep axes an experiment holds at one value. Longer axes and names ``obj`` lacks are left alone."""
    dims = list(obj.sizes) if dims is None else dims
    return obj.squeeze([d for d in dims if d in obj.sizes and d not in keep and obj.sizes[d] == 1])


def final(ds, name: str, keep=()):
    """``ds[name]`` at the last record, without the sweep axes that hold one value (other than ``keep``)."""
    return squeeze_axes(ds[name].isel(step=-1), AXES, keep=keep)


def ci_errors(value, lo, hi) -> np.ndarray:
    """Error bars ``[2, ...]`` (below, above) for ``Axes.errorbar`` from a point estimate and its interval; an end
    that is NaN, or on the wrong side of the estimate, draws no bar."""
    value, lo, hi = (np.asarray(v, dtype=float) for v in (value, lo, hi))
    err = np.stack([value - lo, hi - value])
    return np.where(np.isfinite(err) & (err > 0), err, 0.0)


def table(header, rows) -> str:
    """A markdown table: ``header`` a list of column titles, ``rows`` lists of cells (numbers as ``%.3g``)."""
    cell = lambda v: _fmt(v) if isinstance(v, (float, np.floating)) else str(v)
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _fmt(v):
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3g}"


def verdict_text(check: dict) -> str:
    """A check's verdict in words: ``agrees (in CI)``, ``agrees (within model error)``, ``inconclusive`` with
    the reason, or ``disagrees``."""
    v = check["verdict"]
    if v == "agrees":
        return "agrees (in CI)" if check.get("in_ci") else "agrees (within model error)"
    if v == "inconclusive":
        if check["ci"][0] is None or check["predicted"] is None:
            return "inconclusive (nothing measured)"
        return f"inconclusive (also consistent with {check['competitor']})"
    return "disagrees"


def report(exp: Experiment, summary: dict, body: str) -> str:
    lines = [f"# {exp.name}", "", exp.doc, ""]
    if summary["checks"]:
        lines += ["## Checks", "", "Each check names the competing law it exists to rule out. It **agrees** when the "
                  "CI, widened by the model error (finite size, finite training; its reason is given), holds the "
                  "prediction and not the competitor; it is **inconclusive** when it holds both, and **disagrees** "
                  "when it does not hold the prediction.", "",
                  "| check | measured | CI | predicted | competitor | model error | verdict |",
                  "|---|---|---|---|---|---|---|"]
    for c in summary["checks"]:
        text = verdict_text(c)
        text = text if c["verdict"] == "agrees" else f"**{text}**"
        lines.append(f"| {c['name']} | {_fmt(c['measured'])} | [{_fmt(c['ci'][0])}, {_fmt(c['ci'][1])}] | "
                     f"{_fmt(c['predicted'])} | {c['competitor']}: {_fmt(c['competing'])} | "
                     f"{_fmt(c['tolerance'])} | {text} |")
    if summary["checks"]:
        lines += ["", "Model errors and intervals:", ""] + [f"- {c['name']}: {c['reason']}" for c in summary["checks"]
                                                           if c["reason"]]
    if summary["regimes"]:
        lines += ["", "## Regimes", ""] + [f"- {k}: {v}" for k, v in summary["regimes"].items()]
    lines += ["", body, "", "## Figures", ""] + [f"![{f}]({f})" for f in summary["figures"]]
    t = summary["timing"]
    names = {"members": "members trained (copies and stored members excluded)"}
    lines += ["", "## Timing", "", ", ".join(f"{names.get(k, k)}: {v:.3g}" if isinstance(v, float)
                                              else f"{names.get(k, k)}: {v}" for k, v in t.items())]
    return "\n".join(lines) + "\n"
