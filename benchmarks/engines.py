"""The engines compared, at equal denoiser-call budgets, and how one output point is drawn from each.

Every engine runs R independent runs in one batched call (``num_runs=R``); each run gives ONE output
point, ``result.sample(1)`` (a draw from its weighted particles; uniform over the unweighted particles
of an approximate engine; beam search returns its best beam), so the R points are independent draws
of the engine's output law. Budget per point, B = N = 16 pretrained chains: SMC at K steps with N
particles costs N·K denoiser calls per point; importance sampling, best-of-N and the search engines
(nested IS, SVDD, beam search: particles × candidates = 16) use the same; guidance engines (DPS,
MPGD, FreeDoM, TaylorGuidance) follow one chain per point and cannot turn more compute into better
draws, so they run at their own cost; pretrained sampling costs K per point. Counts come from
``result.counts`` (which include the evaluations of :class:`~tilted.inference.GaussianSoftValue`).

Each engine declares the process family it applies to: ``"gaussian"``, ``"masked"`` or ``"both"``.
"""

from __future__ import annotations

import math
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import torch

from benchmarks.tasks import Task
from tilted.inference import (
    DPS,
    MPGD,
    SMC,
    SVDD,
    BeamSearch,
    BestOfN,
    FreeDoM,
    GaussianSoftValue,
    Importance,
    LearnedSoftValue,
    NestedIS,
    TaylorGuidance,
    Twist,
)
from tilted.tempering import Adaptive, Exponential

F64 = torch.float64


@dataclass(frozen=True)
class Engine:
    """A named engine configuration. ``build(task, N, R)`` returns an SMC-like engine (or None: ancestral)."""

    name: str
    description: str
    build: Callable[[Task, int, int], SMC] | None
    oracle: bool = False
    #: "gaussian", "masked" or "both": the process family the engine runs
    family: str = "both"
    #: "sample": one draw from the run's (weighted) particles; "first": the first particle (beam search's best)
    pick: str = "sample"
    #: unweighted (approximate) engine: no log Ẑ, no resampling
    approximate: bool = False


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
    proposal = "prior" if task.discrete else "gradient"  # the Taylor proposal differentiates rewards, not twists
    return SMC(task.model, n, num_runs=r, potential=Twist(task.twist), proposal=proposal, progress=False)


def _gauss(proposal: str) -> Callable[[Task, int, int], SMC]:
    def build(task: Task, n: int, r: int) -> SMC:
        covariance = "full" if task.dim <= 16 else "scalar"  # d Jacobian rows, or one Hutchinson probe
        potential = GaussianSoftValue(task.model, num_draws=8, covariance=covariance)  # seeded in run()
        return SMC(task.model, n, num_runs=r, potential=potential, proposal=proposal, progress=False)

    return build


#: pretrained chains and Adam steps of the learned soft value (the suite sets them from its settings)
LEARNED = {"num_chains": 16384, "steps": 3000}
_FITTED: dict[tuple, LearnedSoftValue] = {}


def learned_value(task: Task) -> LearnedSoftValue:
    """The task's :class:`LearnedSoftValue`, fitted on first use in this process (seed from the task's name)."""
    key = (task.name, task.process.num_steps, *LEARNED.values())
    if key not in _FITTED:
        seed = zlib.crc32(f"learned-{task.name}".encode())
        _FITTED[key] = LearnedSoftValue.fit(task.model, seed=seed, progress=False, **LEARNED)
    return _FITTED[key]


def _learned(task: Task, n: int, r: int) -> SMC:
    return SMC(task.model, n, num_runs=r, potential=learned_value(task), proposal="gradient", progress=False)


def _search(cls, **options) -> Callable[[Task, int, int], SMC]:
    """A search engine with particles × candidates = n (square split for nested IS and beam search)."""

    def build(task: Task, n: int, r: int):
        if cls in (SVDD, BestOfN):
            return cls(task.model, 1, num_candidates=n, num_runs=r, progress=False, **options)
        root = math.isqrt(n)
        return cls(task.model, root, num_candidates=n // root, num_runs=r, progress=False, **options)

    return build


def _guide(cls, **options) -> Callable[[Task, int, int], SMC]:
    return lambda task, n, r: cls(task.model, 1, num_runs=r, progress=False, **options)


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
    ),
    Engine(
        "smc-bootstrap",
        "SMC, prior proposal, Tweedie potential r(x̂₀)/α (masked: soft value of 4 fills), λ ≡ 1, systematic, ESS < N/2",
        _smc(),
    ),
    Engine(
        "smc-gradient",
        "SMC, gradient proposal N(μ + σ²∇ψ, σ²I) (masked: the Taylor tilt of the categoricals), λ ≡ 1",
        _smc(proposal="gradient"),
    ),
    Engine("smc-argmax", "masked SMC, prior proposal, potential r(argmax x̂₀)/α", _smc(fill="argmax"), family="masked"),
    Engine(
        "smc-gradient-argmax",
        "masked SMC, Taylor proposal, potential r(argmax x̂₀)/α",
        _smc(proposal="gradient", fill="argmax"),
        family="masked",
    ),
    Engine(
        "smc-gauss",
        "SMC, prior proposal, `GaussianSoftValue` potential: soft value under N(x̂₀, Σ_k), Σ_k by second-order "
        "Tweedie (exact Jacobian for d ≤ 16, else the scalar Hutchinson estimate), M = 8 draws",
        _gauss("prior"),
        family="gaussian",
    ),
    Engine(
        "smc-gauss-gradient",
        "as `smc-gauss`, gradient proposal with drift ∇ψ through x̂₀ (L held fixed)",
        _gauss("gradient"),
        family="gaussian",
    ),
    Engine(
        "smc-learned",
        "SMC, gradient proposal, `LearnedSoftValue` potential: an MLP fitted to the soft value by Monte-Carlo "
        "regression on 16,384 pretrained chains (once per task; its denoiser calls are shared by every output point "
        "of the run and counted in)",
        _learned,
        family="gaussian",
    ),
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
        family="gaussian",
    ),
    Engine(
        "oracle-twist",
        "SMC with the exact soft value ψ_k as potential and the gradient proposal N(μ + σ²∇ψ, σ²I) (masked: prior "
        "proposal) (an oracle, unavailable in practice: ring, linear-Gaussian and discrete tasks)",
        _oracle,
        oracle=True,
    ),
    Engine(
        "oracle-twist-prior",
        "`oracle-twist` with the prior proposal: what a perfect value alone gives bootstrap SMC",
        lambda task, n, r: SMC(task.model, n, num_runs=r, potential=Twist(task.twist), progress=False),
        oracle=True,
        family="gaussian",
    ),
    Engine(
        "smc-bootstrap-2x",
        "`smc-bootstrap` with 2N particles: the denoiser budget of `smc-gauss` (not eligible for the N = 16 verdict)",
        lambda task, n, r: SMC(task.model, 2 * n, num_runs=r, progress=False),
        family="gaussian",
    ),
    Engine("nested-is", "nested importance sampling, 4 particles × 4 candidates (consistent)", _search(NestedIS)),
    Engine(
        "best-of-N",
        "`BestOfN`: the largest-reward final sample of N pretrained chains",
        _search(BestOfN),
        approximate=True,
    ),
    Engine(
        "svdd",
        "SVDD value decoding: 1 particle, 16 candidates per step, soft selection ∝ exp(ψ̂) (α of the model)",
        _search(SVDD),
        approximate=True,
    ),
    Engine(
        "svdd-greedy",
        "SVDD, greedy selection (α = 0)",
        _search(SVDD, temperature=0),
        approximate=True,
    ),
    Engine(
        "beam",
        "beam search, 4 beams × 4 candidates, the best beam",
        _search(BeamSearch),
        pick="first",
        approximate=True,
    ),
    Engine("dps", "DPS, ζ = 1 (one guided chain per point)", _guide(DPS), family="gaussian", approximate=True),
    Engine("mpgd", "MPGD, ζ = 1 (one guided chain per point)", _guide(MPGD), family="gaussian", approximate=True),
    Engine("freedom", "FreeDoM, defaults (time travel)", _guide(FreeDoM), family="gaussian", approximate=True),
    Engine(
        "taylor-guidance",
        "TaylorGuidance, ζ = 1 (masked: one Taylor-tilted chain per point)",
        _guide(TaylorGuidance),
        family="masked",
        approximate=True,
    ),
)

ENGINE_NAMES = tuple(e.name for e in ENGINES)


def get(name: str) -> Engine:
    for engine in ENGINES:
        if engine.name == name:
            return engine
    raise KeyError(f"unknown engine {name!r}; choose from {ENGINE_NAMES}")


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
    setup: dict | None = None  # a one-off cost shared by every run (a learned value's training record)


def run(engine: Engine, task: Task, num_particles: int, num_runs: int, seed: int, keep_particles: bool) -> dict:
    """Run ``engine`` on ``task``; return its :class:`Output`."""
    flat = lambda t: t.reshape(t.shape[: t.ndim - len(task.process.event_shape)] + (-1,)).to(F64)  # noqa: E731
    if engine.build is None:
        n = num_particles if keep_particles else 1
        gen = torch.Generator().manual_seed(seed)
        start = time.perf_counter()
        x = flat(task.process.sample((num_runs, n), generator=gen))
        seconds = time.perf_counter() - start
        counts = {"denoiser_calls": num_runs * n * task.process.num_steps, "reward_calls": 0, "gradient_evaluations": 0}
        uniform = torch.zeros(num_runs, n, dtype=F64) if keep_particles else None
        return Output(x[:, 0], seconds, counts, None, x if keep_particles else None, uniform)
    smc = engine.build(task, num_particles, num_runs)
    potential = getattr(smc, "potential", None)
    if isinstance(potential, GaussianSoftValue):  # its draws ε_m, from the run's seed
        potential.generator = torch.Generator().manual_seed(seed + 2)
    start = time.perf_counter()
    result = smc.run(seed=seed)
    seconds = time.perf_counter() - start
    x = result.particles["x"]
    points = flat(x[:, 0] if engine.pick == "first" else result.sample(1, seed=seed + 1)["x"][:, 0])
    counts = result.counts.as_dict()
    if engine.approximate:
        return Output(points, seconds, counts)
    trace = result.trace
    lambdas = trace.lambdas[:, 0].mean(-1) if trace.lambdas.shape[1] else None
    setup = potential.training if isinstance(potential, LearnedSoftValue) else None
    return Output(
        points,
        seconds,
        counts,
        result.log_evidence.to(F64),
        flat(x) if keep_particles else None,
        result.log_weights.to(F64) if keep_particles else None,
        trace.resampled.sum(0).to(F64),
        lambdas,
        setup,
    )


def same_draws(task: Task, first: str, second: str, num_runs: int = 4, seed: int = 0) -> bool:
    """Whether two engines return identical particles and weights from the same seed (a small check)."""
    a = get(first).build(task, 16, num_runs).run(seed=seed)
    b = get(second).build(task, 16, num_runs).run(seed=seed)
    return torch.equal(a.particles["x"], b.particles["x"]) and torch.equal(a.log_weights, b.log_weights)
