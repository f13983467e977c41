"""Plots of a result (matplotlib; every function returns a :class:`matplotlib.figure.Figure`).

Every function takes a :class:`~tilted.inference.Result` or its DataTree
(:func:`tilted.diagnostics.to_datatree`). Figures are built without ``pyplot`` (no global state,
no display needed); show one in a notebook by evaluating it, or save it with ``fig.savefig``.

- :func:`plot_steps` — ESS/N and λ_t of every factor over the steps, resampling times marked.
- :func:`plot_weights` — the final weights: sorted normalised weights and a histogram of log(N·w).
- :func:`plot_genealogy` — the ancestral lines of one run, surviving lineages highlighted, and the
  number of distinct ancestors of the final particles at every step.
- :func:`plot_rewards` — histograms of each reward, pretrained against tilted.
- :func:`plot_samples` — scatter of a real vector site's first two coordinates (histogram for one).
- :func:`plot_images` — image grids for sites shaped (…, C, H, W) with C ∈ {1, 3, 4}, or (…, H, W).
- :func:`figures` — every plot that applies to the result, by name.
"""

from __future__ import annotations

import numpy as np
import xarray as xr
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure

from tilted.diagnostics.verdicts import _as_datatree, _kish, distinct_ancestors, lineages

__all__ = [
    "figures",
    "image_sites",
    "plot_genealogy",
    "plot_images",
    "plot_rewards",
    "plot_samples",
    "plot_steps",
    "plot_weights",
    "vector_sites",
]

_TILTED = "#c0392b"
_PRETRAINED = "#7f8c8d"
_MAX_LINES = 12
_LAMBDA_COLORS = ["#2980b9", "#27ae60", "#8e44ad", "#d35400", "#16a085"]


def _sites(dt: xr.DataTree) -> dict[str, tuple[int, ...]]:
    """Site name → event shape (from the posterior group)."""
    rname = dt.attrs.get("rewards_variable", "rewards")
    post = dt["posterior"]
    return {name: tuple(v.shape[2:]) for name, v in post.data_vars.items() if name != rname}


def image_sites(data) -> list[str]:
    """Sites whose event shape is (C, H, W) with C ∈ {1, 3, 4}, or (H, W), with H, W ≥ 2."""
    dt = _as_datatree(data)
    out = []
    for name, shape in _sites(dt).items():
        if len(shape) == 2 and min(shape) >= 2 or len(shape) == 3 and shape[0] in (1, 3, 4) and min(shape[1:]) >= 2:
            out.append(name)
    return out


def vector_sites(data) -> list[str]:
    """Real-valued sites whose event is a vector (one dimension); token sequences (integers) are left out."""
    dt = _as_datatree(data)
    post = dt["posterior"]
    return [name for name, shape in _sites(dt).items() if len(shape) == 1 and post[name].dtype.kind == "f"]


def _chain_lines(ax, x, ys, color, label, alpha=None, lw=1.2):
    """One line per chain (≤ 12 chains) or the median and the range over chains."""
    if ys.shape[0] <= _MAX_LINES:
        a = alpha or (1.0 if ys.shape[0] == 1 else 0.6)
        for i, y in enumerate(ys):
            ax.plot(x, y, color=color, alpha=a, lw=lw, label=label if i == 0 else None)
    else:
        ax.fill_between(x, ys.min(0), ys.max(0), color=color, alpha=0.2, lw=0, label=f"{label} (range over runs)")
        ax.plot(x, np.median(ys, 0), color=color, lw=lw + 0.3, label=f"{label} (median over runs)")


def _message(fig: Figure, text: str) -> Figure:
    """A figure that says why there is nothing to plot."""
    ax = fig.subplots()
    ax.text(0.5, 0.5, text, ha="center", va="center")
    ax.set_axis_off()
    return fig


def plot_steps(data, *, compact: bool = False) -> Figure:
    """ESS/N per step (one line per run; resampling marked) and λ_t of each factor.

    ``compact``: one small panel (3.6 × 1.8 in) with ESS/N and λ_t on the same [0, 1] axis, no title,
    for the notebook summary (``Result._repr_html_``).
    """
    dt = _as_datatree(data)
    fig = Figure(figsize=(3.6, 1.8) if compact else (8, 5.5), layout="constrained")
    if "steps" not in dt.children:
        return _message(fig, "this engine records no per-step trace")
    if compact:
        return _steps_compact(fig, dt)
    st = dt["steps"]
    ess = st["ess"].values
    R, S = ess.shape
    N = st.sizes["particle"]
    steps = np.arange(S)
    factors = [str(f) for f in st["factor"].values]
    axes = fig.subplots(2, 1, sharex=True, height_ratios=[3, 2]) if factors else [fig.subplots()]
    ax = axes[0]
    _chain_lines(ax, steps, ess / N, "#2c3e50", "ESS / N")
    res = st["resampled"].values.astype(bool)
    rs, ss = np.nonzero(res)
    if len(rs):
        ax.scatter(ss, ess[rs, ss] / N, s=14, color=_TILTED, zorder=3, label="resampled after this step")
    kappa = _config(dt).get("ess_threshold")
    if isinstance(kappa, int | float) and 0 < kappa < 1 and not _config(dt).get("resample_every"):
        ax.axhline(kappa, color="#95a5a6", ls="--", lw=1, label=f"resampling threshold κ = {kappa:g}")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("ESS / N")
    ax.set_title(f"Effective sample size over the steps ({R} run{'s' * (R > 1)}, N = {N})")
    ax.legend(loc="lower left", fontsize=8)
    if factors:
        ax2 = axes[1]
        lam = st["lambdas"].values  # (R, S, F)
        for j, name in enumerate(factors):
            _chain_lines(ax2, steps, lam[:, :, j], _LAMBDA_COLORS[j % len(_LAMBDA_COLORS)], f"λ[{name}]")
        ax2.set_ylim(-0.05, 1.05)
        ax2.set_ylabel("λ_t")
        ax2.legend(loc="lower right", fontsize=8)
        axes[-1].set_xlabel("step (0: draw of x_K, last: move to x_0)")
    else:
        ax.set_xlabel("step")
    return fig


def _steps_compact(fig: Figure, dt: xr.DataTree) -> Figure:
    st = dt["steps"]
    ess = st["ess"].values
    steps = np.arange(ess.shape[1])
    ax = fig.subplots()
    _chain_lines(ax, steps, ess / st.sizes["particle"], "#2c3e50", "ESS/N", lw=1.0)
    lam = st["lambdas"].values  # (R, S, F)
    for j, name in enumerate(str(f) for f in st["factor"].values):
        _chain_lines(ax, steps, lam[:, :, j], _LAMBDA_COLORS[j % len(_LAMBDA_COLORS)], f"λ[{name}]", lw=1.0)
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlabel("step", fontsize=7, labelpad=1)
    ax.tick_params(labelsize=6, length=2, pad=1)
    ax.legend(
        fontsize=6, loc="lower left", bbox_to_anchor=(0, 1), ncol=4, frameon=False, handlelength=1.2, borderaxespad=0
    )
    return fig


def _config(dt: xr.DataTree) -> dict:
    import json

    try:
        return json.loads(dt.attrs.get("config", "{}"))
    except (TypeError, ValueError):
        return {}


def plot_weights(data) -> Figure:
    """The final normalised weights: sorted (log scale) per run and a histogram of log(N·w)."""
    from tilted.diagnostics.arviz import pareto_khat

    dt = _as_datatree(data)
    lw = dt["particles"]["log_weight"].values
    R, N = lw.shape
    fig = Figure(figsize=(9, 3.6), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    srt = -np.sort(-lw, axis=-1)
    w = np.exp(srt)
    ranks = np.arange(1, N + 1)
    _chain_lines(ax1, ranks, w, _TILTED, "normalised weight")
    ax1.axhline(1.0 / N, color="#95a5a6", ls="--", lw=1, label="uniform 1/N")
    ax1.set_xscale("log")
    ax1.set_yscale("log")
    ax1.set_xlabel("rank")
    ax1.set_ylabel("weight")
    ax1.legend(fontsize=8)
    ess = _kish(lw)
    k = np.atleast_1d(pareto_khat(lw))
    ktxt = "undefined" if np.all(np.isnan(k)) else f"{np.nanmax(k):.2f}"
    ax1.set_title(f"Sorted weights (min ESS {ess.min():.1f} of {N}, max k̂ {ktxt})", fontsize=10)
    rel = (lw + np.log(N)).ravel()
    rel = rel[np.isfinite(rel)]
    if np.ptp(rel) > 1e-12:
        ax2.hist(rel, bins=min(60, max(10, rel.size // 20)), color=_TILTED, alpha=0.8)
    else:
        ax2.axvline(0.0, color=_TILTED, lw=3)
    ax2.set_xlabel("log(N · w)  (0: uniform weight)")
    ax2.set_ylabel("particles")
    ax2.set_title("Histogram of the log weights" + (" (all runs)" if R > 1 else ""), fontsize=10)
    return fig


def plot_genealogy(data, chain: int = 0) -> Figure:
    """Ancestral lines of one run over the steps; the final particles' lineages in colour."""
    dt = _as_datatree(data)
    fig = Figure(figsize=(9, 5.5), layout="constrained")
    if "steps" not in dt.children:
        return _message(fig, "this engine records no ancestors")
    anc = dt["steps"]["ancestors"].values[chain]  # (S, N)
    S, N = anc.shape
    ax, ax2 = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    s = np.repeat(np.arange(1, S), N)
    j = np.tile(np.arange(N), S - 1)
    parent = anc[:-1].reshape(-1)
    segs = np.stack([np.stack([s - 1, parent], -1), np.stack([s, j], -1)], 1).astype(float)
    ax.add_collection(LineCollection(segs, colors="#bdc3c7", linewidths=0.4, alpha=0.6))
    lin = lineages(anc)  # (S, N): position at step s of the ancestor of final particle i
    pairs = np.unique(np.stack([np.arange(1, S).repeat(N), lin[1:].reshape(-1)], -1), axis=0)
    # a surviving edge ends at (s, p) with p on a lineage; it starts at its parent at s − 1
    starts = anc[pairs[:, 0] - 1, pairs[:, 1]]
    live = np.stack([np.stack([pairs[:, 0] - 1, starts], -1), np.stack([pairs[:, 0], pairs[:, 1]], -1)], 1)
    ax.add_collection(LineCollection(live.astype(float), colors=_TILTED, linewidths=0.9, alpha=0.9))
    resampled = np.flatnonzero(dt["steps"]["resampled"].values[chain])
    for r in resampled:
        ax.axvline(r, color="#2c3e50", lw=0.5, alpha=0.3)
    ax.set_xlim(-0.5, S - 0.5)
    ax.set_ylim(-0.5, N - 0.5)
    ax.set_ylabel("particle")
    ax.set_title(
        f"Genealogy of run {chain}: grey all ancestral links, red the lineages of the final particles "
        f"(lines: resampling)",
        fontsize=10,
    )
    counts = distinct_ancestors(anc)
    ax2.step(np.arange(S), counts, where="mid", color=_TILTED)
    ax2.set_yscale("log")
    ax2.set_ylim(0.8, N * 1.2)
    ax2.set_ylabel("distinct\nancestors")
    ax2.set_xlabel("step")
    return fig


def _rewards_before(dt: xr.DataTree, rname: str) -> tuple[np.ndarray, str]:
    if "prior" in dt.children:
        v = dt["prior"][rname].values
        return v.reshape(-1, v.shape[-1]), "pretrained"
    v = dt["particles"][rname].values
    return v.reshape(-1, v.shape[-1]), "final particles, weights ignored"


def plot_rewards(data) -> Figure:
    """Histogram of each reward: pretrained (or unweighted particles) against tilted (posterior draws)."""
    dt = _as_datatree(data)
    rname = dt.attrs.get("rewards_variable", "rewards")
    post = dt["posterior"][rname]
    factors = [str(f) for f in post["factor"].values]
    after = post.values.reshape(-1, len(factors)).astype(np.float64)
    before, label = _rewards_before(dt, rname)
    F = max(len(factors), 1)
    fig = Figure(figsize=(4.2 * min(F, 3), 3.4 * ((F + 2) // 3)), layout="constrained")
    axes = np.atleast_1d(fig.subplots((F + 2) // 3, min(F, 3))).ravel()
    if not factors:
        axes[0].text(0.5, 0.5, "the model has no factors", ha="center", va="center")
        axes[0].set_axis_off()
        return fig
    for j, (ax, name) in enumerate(zip(axes, factors, strict=False)):
        b, a = before[:, j].astype(np.float64), after[:, j]
        both = np.concatenate([b, a])
        lo, hi = np.percentile(both, [0.5, 99.5])
        if hi <= lo:
            lo, hi = lo - 0.5, hi + 0.5
        bins = np.linspace(lo, hi, 40)
        ax.hist(b, bins=bins, density=True, color=_PRETRAINED, alpha=0.55, label=f"{label} (mean {b.mean():.3g})")
        ax.hist(a, bins=bins, density=True, color=_TILTED, alpha=0.55, label=f"tilted (mean {a.mean():.3g})")
        ax.axvline(b.mean(), color=_PRETRAINED, lw=1.5)
        ax.axvline(a.mean(), color=_TILTED, lw=1.5)
        ax.set_title(f"reward {name}", fontsize=10)
        ax.set_xlabel("reward")
        ax.legend(fontsize=7)
    for ax in axes[len(factors) :]:
        ax.set_axis_off()
    return fig


def plot_samples(data, var: str | None = None, max_points: int = 4000) -> Figure:
    """Scatter of a vector site's first two coordinates, pretrained (grey) against tilted (red).

    The tilted points are the posterior draws; the final particles are shown sized by weight.
    A one-coordinate site gets histograms instead.
    """
    dt = _as_datatree(data)
    var = var or _default_site(dt, vector_sites(dt))
    fig = Figure(figsize=(5.2, 5.0), layout="constrained")
    ax = fig.subplots()
    post = dt["posterior"][var].values
    post = post.reshape(-1, post.shape[-1]).astype(np.float64)
    prior = None
    if "prior" in dt.children and var in dt["prior"].data_vars:
        prior = dt["prior"][var].values
        prior = prior.reshape(-1, prior.shape[-1]).astype(np.float64)
    rng = np.random.default_rng(0)

    def thin(a):
        return a if len(a) <= max_points else a[rng.choice(len(a), max_points, replace=False)]

    if post.shape[-1] == 1:
        bins = 50
        if prior is not None:
            ax.hist(prior[:, 0], bins=bins, density=True, color=_PRETRAINED, alpha=0.5, label="pretrained")
        ax.hist(post[:, 0], bins=bins, density=True, color=_TILTED, alpha=0.5, label="tilted (posterior draws)")
        ax.set_xlabel(f"{var}")
    else:
        if prior is not None:
            p = thin(prior)
            ax.scatter(p[:, 0], p[:, 1], s=4, color=_PRETRAINED, alpha=0.35, label="pretrained", lw=0)
        parts = dt["particles"]
        x = parts[var].values.reshape(-1, post.shape[-1]).astype(np.float64)
        w = np.exp(parts["log_weight"].values).reshape(-1)
        keep = thin(np.arange(len(x)))
        size = 60 * w[keep] / w.max()
        ax.scatter(x[keep, 0], x[keep, 1], s=size, color="#2c3e50", alpha=0.5, lw=0, label="particles, size ∝ weight")
        q = thin(post)
        ax.scatter(q[:, 0], q[:, 1], s=5, color=_TILTED, alpha=0.5, lw=0, label="tilted (posterior draws)")
        ax.set_xlabel(f"{var}[0]")
        ax.set_ylabel(f"{var}[1]")
        ax.set_aspect("equal", adjustable="datalim")
    ax.set_title(f"Samples of {var!r}", fontsize=10)
    ax.legend(fontsize=7, markerscale=2)
    return fig


def _default_site(dt: xr.DataTree, candidates: list[str]) -> str:
    site = dt.attrs.get("site")
    if site in candidates:
        return site
    if not candidates:
        raise ValueError("no site of a suitable shape; pass var=")
    return candidates[0]


def _to_rgb(img: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """(C, H, W) or (H, W) → (H, W) or (H, W, C) in [0, 1]."""
    img = (np.asarray(img, dtype=np.float64) - lo) / (hi - lo if hi > lo else 1.0)
    img = np.clip(img, 0.0, 1.0)
    if img.ndim == 3:
        img = img[0] if img.shape[0] == 1 else np.moveaxis(img, 0, -1)
    return img


def _value_range(values: np.ndarray) -> tuple[float, float]:
    """[−1, 1] or [0, 1] when the values lie there (diffusion conventions), else their range."""
    lo, hi = float(np.nanmin(values)), float(np.nanmax(values))
    if lo >= -1.05 and hi <= 1.05:
        return (0.0, 1.0) if lo >= -0.05 else (-1.0, 1.0)
    return lo, hi


def plot_images(data, var: str | None = None, num: int = 16) -> Figure:
    """Image grids of an image-shaped site: pretrained draws (when known) and tilted draws (distinct)."""
    dt = _as_datatree(data)
    var = var or _default_site(dt, image_sites(dt))
    post = dt["posterior"][var].values  # (R, D, *event)
    idx = dt["sample_stats"]["particle"].values
    # distinct particles first: draws repeat resampled particles
    flat = post.reshape((-1,) + post.shape[2:])
    keys = (np.arange(idx.shape[0])[:, None] * (idx.max() + 1) + idx).reshape(-1)
    _, first = np.unique(keys, return_index=True)
    tilted = flat[np.sort(first)][:num]
    panels = [("tilted (distinct posterior draws)", tilted)]
    if "prior" in dt.children and var in dt["prior"].data_vars:
        pv = dt["prior"][var].values
        panels.insert(0, ("pretrained", pv.reshape((-1,) + pv.shape[2:])[:num]))
    lo, hi = _value_range(np.concatenate([p[1].ravel() for p in panels]))
    cols = int(np.ceil(np.sqrt(num)))
    rows = int(np.ceil(num / cols))
    fig = Figure(figsize=(4.2 * len(panels), 4.4), layout="constrained")
    subfigs = np.atleast_1d(fig.subfigures(1, len(panels)))
    for sub, (title, imgs) in zip(subfigs, panels, strict=True):
        axes = np.atleast_1d(sub.subplots(rows, cols)).ravel()
        for ax in axes:
            ax.set_axis_off()
        for ax, img in zip(axes, imgs, strict=False):
            rgb = _to_rgb(img, lo, hi)
            ax.imshow(rgb, cmap="gray" if rgb.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
        sub.suptitle(f"{var}: {title}", fontsize=10)
    return fig


def figures(data) -> dict[str, Figure]:
    """Every plot that applies to the result: name → Figure."""
    dt = _as_datatree(data)
    out = {"steps": plot_steps(dt), "weights": plot_weights(dt)}
    if "steps" in dt.children:
        out["genealogy"] = plot_genealogy(dt)
    if dt["posterior"][dt.attrs.get("rewards_variable", "rewards")].sizes.get("factor", 0):
        out["rewards"] = plot_rewards(dt)
    for name in vector_sites(dt):
        out[f"samples[{name}]"] = plot_samples(dt, name)
    for name in image_sites(dt):
        out[f"images[{name}]"] = plot_images(dt, name)
    if "steps" not in dt.children:
        out.pop("steps")
    return out
