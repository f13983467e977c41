"""A mini DAS Figure 2 on the trained digits DDPM: target reward, cross reward and diversity against compute.

    ./run bench digits                 # docs/benchmarks_digits.md and docs/figures/bench_digits.png
    ./run bench digits --quick         # smoke version, into a temporary folder

Model: :func:`tilted.pretrained.digits`, K = 50 DDPM steps. Two rewards, never both at once:

- **class**: r(x) = log p(y | x) under the shipped CNN (:func:`~tilted.pretrained.digits_classifier`),
  y = 3, at α ∈ {1, 0.3, 0.1}. At α = 1 the target is p_θ(x | y). The *cross reward*, which no engine
  sees, is log p(y | x) under the logistic-regression classifier (another family, trained on the same
  images): reward over-optimisation shows as the target reward rising while the cross reward falls.
- **symmetry**: :class:`~tilted.rewards.Symmetry` at α ∈ {0.1, 0.03}; diversity is also measured as
  class coverage, the effective number of CNN classes exp(H) of the draws (10 for a uniform spread).

Compute: for the engines with a budget knob, N ∈ {4, 16} denoiser calls per step and output image
(SMC with N particles, importance sampling over N chains, best-of-N over N chains, SVDD with N
candidates, beam search with 2 × N/2 beams × candidates), so N·K calls per image; guidance engines
(DPS, FreeDoM, MPGD) follow one chain at several scales (their cost is stated). Each configuration
makes R = 32 independent runs and keeps one image per run (a weighted draw; the best beam of beam
search). Standard errors are over the R images.

The target itself, p_θ(x) exp(r(x)/α), has no closed form; its `reference` row is a pool of 4,096
unguided draws weighted by exp(r/α) (self-normalised importance sampling, ESS stated; standard errors
by the delta method). The samplers (SMC, importance sampling) should approach it as N grows; the
optimisers (best-of-N, beam search, guidance) make no such claim. Columns: *CNN rate* and *logistic rate*, the share of
images each classifier calls a 3; *diversity*, the mean pairwise RMS pixel distance between the images;
*max |x|*, the largest pixel magnitude (data: 1; bold above 3: a blown-up run); *over-optimised*, a target
reward above the held-out real 3s' with a cross reward more than 2 standard errors below theirs.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import pyro
import torch

import tilted
from benchmarks import standalone
from tilted.inference import DPS, MPGD, SMC, SVDD, BeamSearch, BestOfN, FreeDoM, Importance
from tilted.pretrained import digits, digits_classifier, digits_data, digits_logistic
from tilted.rewards import ClassLogProb, Symmetry
from tilted.tempering import Exponential


@dataclass(frozen=True)
class Settings:
    steps: int = 50
    runs: int = 32
    label: int = 3
    budgets: tuple[int, ...] = (4, 16)
    class_alphas: tuple[float, ...] = (1.0, 0.3, 0.1)
    symmetry_alphas: tuple[float, ...] = (0.1, 0.03)
    scales: tuple[float, ...] = (0.03, 0.1, 0.3, 1.0)
    tempering: float = 0.016  # Exponential(γ): λ reaches 1 after ln 2 / ln(1 + γ) ≈ 44 of the 50 steps
    pool: int = 4096  # unguided draws of the reference (weighted by exp(r/α))

    @classmethod
    def quick(cls) -> Settings:
        return cls(
            steps=10, runs=4, budgets=(4,), class_alphas=(1.0,), symmetry_alphas=(0.1,), scales=(1.0,), pool=1024
        )


#: name -> (description, factory(model, n, runs), whether n is a budget, how the image is read)
ENGINES = {
    "smc-prior": ("SMC, prior proposal", lambda m, n, r: SMC(m, n, num_runs=r), True),
    "smc-prior-tempered": ("SMC, prior proposal, tempering", lambda m, n, r: SMC(m, n, num_runs=r), True),
    "smc-gradient": ("SMC, gradient proposal", lambda m, n, r: SMC(m, n, proposal="gradient", num_runs=r), True),
    "smc-gradient-tempered": (
        "SMC, gradient proposal, tempering (DAS)",
        lambda m, n, r: SMC(m, n, proposal="gradient", num_runs=r),
        True,
    ),
    "importance": ("importance sampling", lambda m, n, r: Importance(m, n, num_runs=r), True),
    "best-of-N": ("best-of-N", lambda m, n, r: BestOfN(m, 1, num_candidates=n, num_runs=r), True),
    "svdd": ("SVDD, N candidates", lambda m, n, r: SVDD(m, 1, num_candidates=n, num_runs=r), True),
    "beam": (
        "beam search, 2 beams × N/2 candidates",
        lambda m, n, r: BeamSearch(m, 2, num_candidates=n // 2, num_runs=r),
        True,
    ),
    "dps": ("DPS", lambda m, s, r: DPS(m, 1, scale=s, num_runs=r), False),
    "freedom": ("FreeDoM", lambda m, s, r: FreeDoM(m, 1, scale=s, num_runs=r), False),
    "mpgd": ("MPGD", lambda m, s, r: MPGD(m, 1, scale=s, num_runs=r), False),
}
SYMMETRY_ENGINES = ("smc-prior", "smc-gradient-tempered", "importance", "best-of-N", "svdd", "dps")


def _model(prior, reward, alpha, tempering):
    def model():
        x = pyro.sample("x", prior)
        tilted.factor("r", reward, x, temperature=alpha, tempering=tempering)

    return model


def mean_pairwise(x: torch.Tensor, w: torch.Tensor | None = None) -> float:
    """Σ_{i≠j} w_i w_j d_ij / Σ_{i≠j} w_i w_j, d the RMS pixel distance: the mean distance between two
    independent draws of Σ_i w_i δ_{x_i} (uniform w: between distinct images of x)."""
    flat = x.reshape(len(x), -1).double()
    d = torch.cdist(flat, flat) / math.sqrt(flat.shape[1])
    w = torch.ones(len(x), dtype=torch.float64) if w is None else w
    ww = w[:, None] * w[None, :]
    ww.fill_diagonal_(0)
    return float((ww * d).sum() / ww.sum())


def coverage(classes: torch.Tensor, w: torch.Tensor) -> float:
    """exp(entropy) of the (weighted) class histogram: the effective number of classes."""
    p = torch.zeros(10, dtype=torch.float64).index_add_(0, classes, w)
    p = p[p > 0] / p.sum()
    return float(torch.exp(-(p * p.log()).sum()))


class Scorer:
    """Target, cross and diversity metrics of a set of images (one per run), or of a weighted pool."""

    def __init__(self, label: int):
        self.label = label
        self.cnn, self.logistic = digits_classifier(), digits_logistic()
        self.symmetry = Symmetry()

    def __call__(self, x: torch.Tensor, w: torch.Tensor | None = None) -> dict:
        """Metrics of the images x (n, 1, 8, 8) under normalised weights w (default uniform); standard
        errors √Σ w_i² (v_i − v̄)² (the delta method for self-normalised weights; v's s.e. when uniform)."""
        w = torch.full((len(x),), 1 / len(x), dtype=torch.float64) if w is None else w / w.sum()
        with torch.no_grad():
            cnn = self.cnn(x).log_softmax(-1).double()
            lin = self.logistic(x).log_softmax(-1).double()
            sym = self.symmetry(x).double()
        y = self.label
        mean = lambda v: float((w * v).sum())  # noqa: E731
        se = lambda v: float((w**2 * (v - (w * v).sum()) ** 2).sum().sqrt() * math.sqrt(len(v) / max(len(v) - 1, 1)))  # noqa: E731
        return {
            "class_reward": mean(cnn[:, y]),
            "class_reward_se": se(cnn[:, y]),
            "cross_reward": mean(lin[:, y]),
            "cross_reward_se": se(lin[:, y]),
            "class_rate": mean((cnn.argmax(-1) == y).double()),
            "cross_rate": mean((lin.argmax(-1) == y).double()),
            "symmetry": mean(sym),
            "symmetry_se": se(sym),
            "diversity": mean_pairwise(x, w),
            "coverage": coverage(cnn.argmax(-1), w),
            "pixel_range": [float(x.min()), float(x.max())],
        }


def reference_row(pool, reward, alpha, scorer) -> dict:
    """The target p_θ(x) exp(r(x)/α) as the pool of unguided draws weighted by exp(r/α): its metrics and ESS."""
    with torch.no_grad():
        w = torch.softmax(reward(pool).double() / alpha, 0)
    ess = float(1 / (w**2).sum())
    row = {"engine": "reference", "alpha": alpha, "knob": len(pool), "ess": ess, "finite": True}
    row.update(calls_per_image=float("nan"), gradients_per_image=float("nan"), seconds=float("nan"))
    return row | scorer(pool, w)


def run_config(name, prior, reward, alpha, knob, settings, scorer, seed):
    desc, factory, _ = ENGINES[name]
    tempering = Exponential(settings.tempering) if name.endswith("tempered") else None
    engine = factory(_model(prior, reward, alpha, tempering), knob, settings.runs)
    t0 = time.perf_counter()
    try:
        res = engine.run(seed=seed)
    except tilted.TiltedError as error:  # a failure is a result: record it
        return {"engine": name, "alpha": alpha, "knob": knob, "error": f"{type(error).__name__}: {error}"[:300]}
    seconds = time.perf_counter() - t0
    x = res.particles["x"][:, 0] if name == "beam" else res.sample(1, seed=seed)["x"][:, 0]
    counts = res.counts
    finite = bool(torch.isfinite(x).all())
    row = {
        "engine": name,
        "alpha": alpha,
        "knob": knob,
        "calls_per_image": counts.denoiser_calls / settings.runs,
        "gradients_per_image": counts.gradient_evaluations / settings.runs,
        "seconds": seconds,
        "finite": finite,
    }
    if finite:
        row.update(scorer(x))
    return row


def run(settings: Settings, log=print) -> dict:
    torch.manual_seed(0)
    prior = digits(settings.steps)
    scorer = Scorer(settings.label)
    real, labels = digits_data("test")
    with torch.no_grad():
        pretrained = torch.cat([prior.sample((settings.runs,), generator=1000 + i) for i in range(4)])
    with torch.no_grad():
        pool = torch.cat([prior.sample((1024,), generator=2000 + i) for i in range(settings.pool // 1024)])
    out = {
        "real_class": scorer(real[labels == settings.label]),
        "real_all": scorer(real),
        "pretrained": scorer(pretrained),
        "class": [],
        "symmetry": [],
    }
    classifier = scorer.cnn
    tasks = [("class", ClassLogProb(classifier, settings.label), settings.class_alphas, ENGINES)]
    tasks.append(("symmetry", Symmetry(), settings.symmetry_alphas, SYMMETRY_ENGINES))
    seed = 0
    for task, reward, alphas, names in tasks:
        for alpha in alphas:
            out[task].append(reference_row(pool, reward, alpha, scorer))
            for name in names:
                knobs = settings.budgets if ENGINES[name][2] else settings.scales
                for knob in knobs:
                    seed += 1
                    row = run_config(name, prior, reward, alpha, knob, settings, scorer, seed)
                    out[task].append(row)
                    main = row.get("class_reward" if task == "class" else "symmetry", float("nan"))
                    log(f"{task} α={alpha} {name} {knob}: target {main:.3f}  {row.get('seconds', 0):.1f}s")
    return out


# -- the page -------------------------------------------------------------------------------------


def _fmt(v, se=None, digits=2):
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "—"
    return f"{v:.{digits}f}" + ("" if se is None else f" ± {se:.{digits}f}")


#: images with a pixel beyond ±BLOWN_UP (3 × the data's range) count as blown up (bold in the tables)
BLOWN_UP = 3.0


def _max_abs(row) -> float:
    return max(abs(v) for v in row["pixel_range"])


def _amax(row) -> str:
    """Largest |pixel| of the images (data: 1); a blown-up guidance run shows here."""
    value = _max_abs(row)
    return f"{value:.2f}" if value <= BLOWN_UP else f"**{value:.3g}**"


def _knob(row):
    if row["engine"] == "reference":
        return f"pool {row['knob']:,}, ESS {row['ess']:.0f}"
    return f"N = {row['knob']}" if ENGINES[row["engine"]][2] else f"scale {row['knob']:g}"


def table(rows, columns) -> list[str]:
    """A markdown table of configuration rows: α, engine and knob, then ``columns`` (header, cell of a row),
    then compute; a failed or non-finite configuration says so in one cell."""
    head = ["α", "engine", "knob", "calls / image", "gradients / image", *(h for h, _ in columns), "max \\|x\\|", "s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [f"{r['alpha']:g}", f"`{r['engine']}`", _knob(r)]
        if "error" in r or not r["finite"]:
            cells.append(f"error: {r['error']}" if "error" in r else "non-finite images")
        else:
            cells += [_fmt(r["calls_per_image"], digits=0), _fmt(r["gradients_per_image"], digits=0)]
            cells += [cell(r) for _, cell in columns] + [_amax(r), _fmt(r["seconds"], digits=1)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


CLASS_COLUMNS = [
    ("log p(3 \\| x), CNN (target)", lambda r: _fmt(r["class_reward"], r["class_reward_se"])),
    ("log p(3 \\| x), logistic (cross)", lambda r: _fmt(r["cross_reward"], r["cross_reward_se"])),
    ("CNN rate", lambda r: _fmt(r["class_rate"])),
    ("logistic rate", lambda r: _fmt(r["cross_rate"])),
    ("diversity", lambda r: _fmt(r["diversity"], digits=3)),
    ("over-optimised", lambda r: "**yes**" if r["overoptimised"] else ""),
]
SYMMETRY_COLUMNS = [
    ("symmetry (target)", lambda r: _fmt(r["symmetry"], r["symmetry_se"], 3)),
    ("class coverage exp(H)", lambda r: _fmt(r["coverage"])),
    ("diversity", lambda r: _fmt(r["diversity"], digits=3)),
]


def reference_lines(res) -> list[str]:
    lines = [
        "| images | log p(3 \\| x), CNN | log p(3 \\| x), logistic | CNN rate of 3 | symmetry | coverage | diversity |"
    ]
    lines.append("|---|---|---|---|---|---|---|")
    for name, key in (
        ("held-out real 3s", "real_class"),
        ("held-out real, all classes", "real_all"),
        ("pretrained (unguided)", "pretrained"),
    ):
        r = res[key]
        lines.append(
            f"| {name} | {_fmt(r['class_reward'], r['class_reward_se'])} | {_fmt(r['cross_reward'], r['cross_reward_se'])} | "
            f"{_fmt(r['class_rate'])} | {_fmt(r['symmetry'], r['symmetry_se'], 3)} | {_fmt(r['coverage'])} | {_fmt(r['diversity'], digits=3)} |"
        )
    return lines


def figure(res, settings, folder: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    shown = lambda r: "error" not in r and r["finite"] and r["engine"] != "reference"  # noqa: E731
    rows = [r for r in res["class"] if shown(r)]
    refs = {task: [r for r in res[task] if r["engine"] == "reference"] for task in ("class", "symmetry")}
    fig, axes = plt.subplots(1, 4, figsize=(19, 4.4))
    colours = dict(zip(ENGINES, plt.cm.tab20.colors, strict=False))
    markers = {a: m for a, m in zip(settings.class_alphas, "os^v", strict=False)}
    cross_lim, div_lim = (-6.0, 0.3), (0.25, 0.8)
    clip = lambda v, lim: min(max(v, lim[0]), lim[1])  # noqa: E731
    for r in rows:
        c, m = colours[r["engine"]], markers.get(r["alpha"], "x")
        off = not (cross_lim[0] <= r["cross_reward"] and r["diversity"] <= div_lim[1])  # blown up: on the edge, as X
        m, edge = ("X", "k") if off else (m, "none")
        axes[0].scatter(r["calls_per_image"], r["class_reward"], color=c, marker=m, edgecolors=edge)
        axes[1].scatter(r["class_reward"], clip(r["cross_reward"], cross_lim), color=c, marker=m, edgecolors=edge)
        axes[2].scatter(r["class_reward"], clip(r["diversity"], div_lim), color=c, marker=m, edgecolors=edge)
    for name in ENGINES:  # budget curves: one line per engine and α
        for alpha in settings.class_alphas:
            pts = sorted(
                (r["calls_per_image"], r["class_reward"]) for r in rows if r["engine"] == name and r["alpha"] == alpha
            )
            if len(pts) > 1 and ENGINES[name][2]:
                axes[0].plot(*zip(*pts, strict=True), color=colours[name], alpha=0.5)
    real, pre = res["real_class"], res["pretrained"]
    for ax, (xk, yk) in zip(axes[1:3], (("class_reward", "cross_reward"), ("class_reward", "diversity")), strict=True):
        ax.scatter(real[xk], real[yk], color="k", marker="*", s=150, label="held-out real 3s")
        ax.scatter(pre[xk], pre[yk], color="grey", marker="P", s=100, label="pretrained")
        for r in refs["class"]:
            ax.scatter(r[xk], r[yk], color="k", marker=markers.get(r["alpha"], "x"), s=90, facecolors="none")
    calls = [settings.steps, *(n * settings.steps for n in settings.budgets)]
    axes[0].set(xscale="log", xlabel="denoiser calls per image", title="target reward vs compute")
    axes[0].set_xticks(calls, [str(c) for c in calls])
    axes[0].minorticks_off()
    axes[0].set_ylim(top=0.001)
    axes[1].set(ylim=cross_lim, ylabel="cross: log p(3|x), logistic", title="target vs cross reward")
    axes[2].set(ylim=div_lim, ylabel="mean pairwise RMS distance", title="target reward vs diversity")
    # log p(3|x) ≤ 0 crowds near 0: symmetric log axes spread it
    axes[0].set_yscale("symlog", linthresh=0.01)
    axes[0].set_ylabel("target: log p(3|x), CNN")
    for ax in axes[1:3]:
        ax.set_xscale("symlog", linthresh=0.01)
        ax.set_xlim(right=0.001)
        ax.set_xlabel("target: log p(3|x), CNN")
    for r in filter(shown, res["symmetry"]):
        axes[3].scatter(
            r["symmetry"],
            r["coverage"],
            color=colours[r["engine"]],
            marker="os^v"[settings.symmetry_alphas.index(r["alpha"]) % 4],
        )
    axes[3].scatter(pre["symmetry"], pre["coverage"], color="grey", marker="P", s=100)
    for i, r in enumerate(refs["symmetry"]):
        axes[3].scatter(r["symmetry"], r["coverage"], color="k", marker="os^v"[i % 4], s=90, facecolors="none")
    sym = ", ".join(f"{'○□△▽'[i]} α = {a:g}" for i, a in enumerate(settings.symmetry_alphas))
    axes[3].set(xlabel="target: symmetry", ylabel="class coverage exp(H)", title=f"symmetry vs class coverage\n({sym})")
    handles = [plt.Line2D([], [], color=colours[n], marker="o", ls="", label=n) for n in ENGINES]
    handles += [plt.Line2D([], [], color="k", marker=m, ls="", label=f"α = {a:g}") for a, m in markers.items()]
    handles.append(
        plt.Line2D([], [], color="w", markeredgecolor="k", marker="X", ls="", label="blown up (on the edge)")
    )
    handles.append(
        plt.Line2D([], [], color="w", markeredgecolor="k", marker="o", ls="", label="target (weighted pool), by α")
    )
    fig.legend(handles=handles, loc="center right", fontsize=8)
    axes[1].legend(fontsize=8, loc="lower right")
    fig.tight_layout(rect=(0, 0, 0.88, 1))
    path = folder / "bench_digits.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path.name


def mark_overoptimised(res) -> None:
    """Flag class rows whose target reward exceeds the real 3s' while their cross reward falls more than
    2 combined standard errors below the real 3s' (the classifier is fooled, the other one is not)."""
    real = res["real_class"]
    for r in res["class"]:
        if "error" not in r and r["finite"]:
            se = math.hypot(r["cross_reward_se"], real["cross_reward_se"])
            r["overoptimised"] = (
                r["class_reward"] > real["class_reward"] and r["cross_reward"] < real["cross_reward"] - 2 * se
            )


def write(res, settings: Settings, info: dict, out: Path) -> Path:
    mark_overoptimised(res)
    fig = figure(res, settings, out / "figures")
    lines = [
        *standalone.header(
            "Digits: a mini DAS Figure 2 on a trained image model", "digits", __doc__, settings, info, fig
        ),
        "## References",
        "",
        *reference_lines(res),
        "",
        "## Class reward",
        "",
        *table(res["class"], CLASS_COLUMNS),
        "",
        "## Symmetry reward",
        "",
        *table(res["symmetry"], SYMMETRY_COLUMNS),
        "",
    ]
    path = out / "benchmarks_digits.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv=None) -> Path:
    return standalone.main("digits", __doc__, Settings, run, write, argv)
