"""Evolutionary search (EvoSearch): an anytime optimiser over initial noises and intermediate states.

:class:`EvolutionarySearch` (He et al. 2025, "Scaling image and video generation via test-time
evolutionary search") evolves a population of chain states — initial noises x_K and/or states at
chosen intermediate levels — by elitism, selection and a mutation that re-noises a state within the
process's own law, and regenerates each child to x_0 with the pretrained kernel. It is *anytime*: with
a budget, generations continue until the next would overrun it. Its bandit counterpart over the
injected noise is :class:`~tilted.inference.bandit.NoiseSearch`.

It is a derivative-free *optimiser* of the value ψ(x_0) = Σ_j r_j(x_0)/α_j (or Σ_j r_j with
``temperature=0``; :mod:`tilted.inference.values`) over the outputs of a pretrained chain; it does not
sample the tilted target p_θ(x_0) exp(ψ(x_0))/Z (README, Guarantees): results carry uniform ``log_weights``,
NaN ``log_evidence`` and the exact rewards of the returned x_0, as :class:`~tilted.inference.BestOfN`.

Counting follows :class:`~tilted.inference.result.Counts`: one denoiser call per particle evaluated at a
level k > 0, one reward call per factor per particle (:mod:`tilted.inference.budget`). It runs Gaussian
paths (:class:`~tilted.distributions.GaussianDiffusion`, :class:`~tilted.distributions.FlowMatching`)
and masked diffusion (:class:`~tilted.distributions.MaskedDiffusion`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from tilted._progress import progress_bar
from tilted._random import Seed, as_generator
from tilted.distributions.gaussian import GaussianPath
from tilted.distributions.masked import MaskedDiffusion
from tilted.errors import ModelError
from tilted.inference.budget import Budget, BudgetError, as_budget
from tilted.inference.result import Counts, Result, StepInfo, collect
from tilted.inference.values import Values
from tilted.inference.walk import fraction, non_negative, positive_int
from tilted.plan import Plan, read_plan

F64 = torch.float64
SELECTIONS = ("tournament", "softmax")


# -- mutations -----------------------------------------------------------------------------------
def renoise(x: torch.Tensor, beta: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """x' = √(1 − β²)·x + β·ε, ε ~ N(0, I): keeps N(0, I) exactly (the initial-noise mutation).

    If x ~ N(0, I) then x' is Gaussian with mean 0 and covariance (1 − β²) I + β² I = I, and
    Cov(x, x') = √(1 − β²) I: β = 1 is a fresh draw, small β a local move.
    """
    eps = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    return math.sqrt(1 - beta**2) * x + beta * eps


def renoise_path(process: GaussianPath, x: torch.Tensor, x0: torch.Tensor, k: int, beta: float, generator=None):
    """Mutate x_k on a Gaussian path within the forward law q(x_k | x_0) = N(a_k x_0, s_k² I) of its own x_0.

    With ε_k = (x_k − a_k x_0)/s_k, the member's noise at level k relative to its outcome,

        x_k' = a_k x_0 + s_k (√(1 − β²) ε_k + β ξ),    ξ ~ N(0, I).

    If ε_k ~ N(0, I) given x_0 — the pair (x_0, x_k) follows the forward joint law, which a stochastic
    chain with an exact denoiser gives — then so does ε_k' (the :func:`renoise` identity), so x_k' | x_0
    ~ q(x_k | x_0) and x_k' has the marginal p_k of level k. Otherwise (η = 0, a learned denoiser)
    this is only approximately so. Level K (x_K ~ N(0, I) by construction) uses :func:`renoise`.
    """
    if k == process.num_steps:
        return renoise(x, beta, generator)
    a, s = float(process.signal[k]), float(process.noise[k])
    eps = (x - a * x0) / s
    return a * x0 + s * renoise(eps, beta, generator)


def remask(process: MaskedDiffusion, x: torch.Tensor, x0: torch.Tensor, k: int, beta: float, generator=None):
    """Mutate x_k of a masked model within the forward law q(x_k | x_0): each token of x_0 masked w.p. 1 − α_k.

    Each position's mask bit is redrawn with probability β from Bernoulli(1 − α_k) (kept otherwise), so
    a visible token is re-masked w.p. β(1 − α_k) and a masked position revealed (as its x_0 token) w.p.
    βα_k. This Markov move leaves Bernoulli(1 − α_k) invariant position by position, so if x_k | x_0
    follows the forward law (it does for the pretrained chain) x_k' | x_0 does too, and x_k' is in the
    support of level k (visible tokens agree with x_0, which they must). β = 1: a fresh forward draw
    from x_0. Draws (2, *x.shape) uniforms.
    """
    u = torch.rand((2,) + x.shape, generator=generator, dtype=F64, device=x.device)
    masked = x == process.mask_id
    redraw = u[0] < beta
    new_mask = u[1] < 1 - float(process.alphas[k])
    masked = torch.where(redraw, new_mask, masked)
    return torch.where(masked, torch.full_like(x, process.mask_id), x0)


# -- shared pieces -------------------------------------------------------------------------------
def gather_members(t: torch.Tensor | None, index: torch.Tensor, dim: int = 0) -> torch.Tensor | None:
    """``t`` of shape (..., R, C, *rest) with (R, C) at ``dim``, at members ``index`` (R, n): (..., R, n, *rest)."""
    if t is None:
        return None
    idx = index.reshape((1,) * dim + index.shape + (1,) * (t.ndim - dim - 2))
    idx = idx.expand(t.shape[:dim] + index.shape + t.shape[dim + 2 :])
    return t.gather(dim + 1, idx)


def descend(values: Values, x: torch.Tensor, k: int, generator=None, record: Sequence[int] = ()):
    """Run the pretrained chain from states x at level k to x_0 (one denoiser call per particle and level).

    Returns x_0 and the states at the levels of ``record`` (≤ k) passed on the way. Consumes the
    generator as ``process.sample`` does from level k.
    """
    process = values.plan.process
    states = {}
    for level in range(k, 0, -1):
        if level in record:
            states[level] = x
        x0 = values.predict(x, level)
        x = process.draw_transition(x, level, generator, prediction=x0)
    return x, states


def merge_best(archive, new, num: int):
    """The ``num`` best distinct x_0 of ``archive`` and ``new`` (each (x (R, C, *E), rewards (F, R, C), ψ (R, C))).

    Sorted by ψ, best first (stable: ties keep the earlier entry, the archive's first). An x_0 equal
    to a better (or earlier) one is a duplicate; duplicates fill the last places only when fewer than
    ``num`` distinct states exist. Returns the merged triple and the number of distinct entries (R,).
    """
    if archive is not None:
        new = tuple(torch.cat([a, b], dim) for a, b, dim in zip(archive, new, (1, 2, 1), strict=True))
    x, rewards, score = new
    R, C = score.shape
    order = torch.sort(score, dim=-1, descending=True, stable=True).indices
    x, rewards, score = gather_members(x, order), gather_members(rewards, order, 1), gather_members(score, order)
    flat = x.reshape(R, C, -1)
    same = (flat[:, :, None] == flat[:, None, :]).all(-1)
    earlier = torch.ones(C, C, dtype=torch.bool, device=x.device).tril(-1)
    dup = (same & earlier).any(-1)
    keep = torch.sort(dup.to(torch.int8), dim=-1, stable=True).indices[:, :num]
    merged = gather_members(x, keep), gather_members(rewards, keep, 1), gather_members(score, keep)
    return merged, (~dup).sum(-1).clamp_max(num)


def _check_process(engine, plan: Plan) -> None:
    if not isinstance(plan.process, (GaussianPath, MaskedDiffusion)):
        raise ModelError(
            f"{type(engine).__name__} runs GaussianPath (GaussianDiffusion, FlowMatching) and MaskedDiffusion "
            f"processes, got {type(plan.process).__name__}"
        )


def _config_values(values: torch.Tensor, batched: bool):
    return values.tolist() if batched else float(values[0])


# -- evolutionary search ---------------------------------------------------------------------------
def default_schedule(num_steps: int, masked: bool) -> tuple[int, ...]:
    """The quartile schedule (K, ⌈3K/4⌉, ⌈K/2⌉, ⌈K/4⌉), without level K for masked models, repeats dropped."""
    K = num_steps
    levels = (K, math.ceil(3 * K / 4), math.ceil(K / 2), math.ceil(K / 4))
    levels = [lv for lv in levels if not (masked and lv == K)] or [K - 1]
    return tuple(dict.fromkeys(levels))


@dataclass(frozen=True)
class Population:
    """R runs × P members: states at the evolved levels, final x_0, exact rewards and values."""

    states: dict[int, torch.Tensor]  # level → (R, P, *E)
    x0: torch.Tensor  # (R, P, *E)
    rewards: torch.Tensor  # (F, R, P)
    score: torch.Tensor  # (R, P) float64


class EvolutionarySearch:
    """Evolutionary search over the chain's states (EvoSearch; He et al. 2025): an anytime optimiser of ψ.

        Update rule (per run; P = ``population_size``, E = ``num_elites``, β = ``mutation``):

        - **generation 0**: P initial noises x_K ~ process.draw_initial, each run through the pretrained
          chain to x_0 (all members batched; the chain's states at the evolved levels are kept), scored by
          the exact ψ(x_0) = Σ_j r_j(x_0)/α_j;
        - **generation g ≥ 1**, evolving at level ℓ_g (the schedule ``levels``): the E members of highest ψ
          are kept unchanged (elitism; they are not re-evaluated); P − E parents are selected from the
          whole population, with replacement, by ``selection="tournament"`` (the best of
          ``tournament_size`` members drawn uniformly) or ``"softmax"`` (P(i) ∝ exp(ψ_i / τ), τ =
          ``selection_temperature``); each parent's state at level ℓ_g is mutated —

          * x_K of a Gaussian path: x_K' = √(1 − β²) x_K + β ε (keeps N(0, I) exactly, :func:`renoise`);
          * x_ℓ of a Gaussian path, ℓ < K: x_ℓ' = a_ℓ x_0 + s_ℓ (√(1 − β²) ε_ℓ + β ξ) with ε_ℓ = (x_ℓ −
            a_ℓ x_0)/s_ℓ, a re-noising within the forward law q(x_ℓ | x_0) of the parent's own x_0
            (:func:`renoise_path`);
          * x_ℓ of a masked model: each position's mask bit is redrawn w.p. β from Bernoulli(1 − α_ℓ),
            revealed positions taking the parent's x_0 token (:func:`remask`): the forward law again;

          and the child x_ℓ' is regenerated to x_0 by the pretrained kernel from level ℓ_g (recording its
          states at the evolved levels below ℓ_g; above ℓ_g it inherits the parent's) and scored exactly.
          The new population is the elites and the P − E children.

        Schedule: ``levels`` is a non-increasing sequence ℓ_1 ≥ ℓ_2 ≥ … of levels in 1..K; generation g
        evolves at ℓ_g while g ≤ len(levels) and at the last entry afterwards (members keep their states
        at every scheduled level). A lower level mutates less of the sample (a masked model keeps α_ℓ of
        the tokens visible; a Gaussian path's x_ℓ already carries a_ℓ x_0) and costs ℓ rather than K
        denoiser calls per child. Default: the quartile schedule (K, ⌈3K/4⌉, ⌈K/2⌉, ⌈K/4⌉) — global
        exploration of initial noises first (EvoSearch's first stage), then ever more local refinement —
        with level K left out for masked models, whose x_K is all masks (a point mass with nothing to
        mutate): only intermediate states can be evolved there, and level K is refused. ``levels=[K]``
        is pure initial-noise evolution; it suits deterministic chains (η = 0), where x_0 is a function
        of x_K, but with a stochastic chain (η > 0) x_0 depends little on x_K. Measured on the tests' toy
        (2D Gaussian data, K = 8, reward −|x − (3, 3)|², P = 16, 16 runs of 64·K denoiser calls each), the
        mean best reward with ``levels=[K]`` is −9.2 (DDPM η = 1), −6.7 (DDIM η = 0), −7.5 (flow η = 0.7),
        no better than best-of-64's −9.0, −6.8, −7.7; the default schedule reaches −5.9, −3.9, −4.6.

        Returned: the N = ``num_particles`` best *distinct* x_0 evaluated in any generation (best first);
        if fewer than N distinct states were found (a small discrete space), the last places repeat
        earlier ones (``config["num_distinct"]``). After a run, ``engine.population`` holds the last
    :class:`Population` (states at the scheduled levels, x_0, rewards, ψ).

        Cost, summed over R runs: generation 0 makes R·P·K denoiser calls and R·P·F reward calls (F
        factors); generation g makes R·(P − E)·ℓ_g denoiser calls and R·(P − E)·F reward calls.

        Notes
        -----
        Guaranteed: with E ≥ 1 the population's best ψ (``config["best_psi"]``, one entry per generation,
        generation 0 first; ``config["mean_psi"]`` the population's mean) never decreases — elitism — and
        it is the best ψ found, that of the first returned particle (with E = 0 it can fall, while the
        returned particles remain the best found in any generation); every returned x_0 is
        a pretrained chain's output from a (mutated) state, with its exact rewards. The mutations keep the
        law of the mutated state (N(0, I) at level K exactly; p_ℓ at intermediate levels when (x_0, x_ℓ)
        follows the forward joint law), so without selection the population would stay pretrained draws.

        Not guaranteed: this is an optimiser, not a sampler of the tilted target — selection concentrates
        the population on high ψ with no weight correcting for it, and diversity shrinks with the
        generations. It is not guaranteed to find the global maximum, nor to beat best-of-N at equal
        compute (it does on smooth toy rewards; tests/test_evolution.py).

        Parameters
        ----------
        model
            A Pyro model with one sequential site and ``tilted.factor`` statements.
        num_particles
            N ≤ P, the best distinct x_0 returned per run.
        population_size
            P ≥ 2 (default 32).
        num_elites
            E in [0, P − 1], members kept unchanged (default max(1, P // 8)).
        selection, tournament_size, selection_temperature
            Parent selection (above): ``"tournament"`` (default, size 2) or ``"softmax"`` with τ > 0
            (default 1, in units of ψ).
        mutation
            β in (0, 1] (default 0.5): the share of fresh noise (Gaussian) or the probability of
            redrawing a mask bit (masked).
        levels
            The evolution schedule (above).
        num_generations
            Generations after generation 0 (at most, with a budget). Default: 10 without a budget, as many
            as the budget allows with one; 0 is best-of-P with the N best distinct returned.
        temperature
            α in ψ: ``None`` uses every factor's own; a number ≥ 0 replaces them all (0: ψ = Σ_j r_j).
            Only ranks (and softmax selection) depend on it.
        budget
            Denoiser calls (int) or a :class:`~tilted.inference.budget.Budget`, summed over runs (anytime:
            generations stop before the first that would overrun it; a budget short of generation 0
            raises :class:`~tilted.inference.budget.BudgetError`).
        num_runs, batch_size, progress
            As for :class:`~tilted.inference.walk.ChainEngine` (the progress bar counts generations).
    """

    def __init__(
        self,
        model,
        num_particles: int,
        *,
        population_size: int = 32,
        num_elites: int | None = None,
        selection: str = "tournament",
        tournament_size: int = 2,
        selection_temperature: float = 1.0,
        mutation: float = 0.5,
        levels: Sequence[int] | None = None,
        num_generations: int | None = None,
        temperature: float | None = None,
        budget: int | Budget | dict | None = None,
        num_runs: int | None = None,
        batch_size: int | None = None,
        progress: bool | None = None,
    ):
        positive_int("num_particles", num_particles)
        positive_int("population_size", population_size)
        positive_int("num_runs", num_runs, optional=True)
        positive_int("batch_size", batch_size, optional=True)
        positive_int("tournament_size", tournament_size)
        if population_size < 2:
            raise ModelError(f"population_size must be at least 2, got {population_size}")
        if num_particles > population_size:
            raise ModelError(f"num_particles={num_particles} exceeds population_size={population_size}")
        if num_elites is None:
            num_elites = max(1, population_size // 8)
        if isinstance(num_elites, bool) or not isinstance(num_elites, int) or not 0 <= num_elites < population_size:
            raise ModelError(f"num_elites must be an integer in [0, population_size − 1], got {num_elites!r}")
        if selection not in SELECTIONS:
            raise ModelError(f"selection must be one of {SELECTIONS}, got {selection!r}")
        tau = non_negative("selection_temperature", selection_temperature)
        if tau == 0:
            raise ModelError("selection_temperature must be > 0 (use selection='tournament' for rank selection)")
        if num_generations is not None and (
            isinstance(num_generations, bool) or not isinstance(num_generations, int) or num_generations < 0
        ):
            raise ModelError(f"num_generations must be an integer ≥ 0 or None, got {num_generations!r}")
        if levels is not None:
            if isinstance(levels, int | str) or not len(levels):
                raise ModelError(f"levels must be a non-empty sequence of levels, got {levels!r}")
            levels = tuple(levels)
            for level in levels:
                positive_int("levels entries", level)
            if any(b > a for a, b in zip(levels, levels[1:], strict=False)):
                raise ModelError(f"levels must not increase (an evolution schedule goes towards x_0), got {levels}")
        self.model = model
        self.num_particles = num_particles
        self.population_size = population_size
        self.num_elites = num_elites
        self.selection = selection
        self.tournament_size = tournament_size
        self.selection_temperature = tau
        self.mutation = fraction("mutation", mutation)
        self.levels = levels
        self.num_generations = num_generations
        self.temperature = None if temperature is None else non_negative("temperature", temperature)
        self.budget = as_budget(budget)
        self.num_runs = num_runs
        self.batch_size = batch_size
        self.progress = progress

    # -- pieces ------------------------------------------------------------------------------
    def schedule(self, plan: Plan) -> tuple[int, ...]:
        """The evolution schedule ℓ_1 ≥ ℓ_2 ≥ … (class docstring), checked against the process."""
        process = plan.process
        K = process.num_steps
        masked = isinstance(process, MaskedDiffusion)
        if masked and K == 1:
            raise ModelError("a masked model with K = 1 step has no intermediate level to evolve; use K ≥ 2")
        levels = self.levels or default_schedule(K, masked)
        if max(levels) > K:
            raise ModelError(f"levels must be in 1..{K} (the process has K = {K} steps), got {levels}")
        if masked and K in levels:
            raise ModelError(
                "a masked model's x_K is all masks (nothing to mutate): evolve intermediate levels < K, "
                f"e.g. levels=[{math.ceil(K / 2)}]"
            )
        return levels

    def level(self, levels: tuple[int, ...], generation: int) -> int:
        """ℓ_g for generation g ≥ 1."""
        return levels[min(generation, len(levels)) - 1]

    def generation_cost(self, plan: Plan, runs: int, level: int | None) -> Counts:
        """Calls of generation 0 (``level=None``) or of a generation evolving at ``level``, over ``runs`` runs."""
        F = len(plan.factors)
        n = runs * (self.population_size if level is None else self.population_size - self.num_elites)
        steps = plan.process.num_steps if level is None else level
        return Counts(denoiser_calls=n * steps, reward_calls=n * F)

    def select(self, score: torch.Tensor, num: int, generator=None) -> torch.Tensor:
        """Parent indices (R, num) from values (R, P): tournament winners or softmax(ψ/τ) draws."""
        R, P = score.shape
        if self.selection == "tournament":
            entrants = torch.randint(P, (R, num, self.tournament_size), generator=generator, device=score.device)
            values = score.gather(1, entrants.reshape(R, -1)).reshape(entrants.shape)
            return entrants.gather(2, values.argmax(-1, keepdim=True)).squeeze(-1)
        probs = torch.softmax(score.to(F64) / self.selection_temperature, -1)
        return torch.multinomial(probs, num, replacement=True, generator=generator)

    def mutate(self, process, x: torch.Tensor, x0: torch.Tensor, level: int, generator=None) -> torch.Tensor:
        """The mutation of states x at ``level`` whose chains ended at x0 (class docstring)."""
        if isinstance(process, MaskedDiffusion):
            return remask(process, x, x0, level, self.mutation, generator)
        return renoise_path(process, x, x0, level, self.mutation, generator)

    def evaluate(self, values: Values, x: torch.Tensor, level: int, record, generator=None) -> Population:
        """Regenerate states x at ``level`` to x_0 and score them exactly."""
        x0, states = descend(values, x, level, generator, record)
        rewards = values.rewards(x0)
        return Population(states, x0, rewards, values.score(rewards))

    # -- the loop ----------------------------------------------------------------------------
    def run(self, *args, seed: Seed = None, **kwargs) -> Result:
        """Run on ``model(*args, **kwargs)`` with an explicit seed or generator; return a :class:`Result`."""
        plan = read_plan(self.model, *args, **kwargs)
        _check_process(self, plan)
        levels = self.schedule(plan)
        record = tuple(sorted(set(levels), reverse=True))
        process, K = plan.process, plan.process.num_steps
        generator = as_generator(seed, process.device)
        R, P, E = plan.runs(self.num_runs), self.population_size, self.num_elites
        counts = self.counts = Counts()
        values = Values(plan, counts, self.batch_size, self.temperature, generator)
        budget = self.budget
        first = self.generation_cost(plan, R, None)
        if budget is not None and not budget.allows(counts, first):
            raise BudgetError(
                f"the budget {budget.as_dict()} does not cover generation 0 of {type(self).__name__} "
                f"({first.as_dict()} for {R} run(s) of {P} members); raise the budget or lower population_size"
            )
        limit = self.num_generations
        if limit is None:
            limit = math.inf if budget is not None else 10
        if budget is not None and limit == math.inf:
            later = self.generation_cost(plan, R, levels[-1])
            if not any(getattr(later, n) > 0 and getattr(budget, n) is not None for n in vars(budget)):
                raise BudgetError(
                    f"a generation costs nothing that the budget {budget.as_dict()} limits (cost {later.as_dict()}); "
                    "limit another count or give num_generations"
                )

        total = None if limit == math.inf else limit + 1
        bar = progress_bar(progress=self.progress, total=total, desc=type(self).__name__, leave=False)
        x = process.draw_initial((R, P), generator)
        pop = self.evaluate(values, x, K, record, generator)
        archive, distinct = merge_best(None, (pop.x0, pop.rewards, pop.score), self.num_particles)
        best, mean = [pop.score.amax(-1)], [pop.score.mean(-1)]
        bar.update()
        generation = 0
        while generation < limit:
            level = self.level(levels, generation + 1)
            if budget is not None and not budget.allows(counts, self.generation_cost(plan, R, level)):
                break
            generation += 1
            order = torch.sort(pop.score, dim=-1, descending=True, stable=True).indices
            elites = order[:, :E]
            parents = self.select(pop.score, P - E, generator)
            start = self.mutate(
                process, gather_members(pop.states[level], parents), gather_members(pop.x0, parents), level, generator
            )
            kids = self.evaluate(values, start, level, [lv for lv in record if lv < level], generator)
            states = {}
            for lv, s in pop.states.items():
                child = start if lv == level else kids.states[lv] if lv < level else gather_members(s, parents)
                states[lv] = torch.cat([gather_members(s, elites), child], 1)
            pop = Population(
                states,
                torch.cat([gather_members(pop.x0, elites), kids.x0], 1),
                torch.cat([gather_members(pop.rewards, elites, 1), kids.rewards], 2),
                torch.cat([gather_members(pop.score, elites), kids.score], 1),
            )
            archive, distinct = merge_best(archive, (kids.x0, kids.rewards, kids.score), self.num_particles)
            best.append(pop.score.amax(-1))
            mean.append(pop.score.mean(-1))
            bar.update()
        bar.close()
        self.population = pop

        x0, rewards, _ = archive
        N = self.num_particles
        batched = self.num_runs is not None or plan.grouped
        device = x0.device
        info = StepInfo(
            ess=torch.full((R,), float(N), dtype=F64, device=device),
            resampled=torch.zeros(R, dtype=torch.bool, device=device),
            lambdas=torch.zeros(len(plan.factors), R, dtype=F64, device=device),
            log_evidence_increment=torch.full((R,), math.nan, dtype=F64, device=device),
            ancestors=torch.arange(N, device=device).expand(R, N).clone(),
        )
        result = collect(
            plan,
            x0,
            rewards,
            torch.full((R, N), -math.log(N), dtype=F64, device=x0.device),
            torch.full((R,), math.nan, dtype=F64, device=x0.device),
            [info],
            counts,
            self.config(),
            batched=self.num_runs is not None,
        )
        result.trace = None  # generations are not chain steps: the history is in the config
        result.config.update(
            generations=generation,
            levels=[self.level(levels, g) for g in range(1, generation + 1)],
            best_psi=[_config_values(b, batched) for b in best],
            mean_psi=[_config_values(m, batched) for m in mean],
            num_distinct=_config_values(distinct, batched),
            seed=seed if isinstance(seed, int) else None,
        )
        return result

    def config(self) -> dict:
        """The engine's settings, for reports and reproducibility."""
        return {
            "engine": type(self).__name__,
            "num_particles": self.num_particles,
            "num_runs": self.num_runs,
            "population_size": self.population_size,
            "num_elites": self.num_elites,
            "selection": self.selection,
            "tournament_size": self.tournament_size,
            "selection_temperature": self.selection_temperature,
            "mutation": self.mutation,
            "schedule": None if self.levels is None else list(self.levels),
            "num_generations": self.num_generations,
            "temperature": self.temperature,
            "budget": None if self.budget is None else self.budget.as_dict(),
        }


# -- bandit noise search ---------------------------------------------------------------------------
