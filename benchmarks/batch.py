"""Batch runs: the measured overhead of the backends here, and the sketch of a 1,000-prompt SD run on a GPU cluster.

``python -m benchmarks.batch OUT_DIR`` runs one toy batch (``--tasks`` tasks of the DAS toy, SMC) with the
local backend and with the Ray backend at 1 and 2 workers, each into a fresh folder, checks that every
backend wrote bitwise the same particles, and writes ``OUT_DIR/benchmarks_batch.md`` with the wall times
(Ray's include starting and stopping its local cluster) and ``OUT_DIR/figures/batch_cluster.png``: the
layout of the documented SD run (docs/batch.md) with its estimated GPU-hours from the FLOP model of
docs/benchmarks_sd.md (an extrapolation, said so on the figure).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

#: the FLOP model of docs/benchmarks_sd.md (SD 1.5, K = 100, per output image, TFLOP)
TFLOP_DAS, TFLOP_PLAIN = 890.0, 163.0


def sd_estimate(
    prompts=1000, seeds=2, particles=4, baseline=4, gpus=8, peak_tflops=989.0, utilisation=0.35
) -> dict[str, float]:
    """GPU-seconds of the documented SD batch: per task N DAS images and ``baseline`` plain draws."""
    per_task = (particles * TFLOP_DAS + baseline * TFLOP_PLAIN) / (peak_tflops * utilisation)
    tasks = prompts * seeds
    return {"tasks": tasks, "seconds_per_task": per_task, "gpu_hours": tasks * per_task / 3600,
            "wall_hours": tasks * per_task / 3600 / gpus, "gpus": gpus}  # fmt: skip


def draw_cluster(path: Path, estimate: dict) -> None:
    """The layout: a driver with the task queue and DIR, GPU nodes with one actor (SD + CLIP loaded) per GPU."""
    fig, ax = plt.subplots(figsize=(10, 5.2))
    ax.set_xlim(0, 10)
    ax.set_ylim(0, 5.6)
    ax.axis("off")

    def box(x, y, w, h, text, color, size=8.5):
        ax.add_patch(plt.Rectangle((x, y), w, h, facecolor=color, edgecolor="#333", lw=1))
        ax.text(x + w / 2, y + h / 2, text, ha="center", va="center", fontsize=size)

    box(0.2, 1.2, 2.6, 3.4, "", "#f4f4f4")
    ax.text(1.5, 4.1, "driver (head node, 1 CPU)\n`tilted batch --backend ray`", ha="center", fontsize=8.5)
    box(0.4, 2.75, 2.2, 1.0, f"queue: {estimate['tasks']:,} tasks\n1,000 prompts × 2 seeds\ngrouped by model", "#fff")
    box(0.4, 1.4, 2.2, 1.1, "DIR/<id>.nc (atomic)\nmanifest.json\nwritten by the driver only", "#e8f1e4")
    for node in range(2):
        x0 = 3.4 + node * 3.3
        box(x0, 0.5, 3.0, 4.7, "", "#eef2f8")
        ax.text(x0 + 1.5, 4.95, f"GPU node {node + 1} of {estimate['gpus'] // 4}", ha="center", fontsize=8.5)
        for g in range(4):
            box(
                x0 + 0.15,
                3.85 - g * 1.05,
                2.7,
                0.9,
                f"actor {node * 4 + g + 1}: num_gpus = 1\nSD 1.5 + CLIP loaded once",
                "#fff",
                8,
            )
    ax.annotate("", xy=(3.5, 3.6), xytext=(2.6, 3.25), arrowprops={"arrowstyle": "->", "color": "#555"})
    ax.text(2.75, 3.7, "next task", fontsize=7.5, color="#555")
    ax.annotate("", xy=(2.6, 1.95), xytext=(3.5, 1.7), arrowprops={"arrowstyle": "->", "color": "#555"})
    ax.text(2.65, 2.0, "netCDF bytes", fontsize=7.5, color="#555")
    ax.text(
        5.0, 0.12,
        f"estimate (FLOP model of docs/benchmarks_sd.md at 35% of an H100's 989 TFLOP/s, not a measurement): "
        f"{estimate['seconds_per_task']:.0f} s per task, {estimate['gpu_hours']:.1f} GPU-hours, "
        f"≈ {estimate['wall_hours'] * 60:.0f} min on {estimate['gpus']} GPUs",
        ha="center", fontsize=7.5, style="italic",
    )  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def measure(num_tasks: int, folder: Path, particles: int, steps: int) -> list[tuple[str, float, float]]:
    """(backend, start-up seconds, seconds for the tasks) of the same toy batch per backend; every backend's
    particles must agree bit for bit. Ray's start-up is its local cluster's ``ray.init`` (and actors'
    first import of torch and tilted falls in the tasks' time)."""
    import ray

    from tilted.batch import Store, expand, run_local, run_ray
    from tilted.diagnostics import load

    table = {
        "model": "tilted.diagnostics.toys:das_toy", "engine": "SMC", "baseline": 0,
        "model_options": {"num_steps": steps}, "engine_options": {"num_particles": particles},
        "sweep": {"seed": list(range(num_tasks))},
    }  # fmt: skip
    tasks = expand(table)
    rows, first = [], None
    for name, workers in (("local", None), ("ray, 1 worker", 1), ("ray, 2 workers", 2)):
        out = Store(folder / name.replace(", ", "-").replace(" ", ""))
        start = time.perf_counter()
        if workers:
            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        ready = time.perf_counter()
        try:
            if workers:
                summary = run_ray(tasks, out, progress=False, workers=workers)
            else:
                summary = run_local(tasks, out, progress=False)
        finally:
            if workers:
                ray.shutdown()
        rows.append((name, ready - start, time.perf_counter() - ready))
        assert len(summary.done) == num_tasks, summary
        particles_ = [load(out.file(t))["particles"]["x"].values for t in tasks]
        first = first or particles_
        assert all(np.array_equal(a, b) for a, b in zip(first, particles_, strict=True)), name
    return rows


def main(argv=None) -> Path:
    p = argparse.ArgumentParser(prog="python -m benchmarks.batch", description=__doc__.split("\n")[0])
    p.add_argument("out", type=Path, help="folder of the page and its figures (docs/ for the published one)")
    p.add_argument("--tasks", type=int, default=16)
    p.add_argument("--particles", type=int, default=4096)
    p.add_argument("--steps", type=int, default=100)
    args = p.parse_args(argv)
    os.environ.setdefault("RAY_TMPDIR", tempfile.mkdtemp(prefix="ray", dir="/tmp"))
    estimate = sd_estimate()
    draw_cluster(args.out / "figures" / "batch_cluster.png", estimate)
    with tempfile.TemporaryDirectory() as folder:
        rows = measure(args.tasks, Path(folder), args.particles, args.steps)
    local = rows[0][2]
    lines = [
        "# Batch runs: measured overhead of the backends",
        "",
        "Generated by `python -m benchmarks.batch docs` (do not edit by hand). "
        f"{args.tasks} tasks of the DAS toy (SMC, {args.particles} particles, {args.steps} steps), the same "
        "tasks per backend, each into a fresh folder; every backend wrote bitwise the same particles "
        "(checked). Start-up is Ray's local cluster (`ray.init`); the tasks' time includes starting the actors "
        "(each imports torch and tilted) and sending every result back as netCDF bytes.",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores; {datetime.date.today()}.",
        "",
        "| backend | start-up (s) | tasks (s) | s / task | tasks × local |",
        "|---|---:|---:|---:|---:|",
        *[f"| {n} | {s0:.1f} | {t:.1f} | {t / args.tasks:.2f} | {t / local:.2f} |" for n, s0, t in rows],
        "",
        "Reading it: Ray costs seconds to start, plus its workers' first imports, and a worker is one process "
        "with one torch thread per CPU it reserves; on this 2-core machine two workers do about what one "
        "process does with torch on both cores. Ray pays off where a task is long against those seconds (an "
        "SD task is ~10 s of GPU time) and there are several GPUs or machines; on one CPU machine "
        "`--backend local` is the right choice.",
        "",
        "![layout of a 1,000-prompt SD run](figures/batch_cluster.png)",
        "",
    ]
    page = args.out / "benchmarks_batch.md"
    page.write_text("\n".join(lines))
    print("\n".join(lines))
    return page


if __name__ == "__main__":
    main()
