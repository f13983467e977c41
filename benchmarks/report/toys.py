"""The DAS-toy sections: one table per toy (every engine against the exact tilted mixture)."""

from __future__ import annotations

from benchmarks.report.format import (
    cost_columns,
    diagnostic_columns,
    emd_columns,
    engine_table,
    exact_cells,
    fmt,
    mean_se,
    reward_column,
)


def toy_section(res: dict, settings: dict) -> list[str]:
    task, ref, outs = res["task"], res["reference"], res["outputs"]
    diags = task["diagnostics"]
    out = [f"## {task['title']}", "", task["description"], ""]
    out += [
        f"K = {task['num_steps']} steps, N = {settings['particles']} particles per run, "
        f"{settings['points']} points × {settings['repeats']} repetitions (`{settings['verdict_engine']}` and the "
        f"floor: {len(ref['emd'])}); MMD bandwidth h = {ref['bandwidth']:.3f}. "
        f"log Z of the tilted data law = {task['log_z']:.4f} (the chain's log Z differs slightly: "
        "the log Ẑ column is indicative only).",
        "",
    ]
    columns = [
        *emd_columns(ref),
        ("MMD² ×10³", lambda m: fmt(m["mmd2"], 2, 1e3)),
        reward_column(),
        ("|log Ẑ − log Z|", lambda m: fmt(m.get("log_z_abs"), 2)),
        *diagnostic_columns(diags),
        *cost_columns(),
    ]
    exact = [
        *exact_cells(task, ref),
        "—",
        *[f"{ref['diagnostics'][d]:.3f}" for d in diags],
        "—",
        "—",
        "—",
    ]
    out += engine_table(columns, ("exact target (floor; diagnostics: 100,000 draws)", exact), outs)
    if ref["chain_vs_data"]:
        out += [
            f"Pretrained chain vs data law (untilted, {settings['points']} vs {settings['points']} points): "
            f"EMD {fmt(mean_se(ref['chain_vs_data']))}, floor (two data draws) {fmt(mean_se(ref['data_floor']))}: "
            f"the gap is what the {task['num_steps']}-step discretisation and x_K ~ N(0, I) cost before any tilting.",
            "",
        ]
    return out
