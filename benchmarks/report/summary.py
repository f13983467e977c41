"""The verdict: does some SMC engine land within MARGIN of the EMD floor on both DAS toys?"""

from __future__ import annotations

from benchmarks.report.format import fmt, gap, header, mean_se, row

#: the DAS toys must land within this EMD distance of the floor
MARGIN = 0.03
#: SMC engines eligible for the verdict: N = 16 particles, K = 100 steps, no oracle
SMC_ENGINES = (
    "smc-bootstrap",
    "smc-gradient",
    "smc-gauss",
    "smc-gauss-gradient",
    "smc-learned",
    "smc-exp",
    "smc-adaptive",
    "fk-max",
    "das",
)


def best_smc(outs: dict) -> str | None:
    smc = [o for o in SMC_ENGINES if o in outs]
    return min(smc, key=lambda o: outs[o]["emd"][0]) if smc else None


def summary(results: dict, overhead: dict | None) -> list[str]:
    toys = [t for t, r in results.items() if r["task"]["plot2d"]]
    out = []
    if toys:
        out += ["## Do we land within 0.03 of the EMD floor on the DAS toys?", ""]
        out += [
            "Target: some SMC engine (N = 16 particles per run, K = 100 steps) within "
            f"{MARGIN} of the floor on both toys.",
            "",
        ]
        out += header(["task", "floor", "best SMC engine", "its EMD", "EMD − floor", "lands?", "oracle twist"])
        for t in toys:
            ref, outs = results[t]["reference"], results[t]["outputs"]
            best = best_smc(outs)
            if best is None:
                continue
            g = gap(outs[best], ref)
            oracle = fmt(gap(outs["oracle-twist"], ref)) if "oracle-twist" in outs else "not run"
            lands = "**yes**" if g[0] <= MARGIN else "**no**"
            cells = [fmt(mean_se(ref["emd"])), f"`{best}`", fmt(outs[best]["emd"]), fmt(g), lands, oracle]
            out.append(row(results[t]["task"]["title"], cells))
        out += ["", "EMD − floor of every engine (same budget rules as the task tables below):", ""]
        out += header(["engine", *(f"{results[t]['task']['title']}: EMD − floor" for t in toys)])
        names = dict.fromkeys(o for t in toys for o in results[t]["outputs"])
        for o in names:
            outs = [results[t]["outputs"].get(o) for t in toys]
            cells = [fmt(gap(m, results[t]["reference"])) if m else "—" for t, m in zip(toys, outs, strict=True)]
            out.append(row(f"`{o}`", cells))
        out += [""]
    for r in results.values():
        if r["task"].get("discrete") and r["outputs"]:
            ref, outs = r["reference"], r["outputs"]
            ranked = sorted(outs, key=lambda o: gap(outs[o], ref, "tv")[0])
            out += [
                f"{r['task']['title']}: total variation to the exact law, floor {fmt(mean_se(ref['tv']))}; closest: "
                + ", ".join(f"`{o}` {fmt(gap(outs[o], ref, 'tv'))}" for o in ranked[:3])
                + f" above the floor; farthest: `{ranked[-1]}` {fmt(gap(outs[ranked[-1]], ref, 'tv'))} (details below).",
                "",
            ]
    if overhead:
        out += [
            "Overhead of bootstrap SMC over ancestral sampling at equal denoiser calls (median ratio): "
            + "; ".join(f"{r['label']}: **{r['ratio']:.3f}**" for r in overhead["rows"])
            + " (target for the UNet: ≤ 1.05; details below).",
            "",
        ]
    return out
