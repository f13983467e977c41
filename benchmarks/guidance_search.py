"""Guidance and search engines against SMC on the DAS toy, at equal denoiser calls per draw.

Regenerate the table of ``docs/guidance.md`` with::

    python benchmarks/guidance_search.py            # 1000 draws per engine, 100 steps (a few minutes)
    python benchmarks/guidance_search.py --runs 200  # quicker, noisier

Task: :func:`tilted.demo.das_toy` (9 Gaussians on {−4, 0, 4}², r = −x²/100 − y², α = 1) as a
100-step DDPM with its exact denoiser. Every engine makes ``runs`` independent runs and contributes
one draw per run; the draws are compared with exact draws of the tilted data law
(:func:`tilted.reference.tilt_mixture`) by the earth mover's distance, next to its floor (the EMD
between two exact samples of the same size). The compute budget per draw is B = 16 pretrained chains
(16 × K denoiser calls): importance sampling and SMC use 16 particles, the search engines split the
16 into particles × candidates; guidance engines cost one chain per draw (FreeDoM more, for time
travel) and cannot convert more compute into better draws, so they run at their own cost.
"""

from __future__ import annotations

import argparse
import math
import time

import pyro
import torch

import tilted
from tilted.demo import das_toy
from tilted.distributions import GaussianDiffusion
from tilted.inference import DPS, MPGD, SMC, SVDD, BeamSearch, BestOfN, FreeDoM, Importance, NestedIS, das
from tilted.metrics import emd_to_target
from tilted.reference import tilt_mixture
from tilted.tempering import Exponential


def engines(model, runs: int, steps: int, budget: int) -> dict:
    """The compared engines, each returning ``runs`` runs; ``budget`` chains per draw for the scalable ones."""
    root = math.isqrt(budget)
    kw = {"num_runs": runs}
    return {
        "importance sampling": Importance(model, budget, **kw),
        "SMC, bootstrap": SMC(model, budget, **kw),
        "SMC, gradient (DAS)": das(model, budget, num_steps=steps, **kw),
        f"nested IS, N={root} M={budget // root}": NestedIS(model, root, num_candidates=budget // root, **kw),
        f"SVDD, M={budget} (α = 1)": SVDD(model, 1, num_candidates=budget, **kw),
        f"SVDD, M={budget}, greedy (α = 0)": SVDD(model, 1, num_candidates=budget, temperature=0, **kw),
        f"beam search, N={root} M={budget // root}": BeamSearch(model, root, num_candidates=budget // root, **kw),
        f"best-of-N, N={budget}": BestOfN(model, 1, num_candidates=budget, **kw),
        "DPS, ζ = 1 (default)": DPS(model, 1, **kw),
        "DPS, ζ = 0.1": DPS(model, 1, scale=0.1, **kw),
        "MPGD, ζ = 1 (default)": MPGD(model, 1, **kw),
        "MPGD, ζ = 0.1": MPGD(model, 1, scale=0.1, **kw),
        "FreeDoM (defaults)": FreeDoM(model, 1, **kw),
    }


def comparison_table(runs: int = 1000, steps: int = 100, budget: int = 16, seed: int = 0) -> list[dict]:
    """Rows {engine, mean_reward, emd, emd_se, floor, floor_se, denoiser_calls, gradients, seconds} (see module)."""
    data, reward = das_toy()
    prior = GaussianDiffusion(data=data, num_steps=steps)
    target, _ = tilt_mixture(data, reward, 1.0)

    def model():
        x = pyro.sample("x", prior)
        tilted.factor("r", reward, x, temperature=1.0, tempering=Exponential(0.008 * 100 / steps))

    def row(name, x, counts, seconds):
        dist = emd_to_target(x, lambda n, g: target.sample(n, g), repeats=5, seed=seed)
        return {
            "engine": name,
            "mean_reward": float(reward(x.double()).mean()),
            "emd": dist["emd"],
            "emd_se": dist["emd_se"],
            "floor": dist["floor"],
            "floor_se": dist["floor_se"],
            "denoiser_calls": counts.denoiser_calls / runs,
            "gradients": counts.gradient_evaluations / runs,
            "seconds": seconds,
        }

    t0 = time.perf_counter()
    pretrained = prior.sample((runs,), generator=seed)
    counts = tilted.inference.Counts(denoiser_calls=runs * steps)
    rows = [row("pretrained", pretrained, counts, time.perf_counter() - t0)]
    exact = target.sample(runs, torch.Generator().manual_seed(seed + 1))
    rows.insert(0, row("exact tilted target (reference)", exact, tilted.inference.Counts(), 0.0))
    for name, engine in engines(model, runs, steps, budget).items():
        t0 = time.perf_counter()
        res = engine.run(seed=seed)
        seconds = time.perf_counter() - t0
        if isinstance(engine, BeamSearch):
            x = res.particles["x"][:, 0]  # the best beam
        else:
            x = res.sample(1, seed=seed)["x"][:, 0]  # one draw per run (uniform over unweighted particles)
        rows.append(row(name, x, res.counts, seconds))
    return rows


def format_table(rows: list[dict]) -> str:
    """The rows as a Markdown table."""
    lines = [
        "| engine | mean reward | EMD ± s.e. | denoiser calls / draw | gradients / draw |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['engine']} | {r['mean_reward']:.3f} | {r['emd']:.3f} ± {r['emd_se']:.3f} "
            f"| {r['denoiser_calls']:,.0f} | {r['gradients']:,.0f} |"
        )
    floor = rows[0]
    lines.append(f"\nEMD floor (two exact samples of this size): {floor['floor']:.3f} ± {floor['floor_se']:.3f}")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--budget", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = comparison_table(args.runs, args.steps, args.budget, args.seed)
    print(f"{args.runs} draws per engine, {args.steps} steps, budget {args.budget} chains per draw\n")
    print(format_table(rows))


if __name__ == "__main__":
    main()
