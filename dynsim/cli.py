"""``dynsim`` command line: ``list``, ``run NAME|SPEC.toml``, ``plan NAME|SPEC.toml``, ``show DIR``, ``fit DATA``."""

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
    d = r.add_argument_group("several processes", "Run over several processes or hosts on JAX's distributed runtime: "
                             "start every process with the same arguments and an --out they all reach; each trains "
                             "its share of the chunks and process 0 writes the results and the report.")
    d.add_argument("--coordinator", metavar="HOST:PORT", help="the coordinator's address, which process 0 serves")
    d.add_argument("--num-processes", type=int, metavar="N", help="how many processes take part")
    d.add_argument("--process-id", type=int, metavar="I", help="this process's index, 0 to N-1")
    d.add_argument("--distributed", action="store_true",
                   help="join a distributed run that the environment describes (JAX_COORDINATOR_ADDRESS, or a "
                        "launcher JAX detects: Slurm, Open MPI, Kubernetes, Cloud TPU); implied by the flags above "
                        "and by JAX_COORDINATOR_ADDRESS")
    d.add_argument("--init-timeout", type=float, default=300.0, metavar="SECONDS",
                   help="how long to wait for the coordinator and every process to join (default 300)")
    pl = sub.add_parser("plan", help="print what a run would compile and train, the memory per device and the time "
                        "on this machine, without training")
    pl.add_argument("target", help="experiment name (see `dynsim list`) or path to a SPEC.toml")
    pl.add_argument("--quick", action="store_true", help="plan the quick size")
    pl.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="override a spec key, as for `dynsim run` (repeatable)")
    pl.add_argument("--no-calibration", action="store_true",
                    help="skip the short timing run of one group per bucket (no time estimates)")
    pl.add_argument("--json", metavar="PATH", help="also write the plan as JSON")
    s = sub.add_parser("show", help="print the checks of a finished run")
    s.add_argument("dir")
    f = sub.add_parser("fit", help="fit a scaling law (dynsim.fit.law) to a CSV table or a results folder")
    f.add_argument("data", help="DATA.csv, or a results folder (dynsim.io.load)")
    f.add_argument("--form", required=True, help="chinchilla, kaplan, bottleneck, power, broken_power or annealing")
    f.add_argument("--x", required=True, metavar="VAR=COLUMN,...",
                   help="the form's variables as columns or expressions of them, e.g. "
                        "'N=Model Size,D=Training FLOP/(6*Model Size)'")
    f.add_argument("--y", default="loss", metavar="COLUMN", help="the fitted column (default loss)")
    f.add_argument("--runs", metavar="COLUMN", help="the column naming each point's run (the bootstrap's unit)")
    f.add_argument("--drop-top", type=int, default=0, metavar="K", help="leave out the K points of highest y")
    f.add_argument("--loss", choices=("huber", "lsq"), default="huber", help="Huber on log residuals, or lsq")
    f.add_argument("--delta", type=float, default=1e-3, help="the Huber threshold (default 1e-3)")
    f.add_argument("--bootstrap", type=int, default=0, metavar="B", help="bootstrap refits over runs for the CIs")
    f.add_argument("--top", type=int, default=32, metavar="S", help="L-BFGS starts: the S best grid points")
    f.add_argument("--json", metavar="OUT", help="write {form, params, ci, objective, n_points} as JSON")
    f.add_argument("--figure", metavar="PNG", help="the figure (default: OUT with .png, or fit.png)")
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
    if args.command == "fit":
        from .fit._cli import main as fit_main

        return fit_main(args)
    if args.command == "plan":
        return _plan(args)
    if args.command == "run" and _distributed(args):
        from .executor import DistributedError, initialize_distributed

        try:  # before any JAX computation
            initialize_distributed(args.coordinator, args.num_processes, args.process_id, timeout=args.init_timeout)
        except DistributedError as e:
            return _error(str(e))
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
    if summary is None:  # a process other than 0 of a distributed run
        from .executor import process_index

        print(f"dynsim: process {process_index()}: its chunks are stored in {out}; process 0 writes the report.")
        return 0
    _print_checks(summary)
    print(f"report: {out / 'report.md'}")
    return 0


def _bytes(n) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def _seconds(t) -> str:
    return "-" if t is None else f"{t:.2g} s" if t < 10 else f"{t:.0f} s"


def _widths(widths) -> str:
    return ",".join(map(str, widths)) if len(widths) <= 4 else f"{widths[0]}..{widths[-1]} ({len(widths)})"


def _plan(args) -> int:
    """``dynsim plan``: the buckets, groups, layout and chunks of a run, with memory and time estimates."""
    from . import executor, experiments
    from .experiments._runner import task_variants
    from .spec import SpecError

    try:
        exp, spec = experiments.resolve_spec(args.target, quick=args.quick, sets=args.sets)
        if "sweep" not in spec:
            return _error(f"{exp.name} builds each of its runs in its own stages and has no sweep of its own to "
                          "plan; plan a spec file of one of its runs instead.")
        model, task, sweep, opts = experiments.build(spec)
        variants = max(len(task_variants(spec, task)), 1)
        p = executor.run(model, task, sweep, dry_run=True, progress=False, **opts)
    except (SpecError, executor.InputError) as e:
        return _error(str(e))
    if not args.no_calibration:
        p.calibrate()
    head = f"{exp.name}{' (quick)' if args.quick else ''}: {p.members} members"
    head += f" x {variants} task variants (one run each)" if variants > 1 else ""
    print(f"{head}, {p.steps} steps, layout {p.layout}")
    limit = "unknown" if p.memory_limit is None else _bytes(p.memory_limit)
    print(f"this machine: backend {p.backend}, {p.local_devices} local device{'s' if p.local_devices > 1 else ''} "
          f"({limit} each), {p.processes} process{'es' if p.processes > 1 else ''}")
    cols = ("#", "optimizer", "batch", "n_pad" if p.layout == "vmap" else "units", "widths", "members",
            "group" if p.layout == "vmap" else "slots", "groups" if p.layout == "vmap" else "packs", "chunks",
            "memory/device", "compile", "per group", "total")
    rows = [[str(k + 1), r["optimizer"], str(r["batch_size"] or "full"), str(r["n_pad"]), _widths(r["widths"]),
             str(r["members"]), str(r["group"]), str(r["groups"]), str(r["chunks"]), _bytes(r["memory_bytes"]),
             _seconds(r["compile_s"]),
             _seconds(None if r["seconds"] is None else (r["seconds"] - r["compile_s"]) / r["groups"]),
             _seconds(r["seconds"])] for k, r in enumerate(p.rows())]
    width = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(cols)]
    for row in [list(cols), *rows]:
        print("  ".join(v.ljust(w) if i in (1, 4) else v.rjust(w) for i, (v, w) in enumerate(zip(row, width))))
    n_groups, n_chunks = sum(b.bucket.n_groups for b in p.buckets), sum(b.chunks for b in p.buckets)
    peak = max(b.memory for b in p.buckets)
    print(f"total: {len(p.buckets)} bucket{'s' if len(p.buckets) > 1 else ''}, {n_groups} "
          f"group{'s' if n_groups > 1 else ''}, {n_chunks} chunk{'s' if n_chunks > 1 else ''}; at most {_bytes(peak)} "
          f"per device{'' if p.memory_limit is None else f' ({100 * peak / p.memory_limit:.2g}% of {limit})'}")
    seconds = None
    if p.seconds is not None:
        compile_s = sum(b.compile_s for b in p.buckets)
        seconds = compile_s + variants * (p.seconds - compile_s)
        print(f"time: about {_seconds(seconds)} on this {p.backend} backend ({_seconds(compile_s)} compiling), from "
              "timing one group of each bucket; N processes with the same devices take about 1/N of the rest")
    if "hypergrad" in spec:
        print("note: with its [hypergrad] table this spec is differentiated, not recorded: forward mode carries one "
              "tangent per hyperparameter beside each member, reverse mode holds about steps / remat_every + "
              "remat_every states; the times above are those of the plain run")
    if exp.execute is not None:
        print(f"note: {exp.name} runs further stages after this sweep, which depend on its results and are not "
              "planned here")
    if args.json:
        from .io import write_json

        write_json(args.json, {"experiment": exp.name, "task_variants": variants, "estimated_seconds": seconds,
                               **p.to_dict()})
    return 0


def _distributed(args) -> bool:
    """Whether ``dynsim run`` joins a distributed run: a flag of its own, or JAX's coordinator variable."""
    import os

    flags = (args.coordinator, args.num_processes, args.process_id)
    return args.distributed or any(v is not None for v in flags) or bool(os.environ.get("JAX_COORDINATOR_ADDRESS"))


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
