"""The discrete section: masked diffusion over an enumerable V^L, total variation to the exact law."""

from __future__ import annotations

from benchmarks.report.format import (
    cost_columns,
    diagnostic_columns,
    emd_columns,
    engine_table,
    fmt,
    gap,
    mean_se,
    reward_column,
)


def discrete_section(results: dict, settings: dict) -> list[str]:
    tasks = [t for t, r in results.items() if r["task"].get("discrete")]
    out = []
    for t in tasks:
        task, ref, outs = results[t]["task"], results[t]["reference"], results[t]["outputs"]
        diags = task["diagnostics"]
        out += [f"## {task['title']}", "", task["description"], ""]
        out += [
            f"K = {task['num_steps']} steps, N = {settings['particles']} particles per run (search engines: "
            f"particles × candidates = {settings['particles']}), {settings['points']} points × "
            f"{settings['repeats']} repetitions. Exact log Z = {task['log_z']:.4f}. **TV**: total variation "
            "between the empirical law of the points and the exact law over the V^L sequences; its floor is the TV "
            f"of {settings['points']} exact draws. EMD with the Hamming ground distance.",
            "",
        ]
        columns = [
            ("TV", lambda m: fmt(m["tv"])),
            ("TV − floor", lambda m, ref=ref: fmt(gap(m, ref, "tv"))),
            *emd_columns(ref, "EMD (Hamming)"),
            reward_column(),
            ("|log Ẑ − log Z|", lambda m: fmt(m.get("log_z_abs"), 2)),
            *diagnostic_columns(diags),
            *cost_columns(),
        ]
        exact = [
            fmt(mean_se(ref["tv"])),
            "0",
            fmt(mean_se(ref["emd"])),
            "0",
            f"{task['expected_reward']:.3f}",
            "—",
            *[f"{ref['diagnostics'][d]:.3f}" for d in diags],
            "—",
            "—",
            "—",
        ]
        out += engine_table(columns, ("exact target (floor)", exact), outs)
    return out
