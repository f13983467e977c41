"""``tilted demo``: the DAS Figure-1 toy, sampled by every engine and compared with the exact target.

Data: 9 Gaussians on the grid {−4, 0, 4}², covariance 0.3·I, as a 100-step DDPM with its exact
denoiser. Reward r(x, y) = −x²/100 − y², α = 1. The exact tilted data law is again a Gaussian
mixture (:func:`tilted.reference.tilt_mixture`). Each engine makes ``runs`` independent runs of 16
particles, and one equally weighted draw per run is compared with exact draws.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import pyro
import torch

import tilted
from tilted.distributions import GaussianDiffusion, GaussianMixture
from tilted.inference import SMC, Importance, das
from tilted.metrics import emd_to_target
from tilted.reference import tilt_mixture
from tilted.rewards import Quadratic
from tilted.tempering import Exponential


def das_target() -> tuple[GaussianMixture, Quadratic]:
    """The DAS Figure-1 toy's (data law, reward); :func:`tilted.diagnostics.toys.das_toy` builds its model."""
    grid = torch.tensor([-4.0, 0.0, 4.0])
    return GaussianMixture(torch.cartesian_prod(grid, grid), 0.3), Quadratic(A=torch.diag(torch.tensor([-0.01, -1.0])))


def run_demo(out: str = "outputs", seed: int = 0, runs: int = 1000, particles: int = 16, steps: int = 100) -> dict:
    """Sample the toy with each engine; print a summary table and save ``out/demo.png``."""
    torch.manual_seed(seed)
    data, reward = das_target()
    alpha = 1.0
    prior = GaussianDiffusion(data=data, num_steps=steps)
    target, log_z = tilt_mixture(data, reward, alpha)

    def model():
        x = pyro.sample("x", prior)
        tilted.factor("r", reward, x, temperature=alpha, tempering=Exponential(0.008 * 100 / steps))

    engines = {
        "importance sampling": Importance(model, particles, num_runs=runs),
        "best-of-N": Importance(model, particles, num_runs=runs),
        "SMC, bootstrap": SMC(model, particles, num_runs=runs),
        "SMC, gradient (DAS)": das(model, particles, num_steps=steps, num_runs=runs),
    }
    t0 = time.perf_counter()
    pretrained = prior.sample((runs,), generator=seed)
    rows = [_row("pretrained", pretrained, reward, None, runs * steps, 0, time.perf_counter() - t0, target, seed)]
    points = {"pretrained": pretrained, "exact tilted target": target.sample(runs, torch.Generator().manual_seed(seed))}
    for name, engine in engines.items():
        t0 = time.perf_counter()
        res = engine.run(seed=seed)
        wall = time.perf_counter() - t0
        x = res.best()["x"] if name == "best-of-N" else res.sample(1, seed=seed)["x"]
        x = x[:, 0]
        lz = None if name == "best-of-N" else float(torch.logsumexp(res.log_evidence, 0) - math.log(runs))
        c = res.counts
        rows.append(_row(name, x, reward, lz, c.denoiser_calls, c.gradient_evaluations, wall, target, seed))
        points[name] = x
    _print(rows, float(log_z), runs, particles, steps)
    path = _figure(points, Path(out))
    print(f"\nfigure: {path}")
    return {"rows": rows, "log_z": float(log_z), "figure": str(path)}


def _row(name, x, reward, log_z, calls, grads, wall, target, seed):
    dist = emd_to_target(x, lambda n, g: target.sample(n, g), repeats=3, seed=seed)
    return {
        "engine": name,
        "mean_reward": float(reward(x.double()).mean()),
        "emd": dist["emd"],
        "floor": dist["floor"],
        "log_z": log_z,
        "denoiser_calls": calls,
        "gradients": grads,
        "seconds": wall,
    }


def _print(rows, log_z, runs, particles, steps):
    print(f"DAS Figure-1 toy: {steps} steps, {runs} independent runs × {particles} particles, one draw per run")
    print(
        "reward r = −x²/100 − y², α = 1; EMD to exact draws of the tilted target (floor = EMD between two exact draws)"
    )
    print(f"exact log Z (tilted data law) = {log_z:.3f}\n")
    head = f"{'engine':<22}{'mean reward':>12}{'EMD':>8}{'floor':>8}{'log Ẑ':>8}{'denoiser calls':>16}{'gradients':>11}{'seconds':>9}"
    print(head)
    print("-" * len(head))
    for r in rows:
        lz = "" if r["log_z"] is None else f"{r['log_z']:.3f}"
        print(
            f"{r['engine']:<22}{r['mean_reward']:>12.3f}{r['emd']:>8.3f}{r['floor']:>8.3f}{lz:>8}"
            f"{r['denoiser_calls']:>16,}{r['gradients']:>11,}{r['seconds']:>9.2f}"
        )


def _figure(points: dict, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(2, 3, figsize=(12, 8), sharex=True, sharey=True)
    for ax, (name, x) in zip(axes.flat, points.items(), strict=False):
        x = x.double()
        ax.scatter(x[:, 0], x[:, 1], s=3, alpha=0.5)
        ax.set_title(name)
        ax.set_xlim(-7, 7)
        ax.set_ylim(-7, 7)
        ax.set_aspect("equal")
    for ax in list(axes.flat)[len(points) :]:
        ax.axis("off")
    fig.suptitle("DAS toy: p(x) ∝ p_θ(x)·exp(r(x)), r = −x²/100 − y²")
    fig.tight_layout()
    path = out / "demo.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
