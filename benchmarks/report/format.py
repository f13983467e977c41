"""Number formatting and Markdown table helpers shared by the page's sections."""

from __future__ import annotations

import math

import torch

from benchmarks.engines import ENGINES


def fmt(pair, digits: int = 3, scale: float = 1.0) -> str:
    """ "mean ± s.e." of a (mean, s.e.) pair, "mean" without a s.e., "—" when missing."""
    if pair is None:
        return "—"
    mean, se = pair
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "—"
    if se is None or math.isnan(se):
        return f"{mean * scale:.{digits}f}"
    return f"{mean * scale:.{digits}f} ± {se * scale:.{digits}f}"


def mean_se(values) -> tuple[float, float]:
    t = torch.as_tensor(list(values), dtype=torch.float64)
    if t.numel() == 0:
        return math.nan, math.nan
    return float(t.mean()), (float(t.std() / math.sqrt(t.numel())) if t.numel() > 1 else math.nan)


def gap(output: dict, reference: dict, metric: str = "emd") -> tuple[float, float]:
    """metric − floor, paired by repetition r with the floor of the same r (``emd``: the EMD values;
    ``tv``: total variation). An engine with fewer repetitions than the floors uses the first ones."""
    values = output["emd_values"] if metric == "emd" else output["tv_values"]
    floors = reference[metric][: len(values)]
    return mean_se(a - b for a, b in zip(values, floors, strict=True))


def header(names: list[str]) -> list[str]:
    """A Markdown table header; pipes inside names (|log Ẑ − log Z|, P(|y| < 2)) are escaped."""
    cells = [n.replace("|", "\\|") for n in names]
    return ["| " + " | ".join(cells) + " |", "|" + "---|" * len(cells)]


def row(name: str, cells: list[str]) -> str:
    return f"| {name} | " + " | ".join(cells) + " |"


def calls(m: dict) -> str:
    """Denoiser / reward / gradient calls per output point."""
    c = m["counts"]
    return f"{c['denoiser_calls']:.0f} / {c['reward_calls']:.0f} / {c['gradient_evaluations']:.0f}"


def resamplings(m: dict) -> str:
    return f"{m['resamplings']:.1f}" if "resamplings" in m else "—"


def engines_table() -> list[str]:
    """What each engine is, and which process family it runs."""
    lines = ["| engine | runs on | what it is |", "|---|---|---|"]
    for e in ENGINES:
        family = {"both": "all tasks", "gaussian": "Gaussian", "masked": "discrete"}[e.family]
        kind = " *(approximate: no weights or log Ẑ)*" if e.approximate else ""
        lines.append(f"| `{e.name}` | {family} | {e.description}{kind} |")
    return lines


def engine_table(columns: list[tuple[str, object]], exact: tuple[str, list[str]], outs: dict) -> list[str]:
    """Header, the exact-target row ``exact = (label, cells)``, then one row per engine output.

    ``columns`` are (title, fn) pairs; ``fn(m)`` formats one cell of an engine's metrics ``m``.
    """
    lines = header(["engine", *(title for title, _ in columns)])
    lines.append(row(exact[0], exact[1]))
    lines += [row(f"`{o}`", [fn(m) for _, fn in columns]) for o, m in outs.items()]
    return lines + [""]


def emd_columns(ref: dict, title: str = "EMD") -> list[tuple[str, object]]:
    return [(title, lambda m: fmt(m["emd"])), ("EMD − floor", lambda m: fmt(gap(m, ref)))]


def reward_column() -> tuple[str, object]:
    return ("mean reward", lambda m: fmt(m["reward"]))


def diagnostic_columns(names: list[str]) -> list[tuple[str, object]]:
    return [(d, lambda m, d=d: f"{m['diagnostics'][d]:.3f}") for d in names]


def cost_columns() -> list[tuple[str, object]]:
    """Resamplings, calls per point and wall time: the last columns of every task table."""
    return [
        ("resamplings / run", resamplings),
        ("denoiser / reward / gradient calls per point", calls),
        ("wall s / repetition", lambda m: f"{m['seconds'][0]:.1f}"),
    ]


def exact_cells(task: dict, ref: dict) -> list[str]:
    """The exact-target row's EMD floor, EMD − floor (0), MMD² of two exact draws and E_tar[r]."""
    return [fmt(mean_se(ref["emd"])), "0", fmt(mean_se(ref["mmd2"]), 2, 1e3), f"{task['expected_reward']:.3f}"]
