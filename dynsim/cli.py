"""``dynsim`` command line: ``list``, ``run NAME|SPEC.toml``, ``show DIR``."""

from __future__ import annotations

import argparse
import contextlib
import io as _stdio
import json
import pathlib
import sys
import warnings

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dynsim", description="Simulate training dynamics of toy models across "
                                "widths, learning rates and seeds, and compare them with theory.")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list the named experiments")
    r = sub.add_parser("run", help="run an experiment by name or from a TOML spec")
    r.add_argument("target", help="experiment name (see `dynsim list`) or path to a SPEC.toml")
    r.add_argument("--quick", action="store_true", help="small size: well under a minute on 2 CPU cores")
    r.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a spec key, e.g. --set width=[64,256] or --set train.steps=500 (repeatable)")
    r.add_argument("--out", help="output directory (default runs/NAME); rerun with the same one to resume")
    r.add_argument("--no-progress", action="store_true", help="hide progress (the bar on a terminal, lines in logs)")
    s = sub.add_parser("show", help="print the checks of a finished run")
    s.add_argument("dir")
    return p


def _error(message: str) -> int:
    print(f"dynsim: error: {message}", file=sys.stderr)
    return 2


_FORMAT_WARNING = warnings.formatwarning


def _format_warning(message, category, filename, lineno, line=None) -> str:
    """Damaged files of a results directory are reported in one line, like errors."""
    from .io import DamageWarning

    if issubclass(category, DamageWarning):
        return f"dynsim: warning: {message}\n"
    return _FORMAT_WARNING(message, category, filename, lineno, line)


def main(argv=None) -> int:
    warnings.formatwarning = _format_warning
    args = _parser().parse_args(argv)
    if args.command == "list":
        from . import experiments

        width = max(map(len, experiments.names()))
        for name in experiments.names():
            print(f"{name:{width}s}  {experiments.get(name).doc}")
        return 0
    if args.command == "show":
        return _show(pathlib.Path(args.dir))
    from . import experiments
    from . import io as _io
    from .spec import SpecError

    if args.out is not None and pathlib.Path(args.out).exists() and not pathlib.Path(args.out).is_dir():
        return _error(f"--out {args.out!r} exists and is not a directory.")
    _enable_compilation_cache()
    try:
        out, summary = experiments.run(args.target, out=args.out, quick=args.quick, sets=args.sets,
                                       progress=False if args.no_progress else None)
    except SpecError as e:
        return _error(str(e))
    except MemoryError as e:
        return _error(str(e))
    except (_io.DamagedError, _io.ClaimTimeout) as e:
        return _error(str(e))
    except OSError as e:
        return _error(f"cannot access {str(e.filename or args.out)!r}: {e.strerror or e}.")
    _print_checks(summary)
    print(f"report: {out / 'report.md'}")
    return 0


def _enable_compilation_cache() -> None:
    """Keep compiled programs on disk so a repeated or resumed run skips compilation.

    ``DYNSIM_CACHE_DIR`` picks the folder (default ``~/.cache/dynsim/jax``); an empty value turns the cache off.
    """
    import os

    import jax

    folder = os.environ.get("DYNSIM_CACHE_DIR", str(pathlib.Path.home() / ".cache" / "dynsim" / "jax"))
    if not folder:
        return
    try:
        pathlib.Path(folder).mkdir(parents=True, exist_ok=True)
    except OSError:
        return
    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)


def _print_checks(summary: dict) -> None:
    from .experiments import verdict_text

    marks = {"agrees": "ok", "inconclusive": "??", "disagrees": "NO"}
    fmt = lambda v: "n/a" if v is None else f"{v:.3g}"
    for c in summary["checks"]:
        verdict = c.get("verdict", "agrees" if c.get("agrees") else "disagrees")  # summaries written before verdicts
        c = {"competitor": "", "competing": None, "in_ci": True, **c, "verdict": verdict}
        print(f"  [{marks.get(verdict, '??')}] {c['name']}: {fmt(c['measured'])} [{fmt(c['ci'][0])}, "
              f"{fmt(c['ci'][1])}] vs {fmt(c['predicted'])} ± {fmt(c['tolerance'])} (competitor "
              f"{c['competitor'] or 'none'}: {fmt(c['competing'])}): {verdict_text(c)}")
    for k, v in summary.get("regimes", {}).items():
        print(f"  regime {k}: {v}")


def _show(path: pathlib.Path) -> int:
    f = path / "summary.json"
    if not f.exists():
        # an unfinished run: one store, or one per part (task variants such as superposition's alpha, catapult's
        # uv and mlp halves), each in a subdirectory
        parts = [path] if (path / "meta.json").exists() else sorted(p.parent for p in path.glob("*/meta.json"))
        finished = [p.name for p in parts if (p / "summary.json").exists()]
        if finished:  # a folder of runs, not the parts of one
            return _error(f"{path} holds no dynsim run (no summary.json) but runs of its own: "
                          f"{', '.join(finished)}; show one of them.")
        if parts:
            from . import io

            try:
                stored = [io.load(part)["diverged_at"] for part in parts]
            except io.DamagedError as e:
                return _error(str(e))
            done, size = sum(int((d > -2).sum()) for d in stored), sum(d.size for d in stored)
            names = ", ".join(p.name for p in parts)
            where = "" if parts == [path] else (f" in the {len(parts)} part{'s' if len(parts) > 1 else ''} started "
                                                f"({names})")
            print(f"{path}: unfinished run, {done}/{size} members stored{where}; rerun to resume.")
            return 0
        return _error(f"{path} holds no dynsim run (no summary.json).")
    damaged = (f"{f} is damaged (not the JSON summary of a run); run the experiment again with --out {path} to "
               "rewrite it.")
    try:
        summary = json.loads(f.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return _error(damaged)
    checks = _stdio.StringIO()
    try:
        with contextlib.redirect_stdout(checks):
            print(f"{summary['experiment']}: {path}")
            _print_checks(summary)
    except (KeyError, TypeError, ValueError, IndexError):  # valid JSON of another shape
        return _error(damaged)
    print(checks.getvalue(), end="")
    print(f"report: {path / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
