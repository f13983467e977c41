"""Inference-time scaling: quality against denoiser calls for every engine, at equal budgets.

    python -m benchmarks.scaling OUT.json [--report] [--quick]     # docs/benchmarks_search.md

Every engine gets the same budget B of denoiser calls *per output point* (``budget=B·R`` for R
runs batched in one call; sized engines choose N, anytime engines stop; ``result.counts`` says
what was spent, never more than B per point) at three budgets per task, and is scored two ways:

- **sampling** (samplers only): one draw per run (``result.sample(1)``; particle Gibbs: the last
  retained state of its chain) over R = 500 runs on the toys and 1,000 on the discrete task, compared
  with exact draws of the target: EMD − floor on the DAS toys (the floor: EMD between two exact sets of
  R points; both averaged over 10 independent exact sets), TV − floor over the 256 sequences of the
  discrete task (the floor: the mean TV of 10 sets of R exact draws), mean ± s.e. over 3 repetitions; on digits, whose target has no closed form, the mean reward
  of the draws (8 runs);
- **search** (every engine): the best reward found per run (the largest exact r among the run's
  returned particles), mean ± s.e. over runs (64 searches on the toys and the discrete task, 8 on
  digits; for samplers over their R runs).

Budgets per point are 8K, 32K and 128K denoiser calls (K the task's steps: N = 8, 32, 128 particles for
SMC; digits 8K and 32K only, its network being about a hundred times dearer per call on this CPU). Engine settings: SMC with the prior proposal and the Tweedie potential; DAS = gradient proposal
with exponential tempering reaching λ = 1 at 87% of the steps; nested IS with 4 candidates; particle
Gibbs with N = 4 and ancestor sampling (budget → sweeps, no burn-in); tree sampling (DTS, Boltzmann
growth) and its prior-growth variant with 4 parallel descents; SVDD greedy and beam search with 4
candidates; evolutionary search with a population of 8; the noise bandit with 4 candidate noises, UCB.

Tasks: the DAS grid and ring toys at K = 20 (benchmarks.tasks, analytic mixture denoisers), the
enumerable discrete task (K = 8, V = 4, L = 4), and the trained digits DDPM at K = 10 with the
CNN's log p(3 | x) at α = 0.3 (tilted.pretrained). Samplers are exact (SMC, importance sampling,
nested IS, particle Gibbs) or approximately exact (tree sampling); optimisers make no sampling
claim and are listed for their best reward.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import pyro
import torch

import tilted
from benchmarks import metrics, trained
from benchmarks.figures import _save  # the Agg backend and the page's figure folder
from benchmarks.tasks import build
from tilted.inference import (
    SMC,
    SVDD,
    BeamSearch,
    BestOfN,
    EvolutionarySearch,
    Importance,
    NestedIS,
    NoiseSearch,
    ParticleGibbs,
    TreeSearch,
)
from tilted.reference import total_variation
from tilted.tempering import Exponential

F64 = torch.float64


@dataclass(frozen=True)
class Settings:
    toy_steps: int = 20
    toy_points: int = 500  # sampler runs per budget on the toys (one output point each)
    discrete_points: int = 1000
    search_points: int = 64  # search runs per budget (toys and discrete)
    digits_steps: int = 10
    digits_points: int = 8  # runs per budget on digits, samplers and searchers alike
    repeats: int = 3  # sampler repetitions where an exact target gives a distance
    multiples: tuple[int, ...] = (8, 32, 128)  # budgets per point, in units of K denoiser calls
    digits_multiples: tuple[int, ...] = (8, 32)  # the digits network is ~100× dearer per call on this CPU

    def budgets_of(self, task: str) -> tuple[int, ...]:
        steps = {"grid": self.toy_steps, "ring": self.toy_steps, "discrete": 8, "digits": self.digits_steps}[task]
        return tuple(m * steps for m in (self.digits_multiples if task == "digits" else self.multiples))

    @classmethod
    def quick(cls) -> Settings:
        return cls(
            toy_steps=10,
            toy_points=50,
            discrete_points=200,
            search_points=8,
            digits_steps=5,
            digits_points=4,
            repeats=1,
            multiples=(8, 32),
        )


def das_tempering(K: int) -> Exponential:
    """DAS's exponential schedule rescaled to K steps: λ reaches 1 after 87% of the steps (γ = 0.008 at K = 100)."""
    return Exponential(math.exp(math.log(2) / (0.87 * K)) - 1)


#: name → (kind, factory(model, budget, runs, K), families it runs on)
ENGINES = {
    "importance": ("sampler", lambda m, b, r, K: Importance(m, budget=b, num_runs=r), "all"),
    "smc": ("sampler", lambda m, b, r, K: SMC(m, budget=b, num_runs=r), "all"),
    "das": (
        "sampler",
        lambda m, b, r, K: SMC(m, budget=b, proposal="gradient", tempering=das_tempering(K), num_runs=r),
        "all",
    ),
    "nested-is": ("sampler", lambda m, b, r, K: NestedIS(m, budget=b, num_candidates=4, num_runs=r), "all"),
    "particle-gibbs": (
        "sampler",
        lambda m, b, r, K: ParticleGibbs(m, 4, None, budget=b, burn_in=0, num_runs=r),
        "all",
    ),
    "tree-sample": (
        "sampler",
        lambda m, b, r, K: TreeSearch(m, 1, mode="sample", budget=b, num_parallel=4, num_runs=r),
        "all",
    ),
    "tree-sample-prior": (
        "sampler",
        lambda m, b, r, K: TreeSearch(m, 1, mode="sample", selection="prior", budget=b, num_parallel=4, num_runs=r),
        "all",
    ),
    "best-of-N": ("search", lambda m, b, r, K: BestOfN(m, budget=b, num_candidates=1, num_runs=r), "all"),
    "svdd-greedy": (
        "search",
        lambda m, b, r, K: SVDD(m, budget=b, num_candidates=4, temperature=0, num_runs=r),
        "all",
    ),
    "beam": ("search", lambda m, b, r, K: BeamSearch(m, budget=b, num_candidates=4, num_runs=r), "all"),
    "tree-search": (
        "search",
        lambda m, b, r, K: TreeSearch(m, 1, mode="search", budget=b, num_parallel=4, num_runs=r),
        "all",
    ),
    "evolution": (
        "search",
        lambda m, b, r, K: EvolutionarySearch(m, 1, population_size=8, budget=b, num_runs=r),
        "all",
    ),
    "noise-bandit": ("search", lambda m, b, r, K: NoiseSearch(m, 1, budget=b, num_runs=r), "all"),
}


# -- tasks ------------------------------------------------------------------------------------------
@dataclass
class Problem:
    name: str
    model: object
    reward: object
    K: int
    points: int
    exact: object = None  # exact_sample(n, generator) or None
    law: torch.Tensor | None = None  # discrete: the exact law over the sequences
    histogram: object = None
    cost: object = torch.cdist


def problem(name: str, settings: Settings) -> Problem:
    if name == "digits":
        from tilted.pretrained import digits, digits_classifier
        from tilted.rewards import ClassLogProb

        prior = digits(settings.digits_steps)
        reward = ClassLogProb(digits_classifier(), 3)

        def model():
            tilted.factor("r", reward, pyro.sample("x", prior), temperature=0.3)

        return Problem(name, model, reward, settings.digits_steps, settings.digits_points)
    task = build(name, 8 if name == "discrete" else settings.toy_steps)
    points = settings.discrete_points if task.discrete else settings.toy_points
    return Problem(
        name,
        task.model,
        task.point_rewards,
        task.process.num_steps,
        points,
        exact=task.exact_sample,
        law=task.law,
        histogram=task.histogram if task.discrete else None,
        cost=task.cost,
    )


#: independent exact sets per distance: one pair of 500-point sets moves the toys' EMD by ±0.1 (mode fractions)
REFERENCE_SETS = 10


def distance(p: Problem, x: torch.Tensor, rep: int) -> float:
    """EMD (toys) or TV (discrete) of the points x to the exact target, minus the floor of the same size.

    Both sides are averaged over :data:`REFERENCE_SETS` independent exact sets a_i of the same size:
    mean_i EMD(x, a_i) − mean_i EMD(b_i, a_i) (TV: TV(x) − mean_i TV(b_i)), so the reference's own
    sampling noise averages out of the difference; what remains is the engine's (and its s.e. over
    repetitions).
    """
    g = torch.Generator().manual_seed(9000 + rep)
    if p.law is not None:
        floor = [float(total_variation(p.histogram(p.exact(p.points, g)), p.law)) for _ in range(REFERENCE_SETS)]
        return float(total_variation(p.histogram(x), p.law)) - sum(floor) / len(floor)
    x = x.to(F64).flatten(1)
    gaps = []
    for _ in range(REFERENCE_SETS):
        a, b = p.exact(p.points, g), p.exact(p.points, g)
        gaps.append(metrics.emd(x, a, p.cost) - metrics.emd(b, a, p.cost))
    return sum(gaps) / len(gaps)


def run_one(p: Problem, name: str, budget: int, runs: int, rep: int) -> dict:
    """One engine at budget B per point over ``runs`` runs: its spend, best reward per run, and (samplers) its draws."""
    kind, factory, _ = ENGINES[name]
    engine = factory(p.model, budget * runs, runs, p.K)
    t0 = time.perf_counter()
    try:
        res = engine.run(seed=1000 * rep + budget)
    except tilted.TiltedError as error:  # a failure is a result: record it
        return {"error": f"{type(error).__name__}: {error}"[:300]}
    row = {
        "calls_per_point": res.counts.denoiser_calls / runs,
        "best": metrics.mean_se(res.rewards["r"].to(F64).reshape(runs, -1).amax(-1).tolist()),
        "seconds": time.perf_counter() - t0,
    }
    if kind == "sampler":
        x = res.particles["x"][:, -1] if name == "particle-gibbs" else res.sample(1, seed=rep)["x"][:, 0]
        if p.exact is not None:
            row["distance"] = distance(p, x, rep)
        else:
            row["draw_reward"] = metrics.mean_se(p.reward(x).to(F64).flatten().tolist())
    return row


TASK_NAMES = ("grid", "ring", "discrete", "digits")


def benchmark(settings: Settings | None = None, log=print, tasks=TASK_NAMES) -> dict:
    torch.set_num_threads(2)
    settings = settings or Settings()
    out = {}
    for task in tasks:
        p = problem(task, settings)
        out[task] = {}
        for name, (kind, _, _) in ENGINES.items():
            out[task][name] = []
            runs = p.points if kind == "sampler" or task == "digits" else settings.search_points
            repeats = settings.repeats if kind == "sampler" and p.exact is not None else 1
            for budget in settings.budgets_of(task):
                reps = [run_one(p, name, budget, runs, rep) for rep in range(repeats)]
                row = {"budget": budget, "runs": runs, **_merge(reps)}
                out[task][name].append(row)
                log(f"{task} {name} B={budget}: {row}")
    return out


def _merge(reps: list[dict]) -> dict:
    """Repetitions → one row: distance and best reward as mean ± s.e. over repetitions (one: its own s.e.)."""
    if any("error" in r for r in reps):
        return next(r for r in reps if "error" in r)
    row = dict(reps[0])
    if len(reps) > 1:
        for key in ("distance", "best"):
            row[key] = metrics.mean_se([r[key][0] if key == "best" else r[key] for r in reps])
    elif "distance" in row:
        row["distance"] = (row["distance"], math.nan)
    row["seconds"] = sum(r["seconds"] for r in reps) / len(reps)
    return row


# -- the page ---------------------------------------------------------------------------------------
def _fmt(v, digits=3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    if isinstance(v, list | tuple):
        m, se = v
        return f"{m:.{digits}f} ± {se:.{digits}f}" if not math.isnan(se) else f"{m:.{digits}f}"
    return f"{v:.{digits}f}"


def figure(data: dict, path: str) -> str:
    import matplotlib.pyplot as plt

    tasks = list(data)
    fig, axes = plt.subplots(2, len(tasks), figsize=(4.2 * len(tasks), 7), squeeze=False)
    for j, task in enumerate(tasks):
        for name, rows in data[task].items():
            rows = [r for r in rows if "error" not in r]
            if not rows:
                continue
            kind = ENGINES[name][0] if name in ENGINES else "search"
            x = [r["calls_per_point"] for r in rows]
            style = "-o" if kind == "sampler" else "--s"
            if kind == "sampler":
                y = [r["distance"][0] if "distance" in r else r["draw_reward"][0] for r in rows]
                axes[0, j].plot(x, y, style, label=name, ms=4)
            axes[1, j].plot(x, [r["best"][0] for r in rows], style, label=name, ms=4)
        axes[0, j].set_title(task)
        axes[0, j].set_ylabel(
            "EMD − floor"
            if task in ("grid", "ring")
            else "TV − floor"
            if task == "discrete"
            else "mean reward of draws"
        )
        axes[1, j].set_ylabel("best reward found")
        for ax in axes[:, j]:
            ax.set_xscale("log")
            ax.set_xlabel("denoiser calls per point")
            ax.grid(alpha=0.3)
        if task != "digits":
            axes[0, j].axhline(0, color="k", lw=0.8)
    axes[0, 0].legend(fontsize=7)
    axes[1, 0].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return _save(fig, Path(path))


def report(data: dict, settings_line: str) -> str:
    figure(data, "docs/figures/bench_scaling.png")
    lines = [
        "# Inference-time scaling: quality against compute",
        "",
        "<!-- Generated by `python -m benchmarks.scaling OUT.json` (benchmarks/scaling.py). Edit the code, not this page. -->",
        "",
        settings_line,
        "",
        __doc__.split("\n\n", 2)[2].strip(),
        "",
        "![quality against compute](figures/bench_scaling.png)",
        "",
    ]
    for task, engines in data.items():
        budgets = [r["budget"] for r in next(iter(engines.values()))]
        metric = (
            "EMD − floor"
            if task in ("grid", "ring")
            else "TV − floor"
            if task == "discrete"
            else "mean reward of one draw"
        )
        lines += [
            f"## {task}",
            "",
            f"Sampling: {metric} (samplers) · search: best reward found per run. Budgets B in denoiser calls per point; *spent* = what the engine used.",
            "",
        ]
        head = "| engine | kind | " + " | ".join(f"B = {b}: sampling · best · spent" for b in budgets) + " |"
        lines += [head, "|---|---|" + "---|" * len(budgets)]
        for name, rows in engines.items():
            kind = ENGINES[name][0] if name in ENGINES else "?"
            cells = []
            for r in rows:
                if "error" in r:
                    cells.append(f"error: {r['error'][:60]}")
                    continue
                sample = _fmt(r.get("distance", r.get("draw_reward"))) if kind == "sampler" else "—"
                cells.append(f"{sample} · {_fmt(r['best'], 2)} · {r['calls_per_point']:.0f}")
            lines.append(f"| {name} | {kind} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    argv = sys.argv[1:]
    settings = Settings.quick() if "--quick" in argv else Settings()
    detail = f", settings {replace(settings)}"
    trained.page_main(argv, lambda: benchmark(settings), report, "docs/benchmarks_search.md", detail)
