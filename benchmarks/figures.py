"""Figures of the benchmark page (PNG, written into ``<out>/figures/bench_*.png``)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from benchmarks.tasks import build, tweedie_value  # noqa: E402
from tilted.inference import GaussianSoftValue  # noqa: E402

F64 = torch.float64


def _save(fig, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path.name


#: engines shown in the scatter figure (the tables have all of them)
SCATTER = (
    "pretrained",
    "importance",
    "smc-bootstrap",
    "smc-gradient",
    "smc-gauss",
    "das",
    "oracle-twist",
    "nested-is",
    "svdd",
    "beam",
    "best-of-N",
    "dps",
)


def scatter(results: dict, folder: Path) -> str | None:
    """One row per 2-D task: the exact target, then the output points of the engines in :data:`SCATTER`."""
    toys = [t for t, r in results.items() if r["task"]["plot2d"] and r["reference"]["points"] is not None]
    if not toys:
        return None
    shown = {t: [o for o in results[t]["outputs"] if o in SCATTER] for t in toys}
    cols = 1 + max(len(v) for v in shown.values())
    fig, axes = plt.subplots(len(toys), cols, figsize=(1.7 * cols, 1.9 * len(toys)), squeeze=False)
    for row, name in zip(axes, toys, strict=True):
        outs = results[name]["outputs"]
        panels = [("exact target", results[name]["reference"]["points"], None)]
        panels += [(o, outs[o]["points"], outs[o]["emd"][0]) for o in shown[name]]
        for ax, (label, pts, emd) in zip(row, panels, strict=False):
            ax.scatter(pts[:, 0], pts[:, 1], s=1, alpha=0.35, color="C3" if emd is None else "C0", rasterized=True)
            ax.set_xlim(-6.5, 6.5)
            ax.set_ylim(-6.5, 6.5)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(label if emd is None else f"{label}\nEMD {emd:.2f}", fontsize=7)
        for ax in row[len(panels) :]:
            ax.axis("off")
        row[0].set_ylabel(results[name]["task"]["title"].split(": ")[-1], fontsize=8)
    steps = results[toys[0]]["task"]["num_steps"]
    fig.suptitle(
        f"One draw per independent run (N = 16 particles, K = {steps} steps); first repetition", fontsize=9, y=1.03
    )
    return _save(fig, folder / "bench_toys.png")


def emd_bars(results: dict, folder: Path, margin: float) -> str | None:
    """EMD ± s.e. per engine on the 2-D toys, with the floor and floor + margin."""
    toys = [t for t, r in results.items() if r["task"]["plot2d"]]
    if not toys:
        return None
    fig, axes = plt.subplots(1, len(toys), figsize=(5.2 * len(toys), 3.6), squeeze=False)
    for ax, name in zip(axes[0], toys, strict=True):
        outs = results[name]["outputs"]
        labels = list(outs)
        vals = [outs[o]["emd"][0] for o in labels]
        errs = [outs[o]["emd"][1] for o in labels]
        floor = sum(results[name]["reference"]["emd"]) / len(results[name]["reference"]["emd"])
        shown = [v for v in vals if v < 1.0] or vals  # far-off engines (EMD ≥ 1) are clipped, value printed
        top = 1.15 * max(shown)
        y = range(len(labels))
        errs = [0.0 if v > top else e for v, e in zip(vals, errs, strict=True)]
        ax.barh(y, [min(v, top) for v in vals], xerr=errs, color="C0", alpha=0.8)
        for i, v in enumerate(vals):
            if v > top:
                ax.text(top * 0.98, i, f"{v:.2f} →", ha="right", va="center", fontsize=7, color="white")
        ax.axvline(floor, color="k", lw=1, label=f"floor {floor:.3f}")
        ax.axvspan(floor, floor + margin, color="C2", alpha=0.25, label=f"floor + {margin}")
        ax.set_yticks(list(y), labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlim(0, top)
        ax.set_xlabel("EMD to the exact target (2,000 vs 2,000 points)", fontsize=8)
        ax.set_title(results[name]["task"]["title"], fontsize=9)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)
    fig.tight_layout()
    return _save(fig, folder / "bench_emd.png")


def ring_values(folder: Path, num_steps: int, levels=(0.05, 0.3)) -> tuple[str, list[dict]]:
    """Tweedie value r(x̂₀(x_k))/α and the Gaussian-posterior value against the exact soft value ψ_k (ring)."""
    task = build("ring", num_steps)
    data = task.process.data
    tweedie = tweedie_value(data, task.process, task.reward, task.temperature)

    def gaussian(x: torch.Tensor, k: int, draws: int) -> torch.Tensor:
        value = GaussianSoftValue(task.model, num_draws=draws, seed=0, batch_size=4096)
        return value.value(x.reshape(1, -1, 2).float(), k).reshape(x.shape[:-1])

    ac = task.process.alphas_cumprod
    ks = [int((ac - a).abs()[1:].argmin()) + 1 for a in levels]
    grid = torch.linspace(-5, 5, 161, dtype=F64)
    xx, yy = torch.meshgrid(grid, grid, indexing="xy")
    pts = torch.stack([xx, yy], -1)
    fig, axes = plt.subplots(len(ks), 3, figsize=(11.4, 3.7 * len(ks)), squeeze=False)
    probes = []
    for row, k in zip(axes, ks, strict=True):
        a = float(ac[k])
        scale = math.sqrt(a)  # x_k lives around √ᾱ x_0: show x_k / √ᾱ in data units
        x = pts * scale
        values = {
            "Tweedie r(x̂₀(x_k))/α": tweedie(x, k),
            "GaussianSoftValue (M = 256)": gaussian(x, k, 256).to(F64),
            "exact soft value ψ_k": task.twist(x, k),
        }
        for ax, (label, v) in zip(row, values.items(), strict=True):
            vmax = float(v.max())
            im = ax.imshow(
                v.clamp_min(vmax - 6).numpy(),
                origin="lower",
                extent=(-5, 5, -5, 5),
                vmin=vmax - 6,
                vmax=vmax,
                cmap="viridis",
            )
            ax.scatter(data.means[:, 0], data.means[:, 1], s=12, color="w", marker="x")
            ax.set_title(f"{label}\nlevel k = {k}, ᾱ_k = {a:.3f}", fontsize=8)
            ax.set_xlabel("x_k / √ᾱ_k", fontsize=7)
            fig.colorbar(im, ax=ax, fraction=0.046)
        for where, p in (("ring centre", [0.0, 0.0]), ("top mode", [0.0, 4.0]), ("bottom mode", [0.0, -4.0])):
            xp = torch.tensor([p], dtype=F64) * scale
            probes.append(
                {
                    "k": k,
                    "alpha_bar": a,
                    "where": where,
                    "tweedie": float(tweedie(xp, k)[0]),
                    "gaussian": float(gaussian(xp, k, 4000)[0]),
                    "exact": float(task.twist(xp, k)[0]),
                }
            )
    fig.suptitle(
        "Ring toy: the cheap values against the exact soft value (each panel: 6 nats below its max)", fontsize=9
    )
    fig.tight_layout()
    return _save(fig, folder / "bench_ring_value.png"), probes


def lambdas(results: dict, folder: Path, task: str = "ring") -> str | None:
    """Mean λ per step of the tempered engines on one task."""
    if task not in results:
        return None
    styles = {
        "smc-bootstrap": ("C0", "-", 3.0),
        "smc-exp": ("C1", "-", 3.0),
        "smc-adaptive": ("C2", "--", 1.5),
        "das": ("C3", ":", 1.8),
    }
    outs = {o: m["lambdas"] for o, m in results[task]["outputs"].items() if "lambdas" in m and o in styles}
    if not outs:
        return None
    fig, ax = plt.subplots(figsize=(5.5, 3.0))
    for name, lam in outs.items():
        color, ls, lw = styles[name]
        ax.plot(range(len(lam)), lam, label=name, color=color, ls=ls, lw=lw)
    ax.set_xlabel("step s (0 = draw of x_K, K = move to x₀)", fontsize=8)
    ax.set_ylabel("mean λ over runs", fontsize=8)
    ax.set_title(f"Tempering λ_s on the {task} task", fontsize=9)
    ax.legend(fontsize=7)
    return _save(fig, folder / "bench_lambda.png")


def linear_gaussian(results: dict, folder: Path) -> str | None:
    """log Ẑ error and weighted-mean error against the dimension."""
    lg = sorted((r["task"]["dim"], t) for t, r in results.items() if r["task"]["moments"])
    if not lg:
        return None
    dims = [d for d, _ in lg]
    engines = [o for o in results[lg[0][1]]["outputs"] if "log_z_abs" in results[lg[0][1]]["outputs"][o]]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
    for i, e in enumerate(engines):
        style = dict(marker="o", lw=1.2, ls=("-", "--", ":", "-.")[i % 4], label=e)
        a1.plot(dims, [results[t]["outputs"][e]["log_z_abs"][0] for _, t in lg], **style)
        a2.plot(dims, [results[t]["outputs"][e]["mean_error"][0] for _, t in lg], **style)
    a2.plot(dims, [results[t]["reference"]["mean_error"][0] for _, t in lg], color="k", lw=2, label="16 i.i.d. exact")
    for ax, title in ((a1, "mean |log Ẑ − log Z| per run"), (a2, "mean ‖m̂ − m‖ in C⁻¹ norm per run")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(dims, [str(d) for d in dims])
        ax.set_xlabel("dimension d", fontsize=8)
        ax.set_title(title, fontsize=9)
    a2.legend(fontsize=7, ncol=2)
    return _save(fig, folder / "bench_linear_gaussian.png")
