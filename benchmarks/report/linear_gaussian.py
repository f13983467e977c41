"""The linear-Gaussian sections: exact log Z and tilted moments of the chain, d = 2, 16, 64."""

from __future__ import annotations

from benchmarks.report.format import cost_columns, emd_columns, engine_table, exact_cells, fmt, reward_column


def lg_section(results: dict, figs: dict) -> list[str]:
    lg = sorted((r["task"]["dim"], t) for t, r in results.items() if r["task"]["moments"])
    if not lg:
        return []
    out = ["## Linear-Gaussian chains: exact evidence and moments", ""]
    for _, t in lg:
        task, ref, outs = results[t]["task"], results[t]["reference"], results[t]["outputs"]
        out += [f"### {task['title']}", "", task["description"], ""]
        out += [f"Exact log Z = {task['log_z']:.4f}; MMD bandwidth h = {ref['bandwidth']:.3f}.", ""]
        columns = [
            *emd_columns(ref),
            ("MMD² ×10³", lambda m: fmt(m["mmd2"], 2, 1e3)),
            reward_column(),
            ("|log Ẑ − log Z|", lambda m: fmt(m.get("log_z_abs"))),
            ("log Ẑ bias", lambda m: f"{m['log_z_bias']:.3f}" if "log_z_bias" in m else "—"),
            ("‖m̂ − m‖_{C⁻¹}", lambda m: fmt(m.get("mean_error"))),
            ("‖Ĉ − C‖_F/‖C‖_F", lambda m: fmt(m.get("cov_error"))),
            *cost_columns(),
        ]
        exact = [
            *exact_cells(task, ref),
            "0",
            "0",
            fmt(ref["mean_error"]),
            fmt(ref["cov_error"]),
            "—",
            "—",
            "—",
        ]
        out += engine_table(columns, ("exact target (floor; moments: 16 i.i.d. exact draws)", exact), outs)
    if figs.get("lg"):
        out += [f"![linear-Gaussian](figures/{figs['lg']})", ""]
    out += [
        "`pretrained` moments are those of 16 unweighted pretrained draws (the bias of ignoring the reward); "
        "approximate engines have no weights or evidence.",
        "",
    ]
    return out
