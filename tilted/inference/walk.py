"""The loop shared by guidance and search engines: walk the chain with unweighted particles.

These engines are approximate samplers or optimisers (README, Guarantees): they move particles x_K → x_0
by a modified kernel (a guided step, a choice among candidates) and attach no importance weight
that would correct for the modification. Their :class:`~tilted.inference.Result` therefore has

- ``log_weights``: uniform, −log N. They are *not* importance weights: they only say that every
  returned particle counts once (``result.sample`` and ``result.mean`` then treat the particles as
  the engine's sample);
- ``log_evidence``: NaN. These engines estimate no normalising constant, and a number here would be
  mistaken for log Ẑ;
- ``rewards``: the exact r_j(x_0) of the returned particles;
- a trace with one row per step: ``ess`` = N (of the uniform weights), ``lambdas`` zeros (these
  engines use no tempering schedule), ``log_evidence_increments`` NaN, ``resampled`` and
  ``ancestors`` recording selections across particles (beam search) and the identity otherwise;
- ``counts`` of denoiser calls, reward calls and gradient evaluations (:mod:`tilted.inference.values`).

An engine subclasses :class:`ChainEngine` and implements :meth:`ChainEngine.step` (and may override
:meth:`ChainEngine.init`); :meth:`ChainEngine.run` only composes them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from tilted._progress import progress_bar
from tilted._random import Seed, as_generator
from tilted.distributions.gaussian import GaussianPath
from tilted.distributions.masked import MaskedDiffusion
from tilted.errors import ModelError
from tilted.inference.budget import as_budget, sized
from tilted.inference.result import Counts, Result, StepInfo, collect
from tilted.inference.values import Values
from tilted.plan import Plan, read_plan


@dataclass(frozen=True)
class Walk:
    """R runs × N particles at level ``level``: states x (R, N, *E), and what is known about them."""

    level: int
    x: torch.Tensor
    x0: torch.Tensor | None = None  # x̂_0(x), reused by the next step when known
    rewards: torch.Tensor | None = None  # the exact r_j(x_0), (F, R, N), when known at level 0


def positive_int(name: str, value, optional: bool = False) -> None:
    """Raise :class:`ModelError` unless ``value`` is a positive integer (or ``None`` when optional)."""
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ModelError(f"{name} must be a positive integer{' or None' if optional else ''}, got {value!r}")


def non_negative(name: str, value) -> float:
    """``value`` as a finite float ≥ 0, or :class:`ModelError`."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ModelError(f"{name} must be a finite number ≥ 0, got {value!r}") from None
    if not (math.isfinite(out) and out >= 0):
        raise ModelError(f"{name} must be a finite number ≥ 0, got {value!r}")
    return out


def fraction(name: str, value, low_open: bool = True) -> float:
    """``value`` as a float in (0, 1] (``low_open``) or [0, 1], or :class:`ModelError`."""
    v = non_negative(name, value)
    if not (0 < v <= 1 if low_open else 0 <= v <= 1):
        raise ModelError(f"{name} must be in {'(0, 1]' if low_open else '[0, 1]'}, got {value!r}")
    return v


class ChainEngine:
    """Base of the unweighted engines (module docstring): constructor checks, the loop, the result.

    Parameters
    ----------
    model
        A Pyro model with one sequential site and ``tilted.factor`` statements.
    num_particles
        N, particles returned per run.
    num_runs
        R independent runs batched in one call; results gain a leading run dimension.
    batch_size
        Particles per denoiser/reward evaluation (bounds memory; results are unchanged).
    progress
        A progress bar: ``False`` none, ``True`` always, ``None`` once the run has lasted 2 s (:mod:`tilted._progress`).
    budget
        Denoiser calls (int) or a :class:`~tilted.inference.budget.Budget`: N becomes the largest number
        of particles whose cost (:meth:`cost`, exact) fits, capped by ``num_particles`` when both are given.
    """

    #: the temperature replacing every factor's α in the value ψ̂ (``None``: the factors' own)
    temperature: float | None = None
    #: masked models: how ψ̂ is read off x̂_0 (:mod:`tilted.inference.values`)
    fill: str = "soft"
    num_fills: int = 4
    #: the processes the engine runs
    processes: tuple[type, ...] = (GaussianPath,)

    def __init__(
        self, model, num_particles: int | None = None, *, num_runs=None, batch_size=None, progress=None, budget=None
    ):
        self.budget = as_budget(budget)
        if num_particles is None and self.budget is None:
            raise ModelError("give num_particles, or a budget= that sizes it")
        positive_int("num_particles", num_particles, optional=self.budget is not None)
        positive_int("num_runs", num_runs, optional=True)
        positive_int("batch_size", batch_size, optional=True)
        self.model = model
        self.num_particles = self._particles = num_particles
        self.num_runs = num_runs
        self.batch_size = batch_size
        self.progress = progress

    # -- the steps ----------------------------------------------------------------------------
    def check(self, plan: Plan) -> None:
        """Refuse processes the engine cannot run (:attr:`processes`)."""
        if not isinstance(plan.process, self.processes):
            names = " and ".join(p.__name__ for p in self.processes)
            raise ModelError(f"{type(self).__name__} runs {names} processes, got {type(plan.process).__name__}")

    def init(self, plan: Plan, values: Values, generator=None) -> tuple[Walk, StepInfo]:
        """x_K ~ N(0, I) for every particle of every run (drawn as the pretrained sampler draws it)."""
        R = plan.runs(self.num_runs)
        x = plan.process.draw_initial((R, self._particles), generator)
        return Walk(plan.process.num_steps, x), self.info(plan, R)

    def cost(self, plan: Plan) -> Counts:
        """Calls per particle and run (exact: ``result.counts`` = N·R·cost)."""
        raise NotImplementedError

    def _size(self, plan: Plan) -> int:
        if self.budget is None:
            return self.num_particles
        fit = sized(self.budget, self.cost(plan).scaled(plan.runs(self.num_runs)), "particle")
        return fit if self.num_particles is None else min(fit, self.num_particles)

    def _fills(self, plan: Plan) -> int:
        """Reward evaluations per value of a state: the fills of a masked model, else 1."""
        return (self.num_fills if self.fill == "soft" else 1) if isinstance(plan.process, MaskedDiffusion) else 1

    def step(self, plan: Plan, values: Values, walk: Walk, generator=None) -> tuple[Walk, StepInfo]:
        """Move every particle from level k to k − 1."""
        raise NotImplementedError

    def info(self, plan: Plan, runs: int, ancestors: torch.Tensor | None = None) -> StepInfo:
        """A trace row for unweighted particles; ``ancestors`` (R, N) when particles were selected across."""
        N, device = self._particles, plan.process.device
        identity = torch.arange(N, device=device).expand(runs, N)
        moved = torch.zeros(runs, dtype=torch.bool, device=device)
        if ancestors is not None:
            moved = (ancestors != identity).any(-1)
        return StepInfo(
            ess=torch.full((runs,), float(N), dtype=torch.float64, device=device),
            resampled=moved,
            lambdas=torch.zeros(len(plan.factors), runs, dtype=torch.float64, device=device),
            log_evidence_increment=torch.full((runs,), math.nan, dtype=torch.float64, device=device),
            ancestors=identity.clone() if ancestors is None else ancestors,
        )

    # -- the loop ----------------------------------------------------------------------------
    def run(self, *args, seed: Seed = None, **kwargs) -> Result:
        """Run on ``model(*args, **kwargs)`` with an explicit seed or generator; return a :class:`Result`."""
        plan = read_plan(self.model, *args, **kwargs)
        self.check(plan)
        self._particles = self._size(plan)
        generator = as_generator(seed, plan.process.device)
        self.counts = Counts()
        values = Values(plan, self.counts, self.batch_size, self.temperature, generator, self.fill, self.num_fills)
        walk, info = self.init(plan, values, generator)
        infos = [info]
        for _ in progress_bar(plan.process.levels, progress=self.progress, desc=type(self).__name__, leave=False):
            walk, info = self.step(plan, values, walk, generator)
            infos.append(info)
        rewards = walk.rewards if walk.rewards is not None else values.rewards(walk.x)
        R, N = walk.x.shape[:2]
        result = collect(
            plan,
            walk.x,
            rewards,
            torch.full((R, N), -math.log(N), dtype=torch.float64, device=walk.x.device),
            torch.full((R,), math.nan, dtype=torch.float64, device=walk.x.device),
            infos,
            self.counts,
            self.config(),
            batched=self.num_runs is not None,
        )
        result.config["seed"] = seed if isinstance(seed, int) else None
        return result

    def config(self) -> dict:
        """The engine's settings, for reports and reproducibility."""
        return {
            "engine": type(self).__name__,
            "num_particles": self._particles,
            "num_runs": self.num_runs,
            "budget": None if self.budget is None else self.budget.as_dict(),
        }
