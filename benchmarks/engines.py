"""The engines compared, at equal denoiser-call budgets, and how one output point is drawn from each.

Every engine runs R independent runs of N particles in one batched call (``num_runs=R``); each run
gives ONE output point, ``result.sample(1)`` (a draw from its weighted particles), so the R points
are independent draws of the engine's output law. SMC at K steps with N particles costs N·K
denoiser calls per point; importance sampling and best-of-N use the same N (the same budget);
pretrained sampling costs K per point.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from benchmarks.tasks import Task
from tilted.inference import SMC, Importance, Twist
from tilted.tempering import Adaptive, Exponential

F64 = torch.float64


@dataclass(frozen=True)
class Engine:
    """A named engine configuration. ``build(task, N, R)`` returns an SMC-like engine (or None: ancestral)."""

    name: str
    description: str
    build: Callable[[Task, int, int], SMC] | None
    #: extra outputs read from the same runs: name → "best" (best-of-N from an importance run)
    also: dict[str, str] = field(default_factory=dict)
    oracle: bool = False


def _smc(**options) -> Callable[[Task, int, int], SMC]:
    return lambda task, n, r: SMC(task.model, n, num_runs=r, progress=False, **options)


def _fk_max(task: Task, n: int, r: int) -> SMC:
    every = max(task.process.num_steps // 5, 1)  # 20 at K = 100: resample at s = 20, 40, 60, 80
    return SMC(
        task.model,
        n,
        num_runs=r,
        potential="max",
        resample_every=every,
        resample_window=(every, 4 * every),
        progress=False,
    )


def _oracle(task: Task, n: int, r: int) -> SMC:
    return SMC(task.model, n, num_runs=r, potential=Twist(task.twist), proposal="gradient", progress=False)


ENGINES: tuple[Engine, ...] = (
    Engine(
        "pretrained",
        "ancestral sampling from the pretrained chain, no reward (K denoiser calls per point; 16 chains per "
        "run on the linear-Gaussian tasks, for the moment statistics)",
        None,
    ),
    Engine(
        "importance",
        "importance sampling: N pretrained draws weighted by exp(r/α), one draw from the weights",
        lambda task, n, r: Importance(task.model, n, num_runs=r, progress=False),
        also={"best-of-N": "best"},
    ),
    Engine("smc-bootstrap", "SMC, prior proposal, Tweedie potential r(x̂₀)/α, λ ≡ 1, systematic, ESS < N/2", _smc()),
    Engine("smc-gradient", "SMC, gradient proposal N(μ + σ²∇ψ, σ²I), λ ≡ 1", _smc(proposal="gradient")),
    Engine("smc-exp", "SMC, prior proposal, tempering Exponential(0.008)", _smc(tempering=Exponential(0.008))),
    Engine("smc-adaptive", "SMC, prior proposal, tempering Adaptive() (target ESS ½)", _smc(tempering=Adaptive())),
    Engine(
        "fk-max",
        "FK steering: prior proposal, potential max, resampling every K/5 steps in steps K/5 … 4K/5 (no ESS rule)",
        _fk_max,
    ),
    Engine(
        "das",
        "DAS preset: gradient proposal, Exponential(0.008), SSP resampling, ESS < N/2",
        _smc(proposal="gradient", tempering=Exponential(0.008), resampler="ssp", ess_threshold=0.5),
    ),
    Engine(
        "oracle-twist",
        "SMC with the exact soft value ψ_k as potential and the gradient proposal N(μ + σ²∇ψ, σ²I) "
        "(an oracle, unavailable in practice: ring and linear-Gaussian tasks)",
        _oracle,
        oracle=True,
    ),
)

ENGINE_NAMES = tuple(e.name for e in ENGINES)


def get(name: str) -> Engine:
    for engine in ENGINES:
        if engine.name == name:
            return engine
    raise KeyError(f"unknown engine {name!r}; choose from {ENGINE_NAMES}")


def output_names(engine: Engine) -> list[str]:
    return [engine.name, *engine.also]


@dataclass
class Output:
    """One engine output over R runs: one point per run, and per-run statistics."""

    points: torch.Tensor  # (R, d) float64
    seconds: float
    counts: dict[str, int]  # totals over the R runs
    log_evidence: torch.Tensor | None = None  # (R,)
    particles: torch.Tensor | None = None  # (R, N, d) float64 (for weighted moments)
    log_weights: torch.Tensor | None = None  # (R, N)
    resamplings: torch.Tensor | None = None  # (R,) resampling events per run
    lambdas: torch.Tensor | None = None  # (S,) mean λ per step over runs


def run(engine: Engine, task: Task, num_particles: int, num_runs: int, seed: int, keep_particles: bool) -> dict:
    """Run ``engine`` on ``task``; return output name → :class:`Output` (best-of-N shares the importance run)."""
    flat = lambda t: t.reshape(t.shape[: -len(task.process.event_shape)] + (-1,)).to(F64)  # noqa: E731
    if engine.build is None:
        n = num_particles if keep_particles else 1
        gen = torch.Generator().manual_seed(seed)
        start = time.perf_counter()
        x = flat(task.process.sample((num_runs, n), generator=gen))
        seconds = time.perf_counter() - start
        counts = {"denoiser_calls": num_runs * n * task.process.num_steps, "reward_calls": 0, "gradient_evaluations": 0}
        uniform = torch.zeros(num_runs, n, dtype=F64) if keep_particles else None
        return {engine.name: Output(x[:, 0], seconds, counts, None, x if keep_particles else None, uniform)}
    smc = engine.build(task, num_particles, num_runs)
    start = time.perf_counter()
    result = smc.run(seed=seed)
    seconds = time.perf_counter() - start
    x = result.particles["x"]
    points = flat(result.sample(1, seed=seed + 1)["x"][:, 0])
    trace = result.trace
    lambdas = trace.lambdas[:, 0].mean(-1) if trace.lambdas.shape[1] else None
    out = {
        engine.name: Output(
            points,
            seconds,
            result.counts.as_dict(),
            result.log_evidence.to(F64),
            flat(x) if keep_particles else None,
            result.log_weights.to(F64) if keep_particles else None,
            trace.resampled.sum(0).to(F64),
            lambdas,
        )
    }
    for name, kind in engine.also.items():
        if kind != "best":
            raise ValueError(f"unknown extra output kind {kind!r}")
        out[name] = Output(flat(result.best(1)["x"][:, 0]), seconds, result.counts.as_dict())
    return out


def same_draws(task: Task, first: str, second: str, num_runs: int = 4, seed: int = 0) -> bool:
    """Whether two engines return identical particles and weights from the same seed (a small check)."""
    a = get(first).build(task, 16, num_runs).run(seed=seed)
    b = get(second).build(task, 16, num_runs).run(seed=seed)
    return torch.equal(a.particles["x"], b.particles["x"]) and torch.equal(a.log_weights, b.log_weights)
