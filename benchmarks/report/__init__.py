"""The benchmark page: hand-written method text and generated tables and figures (one module per section)."""

from __future__ import annotations

import platform
from pathlib import Path

import torch

from benchmarks import engines, figures
from benchmarks.report.discrete import discrete_section
from benchmarks.report.format import engines_table
from benchmarks.report.linear_gaussian import lg_section
from benchmarks.report.overhead_table import overhead_section
from benchmarks.report.ring import investigation
from benchmarks.report.summary import MARGIN, summary
from benchmarks.report.text import HEADER
from benchmarks.report.toys import toy_section
from benchmarks.tasks import build

__all__ = ["MARGIN", "write"]


def write(results: dict, overhead: dict | None, settings: dict, run_info: dict, out_dir: Path) -> Path:
    """Render the page into ``out_dir/benchmarks.md`` and figures into ``out_dir/figures``."""
    out_dir = Path(out_dir)
    folder = out_dir / "figures"
    figs = {
        "toys": figures.scatter(results, folder),
        "emd": figures.emd_bars(results, folder, MARGIN),
        "lambda": figures.lambdas(results, folder),
        "lg": figures.linear_gaussian(results, folder),
    }
    probes, identical = [], None
    if "ring" in results:
        figs["value"], probes = figures.ring_values(folder, results["ring"]["task"]["num_steps"])
        if {"smc-adaptive", "smc-bootstrap"} <= set(results["ring"]["outputs"]):
            ring = build("ring", results["ring"]["task"]["num_steps"])
            identical = engines.same_draws(ring, "smc-adaptive", "smc-bootstrap")
    lines = HEADER.splitlines()
    lines += ["", "## Engines", "", *engines_table(), ""]
    lines += [
        "## This run",
        "",
        f"Command `{run_info['command']}`, {run_info['date']}, total {run_info['seconds'] / 60:.1f} min; "
        f"{platform.python_implementation()} {platform.python_version()}, torch {torch.__version__}, "
        f"{run_info['cpus']} CPU cores, {settings['jobs']} worker process(es) with 1 torch thread each; "
        f"settings: {settings}.",
        "",
    ]
    lines += summary(results, overhead, settings)
    if figs["emd"]:
        lines += [f"![EMD](figures/{figs['emd']})", ""]
    for res in results.values():
        if res["task"]["plot2d"]:
            lines += toy_section(res, settings)
    if figs["toys"]:
        lines += [f"![toys](figures/{figs['toys']})", ""]
    lines += investigation(results, probes, figs, identical, settings)
    lines += lg_section(results, figs)
    lines += discrete_section(results, settings)
    lines += overhead_section(overhead)
    path = out_dir / "benchmarks.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines).rstrip() + "\n")
    return path
