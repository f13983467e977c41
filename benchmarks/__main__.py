"""``python -m benchmarks`` (``./run bench``): run the suite and write docs/benchmarks.md and its figures.

``./run bench digits [--quick]`` runs the digits benchmark instead (:mod:`benchmarks.digits`, which
writes docs/benchmarks_digits.md); ``./run bench online [--quick]`` the online black-box benchmark
(:mod:`benchmarks.online`, docs/benchmarks_online.md).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
import time
import warnings
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from benchmarks import engines, overhead, report, suite  # noqa: E402
from benchmarks.tasks import TASKS  # noqa: E402

ALL_TASKS = (*TASKS, "overhead")


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="./run bench", description=__doc__)
    p.add_argument("--quick", action="store_true", help="small smoke version (writes to a temporary folder by default)")
    p.add_argument(
        "--tasks",
        nargs="+",
        default=list(ALL_TASKS),
        choices=ALL_TASKS,
        metavar="TASK",
        help=f"tasks to run (default: all): {' '.join(ALL_TASKS)}",
    )
    p.add_argument(
        "--engines",
        nargs="+",
        default=list(engines.ENGINE_NAMES),
        choices=engines.ENGINE_NAMES,
        metavar="ENGINE",
        help=f"engines to run (default: all): {' '.join(engines.ENGINE_NAMES)}",
    )
    p.add_argument("--out", type=Path, default=None, help="folder for benchmarks.md and figures/ (default: docs)")
    p.add_argument("--jobs", type=int, default=None, help="worker processes (default: 2, or 1 with one CPU)")
    p.add_argument("--points", type=int, default=None, help="output points per repetition (default 2000)")
    p.add_argument("--repeats", type=int, default=None, help="repetitions (default 5)")
    p.add_argument("--json", type=Path, default=None, help="also write the raw numbers to this JSON file")
    p.add_argument("--save", type=Path, default=None, help="also save the full results (torch.save) to re-render later")
    p.add_argument("--render", type=Path, default=None, help="only re-render the page from results saved by --save")
    return p.parse_args(argv)


def _plain(value):
    """JSON-ready copy of the results (tensors of plotted points left out)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if k != "points"}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.tolist()
    return value


def main(argv=None) -> Path:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["digits"]:
        from benchmarks import digits

        return digits.main(argv[1:])
    if argv[:1] == ["online"]:
        from benchmarks import online

        return online.main(argv[1:])
    args = parse(argv)
    settings = suite.Settings.quick() if args.quick else suite.Settings()
    jobs = args.jobs if args.jobs is not None else min(settings.jobs, os.cpu_count() or 1)
    settings = replace(
        settings, jobs=max(jobs, 1), points=args.points or settings.points, repeats=args.repeats or settings.repeats
    )
    out = args.out or (Path(tempfile.mkdtemp(prefix="tilted-bench-")) if args.quick else Path("docs"))
    if args.render:  # the page and figures of a saved run, with the current report code
        saved = torch.load(args.render, weights_only=False)
        return report.write(saved["results"], saved["overhead"], saved["settings"], saved["info"], out)
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", category=UserWarning)
    start = time.perf_counter()
    log = lambda msg: print(f"{time.perf_counter() - start:7.1f}s  {msg}", file=sys.stderr, flush=True)  # noqa: E731
    quality = [t for t in args.tasks if t != "overhead"]
    results = suite.run(quality, args.engines, settings, log) if quality else {}
    over = overhead.run(settings, log) if "overhead" in args.tasks else None
    info = {
        "command": "./run bench " + " ".join(argv),
        "date": datetime.date.today().isoformat(),
        "seconds": time.perf_counter() - start,
        "cpus": os.cpu_count(),
    }
    path = report.write(results, over, suite.settings_dict(settings), info, out)
    if args.save:
        torch.save(
            {"results": results, "overhead": over, "settings": suite.settings_dict(settings), "info": info}, args.save
        )
    if args.json:
        args.json.write_text(json.dumps(_plain({"run": info, "results": results, "overhead": over}), indent=1))
    log(f"wrote {path} and {out / 'figures'}/bench_*.png")
    return path


if __name__ == "__main__":
    main()
