"""Command line: ``tilted demo [digits]``, ``tilted run SPEC --out RESULT.nc``, ``tilted batch SPEC --out DIR``,
``tilted report RESULT.nc --out report.html``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tilted", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo",
        help="`tilted demo`: the DAS Figure-1 toy against its exact target; `tilted demo digits`: the trained "
        "digits DDPM tilted toward a class",
    )
    demo.add_argument("which", nargs="?", default="toy", choices=["toy", "digits"], help="which demo (default: toy)")
    demo.add_argument("--label", type=int, default=3, help="digits: the class to tilt toward (default 3)")
    demo.add_argument("--out", default="outputs", help="folder for the figure (default: outputs)")
    demo.add_argument("--seed", type=int, default=0)

    run = sub.add_parser(
        "run",
        help="run a specification (.toml, .py or module) and save the result as netCDF",
        description="Run SPEC (a TOML file naming a model factory and an engine, a Python file or an importable "
        "module defining `model` and `engine`; see docs/diagnostics.md) and save the result, as an ArviZ "
        "DataTree, to netCDF.",
    )
    run.add_argument("spec", help="spec.toml, spec.py or a module name")
    run.add_argument("--out", required=True, help="the netCDF file to write (e.g. result.nc)")
    run.add_argument("--seed", type=int, default=None, help="override the specification's seed(s)")
    run.add_argument(
        "--baseline",
        type=int,
        default=None,
        help="pretrained draws for the report's before/after comparison (default: the engine's particles; 0: none; "
        "importance sampling is its own baseline)",
    )
    run.add_argument("--draws", type=int, default=None, help="posterior draws per run (default: the particles)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")

    batch = sub.add_parser(
        "batch",
        help="run every task of a batch specification, saving each result as it finishes; rerun to resume",
        description="Run the tasks of SPEC (the TOML of `tilted run` plus [[tasks]] and/or [sweep]; see "
        "docs/batch.md) in this process or on Ray workers, writing DIR/<id>.nc atomically and DIR/manifest.json "
        "after each task. Running the same command again runs only what is missing or failed.",
    )
    batch.add_argument("spec", help="batch.toml")
    batch.add_argument("--out", required=True, help="the folder of results and manifest.json")
    batch.add_argument(
        "--backend",
        choices=["local", "ray"],
        default="local",
        help="local: one task at a time in this process; "
        "ray: one actor per worker on a Ray cluster (pip install 'tilted[ray]')",
    )
    batch.add_argument("--address", default=None, help="Ray: join this cluster (default: start a local one)")
    batch.add_argument(
        "--workers", type=int, default=None, help="Ray: number of workers (default: as many as the cluster holds)"
    )
    batch.add_argument("--retries", type=int, default=0, help="retries of a failing task before it is recorded failed")
    batch.add_argument(
        "--timeout", type=float, default=None, help="seconds a task may run before it is stopped (a failed attempt)"
    )
    batch.add_argument("--no-progress", action="store_true", help="no progress bar")
    batch.add_argument(
        "--dry-run", action="store_true", help="list the tasks and which of them would run, and run nothing"
    )

    report = sub.add_parser("report", help="write a self-contained HTML report of a saved result")
    report.add_argument("result", help="a netCDF file written by `tilted run`, or a folder written by `tilted batch`")
    report.add_argument("--out", required=True, help="the HTML file to write (e.g. report.html)")
    report.add_argument("--strict", action="store_true", help="exit with status 1 when a diagnostic fails")

    args = parser.parse_args(argv)
    if args.command == "demo":
        if args.which == "digits":
            from tilted.demo_digits import run_digits_demo

            run_digits_demo(out=args.out, seed=args.seed, label=args.label)
        else:
            from tilted.demo import run_demo

            run_demo(out=args.out, seed=args.seed)
    elif args.command == "run":
        return _run(args)
    elif args.command == "batch":
        return _batch(args)
    elif args.command == "report":
        return _report(args)
    return 0


def _run(args) -> int:
    from tilted.diagnostics.arviz import save
    from tilted.diagnostics.spec import SpecError, load_spec, run_to_datatree
    from tilted.diagnostics.verdicts import diagnose

    try:
        spec = load_spec(args.spec)
    except SpecError as exc:
        print(f"tilted run: {exc}", file=sys.stderr)
        return 2
    if args.seed is not None:
        spec.seeds = [args.seed]
    command = {"command": " ".join(["tilted", *sys.argv[1:]])}
    dt = run_to_datatree(
        spec, draws=args.draws, baseline=args.baseline, progress=not args.no_progress, metadata=command
    )
    path = save(dt, args.out)
    print(diagnose(dt))
    print(f"\nresult: {path}  (tilted report {path} --out report.html)")
    return 0


def _batch(args) -> int:
    import signal

    from tilted.batch import BatchError, Store, read_batch, run_local, run_ray
    from tilted.diagnostics.spec import SpecError

    def stop(signum, frame):  # SIGTERM (a scheduler's kill) stops like Ctrl-C: no partial file is left
        raise KeyboardInterrupt

    try:
        tasks, workers = read_batch(args.spec)
        if args.retries < 0:
            raise BatchError(f"--retries must be ≥ 0, got {args.retries}")
        if args.timeout is not None and not args.timeout > 0:
            raise BatchError(f"--timeout must be > 0 seconds, got {args.timeout}")
        if args.backend == "local" and (args.address or args.workers):
            raise BatchError("--address and --workers are options of --backend ray")
        if args.dry_run:
            return _dry_run(tasks, Store(args.out) if Path(args.out).exists() else None)
        store = Store(args.out)
        previous = signal.signal(signal.SIGTERM, stop)
        try:
            options = {"retries": args.retries, "progress": not args.no_progress, "timeout": args.timeout}
            if args.backend == "ray":
                summary = run_ray(
                    tasks, store, **options, address=args.address, workers=args.workers, resources=workers
                )
            else:
                summary = run_local(tasks, store, **options)
        finally:
            signal.signal(signal.SIGTERM, previous)
    except (SpecError, BatchError) as exc:
        print(f"tilted batch: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            f"tilted batch: interrupted; finished tasks are in {args.out} (run the same command to resume)",
            file=sys.stderr,
        )
        return 130
    print(summary)
    print(f"\nresults: {args.out}/  (manifest.json lists every task)")
    return 1 if summary.failed else 0


def _dry_run(tasks, store) -> int:
    """``tilted batch --dry-run``: the tasks, and those a run would run (refusing changed options as a run would)."""
    if store is not None:
        store.check(tasks)
    pending = {t.id for t in (store.pending(tasks) if store is not None else tasks)}
    print(f"{len(tasks)} tasks, {len(pending)} to run, {len(tasks) - len(pending)} already done")
    for task in tasks:
        options = {k: task.table[k] for k in ("model_options", "engine_options") if task.table.get(k)}
        print(f"  {'run ' if task.id in pending else 'done'}  {task.id}  seed={task.seed}  {json.dumps(options)}")
    return 0


def _report(args) -> int:
    if Path(args.result).is_dir():  # a batch folder: one page over its tasks
        from tilted.batch.report import write_batch_report
        from tilted.batch.store import BatchError

        try:
            path = write_batch_report(args.result, args.out)
        except BatchError as exc:
            print(f"tilted report: {exc}", file=sys.stderr)
            return 2
        print(f"report: {path}")
        return 0
    from tilted.diagnostics.arviz import load
    from tilted.diagnostics.report import write_report
    from tilted.diagnostics.verdicts import diagnose

    try:
        dt = load(args.result)
    except (OSError, ValueError) as exc:  # missing, or not a netCDF file
        lines = str(exc).strip().splitlines() or [type(exc).__name__]
        reason = lines[0] if isinstance(exc, FileNotFoundError) else f"cannot read {args.result!r} ({lines[0]})"
        print(f"tilted report: {reason}", file=sys.stderr)
        return 2
    diagnosis = diagnose(dt)
    path = write_report(dt, args.out, diagnosis=diagnosis)
    print(diagnosis)
    print(f"\nreport: {path}")
    return 1 if args.strict and not diagnosis.ok else 0


if __name__ == "__main__":
    sys.exit(main())
