"""Bandit search over the injected noise: :class:`NoiseSearch`, a sized, derivative-free optimiser.

It walks the chain once; at every stochastic step each particle draws M candidate successors from the
pretrained kernel (M candidate noises) and chooses among them by a multi-armed bandit whose arm pull
is one stochastic cheap rollout of the candidate to x_0, scored by ψ(x_0) = Σ_j r_j(x_0)/α_j. It is
*sized*: with a budget it picks the largest number of pulls (or particles) whose exact cost fits. It
does not sample the tilted target (uniform ``log_weights``, NaN ``log_evidence``, exact rewards), and
runs Gaussian paths and masked diffusion. Its population counterpart is
:class:`~tilted.inference.evolution.EvolutionarySearch`.
"""

from __future__ import annotations

import math
import warnings

import torch

from tilted.distributions.gaussian import GaussianPath, path_sigmas
from tilted.distributions.masked import MaskedDiffusion, draw_categorical
from tilted.errors import ModelError
from tilted.inference.budget import Budget, BudgetError, sized
from tilted.inference.candidates import expand, take
from tilted.inference.result import Counts
from tilted.inference.values import Values
from tilted.inference.walk import ChainEngine, Walk, fraction, non_negative, positive_int
from tilted.plan import Plan

F64 = torch.float64
POLICIES = ("ucb", "epsilon")


def coarse_levels(level: int, steps: int) -> list[int]:
    """``steps`` (at most ``level``) evenly spaced jumps from ``level`` to 0: the grid [level, …, 0]."""
    steps = min(steps, level)
    return [round(level - i * level / steps) for i in range(steps + 1)]


def jump(process, x: torch.Tensor, x0: torch.Tensor, level: int, to: int, generator=None) -> torch.Tensor:
    """One step of the pretrained sampler from ``level`` straight to ``to`` < level, with x̂_0(x) = x0.

    Gaussian paths: the process's η-step between the two levels, N(a_to x̂_0 + √(s_to² − σ²) ε̂, σ² I)
    with σ² = η² s_to² (1 − SNR_level/SNR_to) (deterministic into ᾱ_0 = 1). Masked models: each masked
    position is revealed w.p. (α_to − α_level)/(1 − α_level) with a token drawn from x̂_0 (all of them
    into level 0), visible tokens carried.
    """
    if isinstance(process, MaskedDiffusion):
        a, a_to = float(process.alphas[level]), float(process.alphas[to])
        fill = (a_to - a) / (1 - a)
        p = x0.to(F64) / x0.to(F64).sum(-1, keepdim=True)
        masked = (x == process.mask_id)[..., None]
        on_mask = torch.cat([fill * p, torch.full_like(p[..., :1], 1 - fill)], -1)
        carried = torch.cat([p, torch.zeros_like(p[..., :1])], -1)
        return draw_categorical(torch.where(masked, on_mask, carried), generator)
    grid = [to, level]
    a, a_to = float(process.signal[level]), float(process.signal[to])
    s, s_to = float(process.noise[level]), float(process.noise[to])
    sigma = float(path_sigmas(process.signal[grid], process.noise[grid], _eta(process))[1])
    eps = (x - a * x0) / s
    mean = a_to * x0 + math.sqrt(max(s_to**2 - sigma**2, 0.0)) * eps
    if sigma == 0:
        return mean
    return mean + sigma * torch.randn(mean.shape, generator=generator, dtype=mean.dtype, device=mean.device)


def _eta(process: GaussianPath) -> float:
    """The path's η (its attribute; else read off σ_K against the η = 1 variance)."""
    eta = getattr(process, "eta", None)
    if eta is not None:
        return float(eta)
    base = float(path_sigmas(process.signal, process.noise, 1.0)[-1])
    return float(process.sigmas[-1]) / base if base > 0 else 0.0


def ucb_arm(means: torch.Tensor, pulls: torch.Tensor, total: int, exploration: float) -> torch.Tensor:
    """UCB1: argmax_m  mean_m + c √(2 ln t / n_m)  (t pulls so far, every n_m ≥ 1): (R, N) arm indices."""
    return (means + exploration * torch.sqrt(2 * math.log(total) / pulls)).argmax(-1)


def epsilon_arm(means: torch.Tensor, epsilon: float, generator=None) -> torch.Tensor:
    """ε-greedy: a uniform arm w.p. ε, else the arm of best mean: (R, N). Draws (R, N) uniforms and arms."""
    shape, M = means.shape[:-1], means.shape[-1]
    explore = torch.rand(shape, generator=generator, dtype=F64, device=means.device) < epsilon
    random = torch.randint(M, shape, generator=generator, device=means.device)
    return torch.where(explore, random, means.argmax(-1))


def play(pull, num_arms: int, num_pulls: int, policy: str, exploration: float, epsilon: float, generator=None):
    """A multi-armed bandit per particle: ``num_pulls`` ≥ ``num_arms`` pulls, then the arm of best mean.

    ``pull(arms)`` evaluates arms (R, N, n) (n = num_arms for the first round, 1 afterwards) and returns
    their noisy values (R, N, n). Round 1 pulls every arm once (one batched evaluation); each later
    round pulls one arm per particle by ``policy`` (``"ucb"``: :func:`ucb_arm`; ``"epsilon"``:
    :func:`epsilon_arm`). Returns the kept arm (R, N), the mean pulled value (R, N, M) and the pull
    counts (R, N, M).
    """
    first = pull(None)
    R, N, M = first.shape
    sums, counts = first.to(F64).clone(), torch.ones_like(first, dtype=F64)
    for t in range(num_arms, num_pulls):
        means = sums / counts
        if policy == "ucb":
            arm = ucb_arm(means, counts, t, exploration)
        else:
            arm = epsilon_arm(means, epsilon, generator)
        value = pull(arm[..., None])
        sums.scatter_add_(-1, arm[..., None], value.to(F64))
        counts.scatter_add_(-1, arm[..., None], torch.ones_like(value, dtype=F64))
    means = sums / counts
    return means.argmax(-1), means, counts


class NoiseSearch(ChainEngine):
    """Bandit search over the injected noise: at every stochastic step, a bandit picks one of M candidate noises.

    Update rule at step k (x_k → x_{k-1}), for every particle independently:

    - draw M candidates c_m = μ_k + σ_k ε_m from the pretrained kernel (for a masked model, M draws of
      the unmasking categoricals; :func:`~tilted.inference.candidates.expand`) and compute each
      candidate's x̂_0(c_m) once (M denoiser calls);
    - play a bandit over the M arms with T = ``pulls_per_step`` pulls: one *pull* of arm m is one
      stochastic cheap rollout of c_m to x_0 — the pretrained sampler from level k − 1 to 0 on a
      coarse grid of min(``lookahead``, k − 1) evenly spaced jumps (:func:`coarse_levels`,
      :func:`jump`; the first jump reuses x̂_0(c_m)) — returning ψ(x_0^{rollout}) = Σ_j r_j/α_j. The
      first M pulls try every arm once; the rest follow ``policy="ucb"`` (UCB1: the arm maximising
      mean + c√(2 ln t / n_m), c = ``exploration``, t pulls so far, n_m the arm's pulls) or
      ``"epsilon"`` (ε-greedy: a uniform arm w.p. ``epsilon``, else the best mean). All particles'
      pulls of one round are one batched evaluation;
    - keep the arm of best mean pulled value: x_{k-1} = c_J, with its x̂_0 (the next step's kernel).

    A deterministic step (σ_k = 0: DDIM/ODE η = 0, the last step into ᾱ_0 = 1) has one arm and no pulls.
    The last stochastic step into level 0 has clean candidates whose value ψ(c_m) is exact: each is
    scored once and the best kept (no bandit). With M = 1 every step has one arm, nothing is pulled,
    and the engine is the pretrained sampler, draw for draw.

    One pull costs min(lookahead, k − 1) − 1 denoiser calls and F reward calls (F factors): with
    ``lookahead=1`` a pull is one jump straight to x_0 from the cached x̂_0 — for a masked model one
    fill of x̂_0 (a noisy pull, no denoiser call); for a Gaussian path into ᾱ_0 = 1 the deterministic
    Tweedie value ψ(x̂_0(c_m)) (noiseless: extra pulls then only repeat it). The default
    ``lookahead=2`` adds one stochastic intermediate jump (one denoiser call per pull). Per particle:
    K denoiser calls for the chain (one arm), plus, at each stochastic step into a level j > 0, M − 1
    for the other arms' x̂_0 and T pulls (T·(min(lookahead, j) − 1) denoiser and T·F reward calls),
    plus M·F reward calls at a stochastic last step (F at a deterministic one): :meth:`cost`.

    Notes
    -----
    The mean of an arm's pulls estimates E[ψ(x_0) | c_m] under the coarse sampler — the α → ∞ limit
    of the soft value α log E[exp(r/α) | c_m], not the soft value itself — so the bandit maximises an
    expected value, greedily, step by step. Guaranteed: every returned x_0 is a pretrained chain's
    output whose noises were chosen among pretrained draws (it stays in the model's support), with
    exact rewards; with M = 1 it is the pretrained sampler. Not guaranteed: this is an optimiser, not a
    sampler of the tilted target (no weights correct the choices), the coarse rollouts are biased
    value estimates, and the greedy per-step choice need not maximise the final ψ. Measured on the
    tests' toy (2D Gaussian data, K = 8, reward −|x − (3, 3)|², one particle per run, 16 runs of
    64·K denoiser calls, M = 4, so T = 80): mean best reward −9.6 (DDPM η = 1) and −8.6 (flow
    η = 0.7), against best-of-64's −9.0 and −7.7 — choosing among four noises per step is a weaker
    use of the calls than independent chains there; :class:`EvolutionarySearch` reaches −5.9 and −4.6.

    Parameters
    ----------
    num_particles
        N, particles (independent searches) per run; sized by ``budget`` when ``pulls_per_step`` is
        given or ``num_particles`` is ``None``.
    num_candidates
        M ≥ 1, candidate noises (arms) per particle and step (default 4).
    pulls_per_step
        T ≥ M, pulls per particle and stochastic step. Default: 2M without a budget; with a budget,
        the largest T whose exact cost (:meth:`cost`) fits (sized). Given together with a budget
        (or with ``num_particles=None``; T then defaults to 2M), the budget sizes N instead, capped by
        ``num_particles`` when that is given.
    policy
        ``"ucb"`` (default) or ``"epsilon"``.
    exploration
        c ≥ 0 of UCB1, in units of ψ (default 1).
    epsilon
        ε in [0, 1] of ε-greedy (default 0.1).
    lookahead
        Jumps per rollout (default 2; above).
    temperature
        α in ψ: ``None`` (default) every factor's own, a number ≥ 0 replacing them (0: ψ = Σ_j r_j).
    budget
        Denoiser calls (int) or a :class:`~tilted.inference.budget.Budget`, summed over runs (sized;
        :class:`~tilted.inference.budget.BudgetError` when even T = M or N = 1 does not fit).
    model, num_runs, batch_size, progress
        As for :class:`~tilted.inference.walk.ChainEngine`.
    """

    processes = (GaussianPath, MaskedDiffusion)

    def __init__(
        self,
        model,
        num_particles: int | None = None,
        *,
        num_candidates: int = 4,
        pulls_per_step: int | None = None,
        policy: str = "ucb",
        exploration: float = 1.0,
        epsilon: float = 0.1,
        lookahead: int = 2,
        temperature: float | None = None,
        budget: int | Budget | dict | None = None,
        num_runs=None,
        batch_size=None,
        progress=None,
    ):
        super().__init__(
            model, num_particles, num_runs=num_runs, batch_size=batch_size, progress=progress, budget=budget
        )
        positive_int("num_candidates", num_candidates)
        positive_int("pulls_per_step", pulls_per_step, optional=True)
        positive_int("lookahead", lookahead)
        if policy not in POLICIES:
            raise ModelError(f"policy must be one of {POLICIES}, got {policy!r}")
        if pulls_per_step is not None and num_candidates > 1 and pulls_per_step < num_candidates:
            raise ModelError(
                f"pulls_per_step={pulls_per_step} < num_candidates={num_candidates}: every arm is pulled once first"
            )
        self.num_candidates = num_candidates
        self.pulls_per_step = pulls_per_step
        self.policy = policy
        self.exploration = non_negative("exploration", exploration)
        self.epsilon = fraction("epsilon", epsilon, low_open=False)
        self.lookahead = lookahead
        self.temperature = None if temperature is None else non_negative("temperature", temperature)

    # -- cost --------------------------------------------------------------------------------
    def cost(self, plan: Plan, pulls: int | None = None) -> Counts:
        """Calls per particle and run with T = ``pulls`` (default: the run's) pulls per step (class docstring): exact."""
        if pulls is None:
            pulls = self.settings(plan)[1]
        process, F, M = plan.process, len(plan.factors), self.num_candidates
        denoiser, rewards = 1, 0  # x̂_0(x_K)
        for k in process.levels:
            arms = 1 if process.is_deterministic(k) else M
            if k - 1 == 0:
                rewards += arms * F
                continue
            denoiser += arms
            if arms > 1:
                denoiser += pulls * (min(self.lookahead, k - 1) - 1)
                rewards += pulls * F
        return Counts(denoiser_calls=denoiser, reward_calls=rewards)

    def settings(self, plan: Plan) -> tuple[int, int]:
        """(N, T): particles per run and pulls per step, as given or as the budget sizes them (class docstring)."""
        M, budget, T = self.num_candidates, self.budget, self.pulls_per_step
        if budget is None:
            return self.num_particles, (2 * M if T is None else T) if M > 1 else 0
        R = plan.runs(self.num_runs)
        if T is not None or self.num_particles is None:  # size N
            T = (2 * M if T is None else T) if M > 1 else 0
            per = self.cost(plan, T)
            fit = sized(budget, per.scaled(R), f"particle of {type(self).__name__}")
            return fit if self.num_particles is None else min(fit, self.num_particles), T
        N = self.num_particles
        base = self.cost(plan, M if M > 1 else 0)
        total = Counts(denoiser_calls=R * N * base.denoiser_calls, reward_calls=R * N * base.reward_calls)
        if not budget.allows(Counts(), total):
            raise BudgetError(
                f"the budget {budget.as_dict()} does not cover {type(self).__name__} with {N} particle(s) × {R} "
                f"run(s) and the least pulls T = M = {M} ({total.as_dict()}); raise the budget or lower "
                "num_particles/num_candidates"
            )
        if M == 1:
            return N, 0
        slope = self.cost(plan, M + 1)
        step = {n: R * N * (getattr(slope, n) - getattr(base, n)) for n in ("denoiser_calls", "reward_calls")}
        if not any(step.values()):
            return N, M  # nothing to pull (every step deterministic): T is unused
        extra = math.inf
        for name, per in step.items():
            limit = getattr(budget, name)
            if limit is not None and per > 0:
                extra = min(extra, (limit - getattr(total, name)) // per)
        if extra == math.inf:
            raise BudgetError(
                f"a pull costs nothing that the budget {budget.as_dict()} limits (with lookahead="
                f"{self.lookahead} it costs only reward calls); limit reward_calls or give pulls_per_step"
            )
        return N, M + int(extra)

    # -- the steps ----------------------------------------------------------------------------
    def check(self, plan: Plan) -> None:
        super().check(plan)
        process = plan.process
        if self.num_candidates > 1 and all(process.is_deterministic(k) for k in process.levels):
            warnings.warn(
                f"every step is deterministic (η = 0): there is no noise to search, so {type(self).__name__} is "
                "the pretrained sampler; use eta > 0",
                stacklevel=3,
            )

    def rollout(self, values: Values, x: torch.Tensor, x0: torch.Tensor, level: int, generator=None) -> torch.Tensor:
        """ψ at the end of one coarse stochastic rollout of states x at ``level`` (x̂_0(x) = x0) to x_0."""
        process = values.plan.process
        grid = coarse_levels(level, self.lookahead)
        for i, (here, to) in enumerate(zip(grid, grid[1:], strict=False)):
            if i:
                x0 = values.predict(x, here)
            x = jump(process, x, x0, here, to, generator)
        return values.score(values.rewards(x))

    def select(self, values: Values, cands: torch.Tensor, cand_x0: torch.Tensor, level: int, generator=None):
        """The bandit among candidates (R, N, M, *E) at ``level`` > 0: (kept arm (R, N), means, pull counts)."""

        def pull(arms):
            if arms is None:
                return self.rollout(values, cands, cand_x0, level, generator)
            return self.rollout(values, take(cands, arms[..., 0], 0), take(cand_x0, arms[..., 0], 0), level, generator)[
                ..., None
            ]

        return play(pull, cands.shape[2], self._pulls, self.policy, self.exploration, self.epsilon, generator)

    def step(self, plan: Plan, values: Values, walk: Walk, generator=None):
        k = walk.level
        x0 = walk.x0 if walk.x0 is not None else values.predict(walk.x, k)
        cands = expand(plan.process, walk.x, x0, k, self.num_candidates, generator)
        R, N, M = cands.shape[:3]
        if k == 1:  # clean candidates: exact values, scored once each
            rewards = values.rewards(cands)
            index = values.score(rewards).argmax(-1)
            x = take(cands, index, 0)
            return Walk(0, x, x, take(rewards, index, 1)), self.info(plan, R)
        cand_x0 = values.predict(cands, k - 1)
        if M == 1:
            index = torch.zeros((R, N), dtype=torch.long, device=cands.device)
        else:
            index = self.select(values, cands, cand_x0, k - 1, generator)[0]
        return Walk(k - 1, take(cands, index, 0), take(cand_x0, index, 0)), self.info(plan, R)

    def _size(self, plan: Plan) -> int:
        """N for :meth:`ChainEngine.run <tilted.inference.walk.ChainEngine.run>`; T is kept for the steps."""
        N, self._pulls = self.settings(plan)
        return N

    def config(self) -> dict:
        return {
            **super().config(),
            "num_candidates": self.num_candidates,
            "pulls_per_step": getattr(self, "_pulls", self.pulls_per_step),
            "policy": self.policy,
            "exploration": self.exploration,
            "epsilon": self.epsilon,
            "lookahead": self.lookahead,
            "temperature": self.temperature,
        }
