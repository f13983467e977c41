"""Online black-box optimisation: best and mean true value against the number of queries.

    ./run bench online                 # docs/benchmarks_online.md and docs/figures/bench_online.png
    ./run bench online --quick         # smoke version, into a temporary folder

Two black boxes, queried in rounds of B = 16 (round 0: 16 draws from the pretrained model):

- **grid**: the DAS 3×3 grid mixture (exact denoiser, K = 50 steps); the black box is a bump
  r(x) = exp(−‖x − (5, 5)‖²/(2·0.75²)), centred beyond the corner mode at (4, 4), where the pretrained
  model puts little mass (the corner mode itself scores ≈ 0.17). α = 0.1.
- **digits**: the trained digits DDPM (:func:`tilted.pretrained.digits`, K = 50); the black box is the
  log-odds log p/(1 − p) of class 3 under the logistic-regression classifier, which the surrogates
  never see: they read the CNN's 128 penultimate features (:meth:`DigitsCNN.features`). α = 0.5.

Methods at equal queries (and, for the samplers, equal denoiser calls: 16 per step and query):
*ensemble* (5 bootstrap MLPs, UCB κ = 1) and *neural-linear* (β = 1, C = 2) drive the default SMC
(16 particles, gradient proposal); *optimism off* is the ensemble's mean alone; *best-of-N* keeps,
for each query, the best of 16 pretrained chains under the same ensemble UCB (no KL term);
*random* queries draws of the pretrained model. Each curve is the mean over seeds, the band its
range (min to max). *Best* is the best value queried so far; *mean* is the mean value of a round's
batch: how much of the budget lands where the black box is high.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from benchmarks import standalone
from tilted.inference import BestOfN
from tilted.online import Ensemble, NeuralLinear, optimize

METHODS = ("ensemble", "neural-linear", "optimism off", "best-of-N", "random")


@dataclass(frozen=True)
class Settings:
    rounds: int = 8
    batch_size: int = 16
    seeds: int = 3
    steps: int = 50
    tasks: tuple = ("grid", "digits")

    @classmethod
    def quick(cls) -> Settings:
        return cls(rounds=2, batch_size=4, seeds=1, steps=5)


def grid_task(steps: int):
    from benchmarks.tasks import das_grid

    centre = torch.tensor([5.0, 5.0], dtype=torch.float64)

    def oracle(x):
        return torch.exp(-(x.double() - centre).pow(2).sum(-1) / (2 * 0.75**2))

    return das_grid(steps).process, oracle, 0.1, None


def digits_task(steps: int):
    from tilted.pretrained import digits, digits_classifier, digits_logistic

    logistic = digits_logistic()

    def oracle(x):
        with torch.no_grad():
            logp = logistic(x).log_softmax(-1)[:, 3]
        return (logp - torch.log1p(-logp.exp().clamp(max=1 - 1e-12))).double()

    return digits(steps), oracle, 0.5, digits_classifier().features


TASKS = {"grid": grid_task, "digits": digits_task}


def run_method(method, prior, oracle, alpha, features, settings, seed) -> list[list[float]]:
    """The oracle's values per round, for one method and seed."""
    b = settings.batch_size
    if method == "random":
        with torch.no_grad():
            x = prior.sample((settings.rounds * b,), generator=torch.Generator().manual_seed(seed))
        return oracle(x).reshape(settings.rounds, b).tolist()
    surrogate = (NeuralLinear if method == "neural-linear" else Ensemble)(features=features)
    engine = (lambda model: BestOfN(model, 1, num_candidates=16, num_runs=b)) if method == "best-of-N" else None
    history = optimize(
        prior,
        oracle,
        rounds=settings.rounds,
        batch_size=b,
        temperature=alpha,
        seed=seed,
        surrogate=surrogate,
        optimism="off" if method == "optimism off" else None,
        engine=engine,
        progress=False,
    )
    return [y.tolist() for y in history.y]


def run(settings: Settings, log=print) -> dict:
    res = {}
    for name in settings.tasks:
        prior, oracle, alpha, features = TASKS[name](settings.steps)
        res[name] = {"alpha": alpha, "methods": {}}
        for method in METHODS:
            start = time.perf_counter()
            values = [run_method(method, prior, oracle, alpha, features, settings, s) for s in range(settings.seeds)]
            res[name]["methods"][method] = {"values": values, "seconds": time.perf_counter() - start}
            log(f"{name} {method}: {_curves(values)['best'][-1]:.3f} best, {time.perf_counter() - start:.0f}s")
    return res


def _curves(values) -> dict:
    """best-so-far and batch mean per round, (seeds, rounds), and their mean over seeds."""
    y = torch.tensor(values, dtype=torch.float64)  # (seeds, rounds, B)
    y = torch.nan_to_num(y, nan=-torch.inf)
    best = y.amax(-1).cummax(-1).values
    mean = y.masked_fill(~torch.isfinite(y), torch.nan).nanmean(-1)
    return {"best_runs": best, "mean_runs": mean, "best": best.mean(0).tolist(), "mean": mean.mean(0).tolist()}


def figure(res, settings: Settings, folder: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(res)
    fig, axes = plt.subplots(len(tasks), 2, figsize=(10, 3.6 * len(tasks)), squeeze=False)
    queries = [settings.batch_size * (r + 1) for r in range(settings.rounds)]
    for row, name in zip(axes, tasks, strict=True):
        for method, data in res[name]["methods"].items():
            c = _curves(data["values"])
            for ax, key in zip(row, ("best", "mean"), strict=True):
                runs = c[f"{key}_runs"]
                (line,) = ax.plot(queries, c[key], marker="o", ms=3, label=method)
                ax.fill_between(queries, runs.amin(0), runs.amax(0), color=line.get_color(), alpha=0.15)
        for ax, key in zip(row, ("best value so far", "mean value of the round's batch"), strict=True):
            ax.set_title(f"{name}: {key}")
            ax.set_xlabel("queries")
            ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    folder.mkdir(parents=True, exist_ok=True)
    fig.savefig(folder / "bench_online.png", dpi=110)
    plt.close(fig)
    return "bench_online.png"


def table(res, name, settings: Settings) -> list[str]:
    half = (settings.rounds - 1) // 2
    lines = [
        f"α = {res[name]['alpha']}. Mean over {settings.seeds} seeds [min, max]; wall time for all seeds.",
        "",
        f"| method | best after {settings.batch_size * (half + 1)} queries | best after {settings.batch_size * settings.rounds} "
        "| mean of the last batch | wall time |",
        "|---|---|---|---|---|",
    ]
    for method, data in res[name]["methods"].items():
        c = _curves(data["values"])
        cell = lambda t, i: f"{float(t[:, i].mean()):.3f} [{float(t[:, i].min()):.3f}, {float(t[:, i].max()):.3f}]"  # noqa: E731
        lines.append(
            f"| {method} | {cell(c['best_runs'], half)} | {cell(c['best_runs'], -1)} | {cell(c['mean_runs'], -1)} | {data['seconds']:.0f} s |"
        )
    return lines


def write(res, settings: Settings, info: dict, out: Path) -> Path:
    fig = figure(res, settings, out / "figures")
    lines = [
        *standalone.header(
            "Online black-box optimisation against the query budget", "online", __doc__, settings, info, fig
        ),
    ]
    for name in res:
        lines += [f"## {name}", "", *table(res, name, settings), ""]
    path = out / "benchmarks_online.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv=None) -> Path:
    return standalone.main("online", __doc__, Settings, run, write, argv)
