"""Guidance and search engines against SMC on the DAS grid toy, at equal denoiser calls per draw.

A view of the main suite (``./run bench``, :mod:`benchmarks.suite`): the same engines, budgets and
metrics, run on the grid toy only and printed as one table, without rewriting docs/benchmarks.md::

    python benchmarks/guidance_search.py                 # 1000 points × 5 repetitions
    python benchmarks/guidance_search.py --points 200    # quicker, noisier
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks import suite  # noqa: E402
from benchmarks.report.format import calls, engine_table, fmt, gap, mean_se  # noqa: E402

ENGINES = (
    "importance",
    "smc-bootstrap",
    "das",
    "nested-is",
    "svdd",
    "svdd-greedy",
    "beam",
    "best-of-N",
    "dps",
    "mpgd",
    "freedom",
)


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args(argv)
    settings = replace(suite.Settings(), points=args.points, repeats=args.repeats, jobs=args.jobs)
    res = suite.run(["grid"], ENGINES, settings, log=lambda msg: print(msg, file=sys.stderr))["grid"]
    ref = res["reference"]
    columns = [
        ("mean reward", lambda m: fmt(m["reward"])),
        ("EMD", lambda m: fmt(m["emd"])),
        ("EMD − floor", lambda m: fmt(gap(m, ref))),
        ("denoiser / reward / gradient calls per point", calls),
    ]
    exact = [f"{res['task']['expected_reward']:.3f}", fmt(mean_se(ref["emd"])), "0", "—"]
    table = "\n".join(engine_table(columns, ("exact target (floor)", exact), res["outputs"]))
    print(f"{res['task']['title']}: {args.points} points × {args.repeats} repetitions\n\n{table}")
    return table


if __name__ == "__main__":
    main()
