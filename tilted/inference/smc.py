"""Sequential Monte Carlo for reward-tilted diffusion targets (DAS, TDS, FK steering, and more).

Notes
-----
The Feynman–Kac system walks the chain's levels k = K, …, 0 with N particles per run:

- M_K: x_K ~ q_K (the prior N(0, I), or N(g, I) with the gradient proposal, g = ∇ψ_K at 0);
  G_K = log N(x_K; 0, I) − log q_K(x_K) + ψ_K(x_K).
- M_k: x_{k-1} ~ q_k(· | x_k), the prior kernel or its gradient-guided shift (proposals module);
  G_k = log p_k(x_{k-1} | x_k) − log q_k(x_{k-1} | x_k) + ψ_{k-1}(x_{k-1}) − ψ_k(x_k).
- ψ_0 = Σ_j r_j(x_0)/α_j exactly, with λ = 1; ψ_k for k > 0 comes from the potential
  (potentials module) applied to φ_k = w_k Σ_j λ_{j,k} r_j(x̂_0(x_k))/α_j, with the tempering
  schedules λ_{j,k} of the factor statements and the potential weight w_k (default ᾱ_k).
- The gradient proposal's shift σ²g is kept in a trust region ‖σ²g‖ ≤ τσ√d (proposals module).
- Resampling after a step when ESS < κN (or on a fixed interval inside a window); every carried
  per-particle quantity (x_k, x̂_0(x_k), rewards and their gradients, ψ_k) is gathered by ancestor.
- log Ẑ += log Σ_i W̄_i exp(G_i) with the normalised weights W̄ before the step: valid with
  adaptive resampling; Ẑ is unbiased for fixed schedules, consistent with adaptive tempering.

Each step makes one batched denoiser call and one reward call per factor (with one gradient per
factor for the gradient proposal), evaluated in micro-batches of ``batch_size`` particles. What
depends on the process type (evaluating x̂_0 and the rewards, φ, drawing x_K, the move) is one kernel
object, which the process provides (``process.kernel()``):
:class:`~tilted.inference.proposals.GaussianKernel` for every Gaussian path (diffusion, flow matching)
or :class:`~tilted.inference.discrete.MaskedKernel`; the rest is shared.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from tilted._progress import progress_bar
from tilted._random import Seed, as_generator
from tilted.distributions.masked import MaskedDiffusion
from tilted.errors import DegenerateWeightsError, ModelError, NoDensityError, NonFiniteError
from tilted.inference.budget import Budget, BudgetError, as_budget, sized
from tilted.inference.discrete import MaskedKernel, check_fill
from tilted.inference.potentials import GaussianSoftValue, Potential, Terminal, Twist, as_potential
from tilted.inference.proposals import PROPOSALS, GaussianKernel, require_differentiable
from tilted.inference.resampling import get_resampler
from tilted.inference.result import Counts, Result, StepInfo, collect
from tilted.inference.weights import ess, normalize
from tilted.plan import Plan, read_plan
from tilted.tempering import Tempering, as_tempering

#: default τ of the gradient proposal's trust region, in transition standard deviations (docs/engines.md)
TRUST_REGION = 1.0
POTENTIAL_WEIGHTS = ("signal", "none")


@dataclass(frozen=True)
class State:
    """Particles of R runs × N particles at level ``level``; every tensor's dims start (R, N) or (F, R, N)."""

    level: int
    x: torch.Tensor  # (R, N, *E)
    x0: torch.Tensor | None  # x̂_0(x), (R, N, *E)
    rewards: torch.Tensor | None  # r_j(x̂_0(x)), (F, R, N)
    grads: torch.Tensor | None  # ∇_x r_j(x̂_0(x)), (F, R, N, *E)
    psi: torch.Tensor  # ψ_k(x), (R, N) float64
    log_weights: torch.Tensor  # normalised, (R, N) float64
    log_evidence: torch.Tensor  # (R,) float64
    lambdas: torch.Tensor  # λ_{j,k}, (F, R) float64

    def gather(self, ancestors: torch.Tensor) -> State:
        """Every per-particle quantity re-indexed by the ancestors (R, N); weights become uniform."""
        runs = torch.arange(ancestors.shape[0], device=ancestors.device)[:, None]
        out = {}
        for name in ("x", "x0", "psi"):
            v = getattr(self, name)
            out[name] = None if v is None else v[runs, ancestors]
        for name in ("rewards", "grads"):
            v = getattr(self, name)
            out[name] = None if v is None else v[:, runs, ancestors]
        n = ancestors.shape[-1]
        uniform = torch.full_like(self.log_weights, -math.log(n))
        return replace(self, log_weights=uniform, **out)


class SMC:
    """Sequential Monte Carlo sampler of p_tar(x_0) ∝ p_θ(x_0) exp(Σ_j r_j(x_0)/α_j).

    Parameters
    ----------
    model
        A Pyro model with one sequential site and ``tilted.factor`` statements.
    num_particles
        N, particles per run.
    proposal
        ``"prior"`` (bootstrap) or ``"gradient"`` (N(μ + σ²∇ψ, σ²I), with the exact p/q correction).
    trust_region
        τ: the gradient proposal's shift σ²g is scaled down to ‖σ²g‖ ≤ τσ√d (a root-mean-square move
        of at most τ transition standard deviations per coordinate); ``None`` leaves it unbounded. The
        fraction of particles scaled is recorded per step in ``result.trace.drift_clipped``.
    potential
        ``"tweedie"`` (default), ``"difference"`` (same), ``"max"``, ``"sum"``, ``"terminal"``, a
        :class:`~tilted.inference.potentials.Potential` or a twist ``fn(x, k)``.
    potential_weight
        w_k multiplying the reward potentials φ_k = w_k Σ_j λ_{j,k} r_j(x̂_0(x_k))/α_j before the
        final level (which is always exact, w_0 = 1): ``"signal"`` (default) w_k = ᾱ_k, the signal
        fraction of x_k, which bounds a network's error amplification x̂_0 − x_0 ∝ √((1 − ᾱ)/ᾱ)
        (docs/engines.md); ``"none"`` w ≡ 1; or a function of ᾱ_k. On masked processes ᾱ_k is α_k,
        the fraction of visible tokens (``process.signal_fraction``; docs/benchmarks_masked.md).
    resampler
        ``"systematic"`` (default), ``"stratified"``, ``"multinomial"``, ``"residual"``, ``"ssp"``.
    ess_threshold
        κ: resample after a step when ESS < κN (0 never, 1 always). Ignored with ``resample_every``.
    resample_every, resample_window
        Resample every m-th step s (s = 1, …, K counted from x_K) with s in [start, end] instead of
        by ESS (FK steering).
    tempering
        Overrides every factor's schedule (``None`` keeps the model's).
    num_runs
        R independent runs batched in one call; results gain a leading run dimension.
    batch_size
        Particles per denoiser/reward evaluation (bounds memory; results are unchanged).
    progress
        A progress bar: ``False`` none, ``True`` always, ``None`` once the run has lasted 2 s (:mod:`tilted._progress`).
    fill, num_fills
        Masked (discrete) models only: potentials read the rewards of ``num_fills`` sequences drawn
        from x̂_0 (``"soft"``: their log-mean-exp soft value) or of its ``"argmax"``; there
        ``proposal="gradient"`` is the Taylor tilt of the masked positions (:mod:`tilted.inference.discrete`).
    budget
        Denoiser calls (int) or a :class:`~tilted.inference.budget.Budget` (denoiser and/or reward
        calls, summed over runs): N becomes the largest number of particles whose cost
        (:meth:`cost`) fits, capped by ``num_particles`` when both are given (sized; :mod:`tilted.inference.budget`).
    """

    def __init__(
        self,
        model,
        num_particles: int | None = None,
        *,
        proposal: str = "prior",
        trust_region: float | None = TRUST_REGION,
        potential: Potential | str = "tweedie",
        potential_weight: str | Callable[[float], float] = "signal",
        resampler: str = "systematic",
        ess_threshold: float = 0.5,
        resample_every: int | None = None,
        resample_window: tuple[int, int] | None = None,
        tempering: Tempering | str | None = None,
        num_runs: int | None = None,
        batch_size: int | None = None,
        progress: bool | None = None,
        fill: str = "soft",
        num_fills: int = 4,
        budget: int | Budget | dict | None = None,
    ):
        self.budget = as_budget(budget)
        if num_particles is None and self.budget is None:
            raise ValueError("give num_particles, or a budget= that sizes it")
        if num_particles is not None and (
            isinstance(num_particles, bool) or not isinstance(num_particles, int) or num_particles < 1
        ):
            raise ValueError(f"num_particles must be a positive integer, got {num_particles!r}")
        if proposal not in PROPOSALS:
            raise ValueError(f"proposal must be one of {PROPOSALS}, got {proposal!r}")
        if not 0 <= ess_threshold <= 1:
            raise ValueError(f"ess_threshold must be in [0, 1], got {ess_threshold}")
        if resample_every is not None and (not isinstance(resample_every, int) or resample_every < 1):
            raise ValueError(f"resample_every must be a positive integer, got {resample_every!r}")
        if num_runs is not None and (not isinstance(num_runs, int) or num_runs < 1):
            raise ValueError(f"num_runs must be a positive integer or None, got {num_runs!r}")
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
            raise ValueError(f"batch_size must be a positive integer or None, got {batch_size!r}")
        if trust_region is not None and not (isinstance(trust_region, int | float) and trust_region > 0):
            raise ValueError(
                f"trust_region must be a positive number of standard deviations or None, got {trust_region!r}"
            )
        if not (callable(potential_weight) or potential_weight in POTENTIAL_WEIGHTS):
            raise ValueError(
                f"potential_weight must be one of {POTENTIAL_WEIGHTS} or a function of ᾱ, got {potential_weight!r}"
            )
        check_fill(fill, num_fills)
        self.model = model
        self.num_particles = num_particles
        self.proposal = proposal
        self.trust_region = None if trust_region is None else float(trust_region)
        self.potential = as_potential(potential)
        self.potential_weight = potential_weight
        self.resampler_name = resampler if isinstance(resampler, str) else getattr(resampler, "__name__", "custom")
        self.resampler = get_resampler(resampler)
        self.ess_threshold = float(ess_threshold)
        self.resample_every = resample_every
        self.resample_window = resample_window
        self.tempering = None if tempering is None else as_tempering(tempering)
        self.num_runs = num_runs
        self.batch_size = batch_size
        self.progress = progress
        self.fill, self.num_fills = fill, num_fills
        self._kernel: GaussianKernel | MaskedKernel | None = None
        self._particles = num_particles

    # -- configuration read from the model ---------------------------------------------------
    def _setup(self, plan: Plan) -> None:
        process = plan.process
        kernel = getattr(process, "kernel", None)
        if kernel is None:
            raise ModelError(
                f"{type(self).__name__} runs processes that provide kernel() (Gaussian paths: diffusion and flow "
                f"matching; masked diffusion), got {type(process).__name__}"
            )
        if self.proposal == "gradient" and isinstance(self.potential, Twist) and isinstance(process, MaskedDiffusion):
            raise ModelError("the Taylor proposal differentiates the rewards at x̂_0, not a twist; use proposal='prior'")
        of_rewards = self.potential.uses_rewards or isinstance(self.potential, GaussianSoftValue)  # ∇ψ is of r
        if self.proposal == "gradient" and of_rewards:
            needs = f"{type(self).__name__}(proposal='gradient')"
            require_differentiable(plan.factors, needs, "proposal='prior' (the same target, without gradients)")
        self._kernel = kernel(fill=self.fill, num_fills=self.num_fills)
        K = process.num_steps
        self._device = device = process.device
        inner = [k for k in process.levels if k > 1 and process.is_deterministic(k)]
        if inner and self.proposal == "gradient":
            raise NoDensityError(
                f"steps {inner[:3]}… are deterministic (η = 0): the gradient proposal needs the prior kernel's "
                "density. Use eta > 0, or proposal='prior'"
            )
        if inner and not isinstance(self.potential, Terminal):
            warnings.warn(
                "the chain is deterministic (η = 0): SMC reduces to importance sampling over x_K and resampled "
                "particles never diversify; use eta > 0",
                stacklevel=3,
            )
        schedules = [self.tempering or f.tempering for f in plan.factors]
        self._adaptive = next((s for s in schedules if s.adaptive), None)
        table = [
            torch.zeros(K + 1, dtype=torch.float64) if s.adaptive else s.lambdas(K).to(torch.float64) for s in schedules
        ]
        table = torch.stack(table) if table else torch.zeros(0, K + 1, dtype=torch.float64)
        self._lambda_table = table.to(device)
        self._is_adaptive = torch.tensor([s.adaptive for s in schedules], dtype=torch.bool, device=device)
        self._alpha = plan.temperatures.to(device)
        self._weights = self._potential_weights(process, device)
        self._gradient = self.proposal == "gradient"
        self.counts = Counts()
        bind = getattr(self.potential, "bind", None)
        if bind is not None:  # a potential that evaluates the model itself counts its calls here too
            bind(self.counts)
        self._particles = self._size(plan)

    def _size(self, plan: Plan) -> int:
        """N: ``num_particles``, or the largest N whose cost fits the budget (capped by ``num_particles``)."""
        if self.budget is None:
            return self.num_particles
        R = plan.runs(self.num_runs)
        fit = sized(self.budget, self.cost(plan).scaled(R), "particle", self.fixed_cost(plan))
        return fit if self.num_particles is None else min(fit, self.num_particles)

    # -- cost --------------------------------------------------------------------------------
    def cost(self, plan: Plan) -> Counts:
        """Calls per particle and run: one denoiser call at each level K, …, 1; rewards (× fills) where ψ reads them.

        Exact for the built-in potentials (``result.counts`` = N·R·cost + :meth:`fixed_cost`); a potential
        that evaluates the model itself (``GaussianSoftValue``) has no predicted cost.
        """
        if self._kernel is None:
            self._setup(plan)
        if getattr(self.potential, "bind", None) is not None and self.budget is not None:
            raise BudgetError(f"the cost of potential {self.potential!r} is not predicted; give num_particles")
        process, F = plan.process, len(plan.factors)
        K, needs = process.num_steps, self.potential.uses_rewards
        fills = getattr(self._kernel, "num_fills", 1)
        reuse_last = needs and process.is_deterministic(1)  # x_0 = x̂_0(x_1): the last rewards are the final ones
        rewards = F * (K * fills if needs else 0) + (0 if reuse_last else F)
        moves = sum(not process.is_deterministic(k) for k in process.levels)
        if not self._gradient:
            grads = 0
        elif isinstance(self.potential, Twist):
            grads = moves
        else:
            grads = F * K if needs else 0
        return Counts(K, rewards, grads)

    def fixed_cost(self, plan: Plan) -> Counts:
        """Calls independent of N: the gradient proposal's one probe per group at x_K = 0."""
        if self._kernel is None:
            self._setup(plan)
        lam = self._lambda_table[:, 0]
        needs, P, F = self.potential.uses_rewards, plan.groups, len(plan.factors)
        if not (self._gradient and self._kernel.tilts_initial and (not needs or bool((lam != 0).any()))):
            return Counts()
        if isinstance(self.potential, Twist):
            return Counts(0, 0, P)
        return Counts(P, F * P, F * P) if needs else Counts()

    def _potential_weights(self, process, device) -> torch.Tensor:
        """w_k for levels k = 0, …, K (w_0 = 1: the final level is exact)."""
        K = process.num_steps
        signal = getattr(process, "signal_fraction", None)
        if self.potential_weight == "none" or signal is None:
            return torch.ones(K + 1, dtype=torch.float64, device=device)
        abar = signal.to(device, torch.float64)
        if self.potential_weight == "signal":
            w = abar.clone()
        else:
            w = torch.tensor([float(self.potential_weight(float(a))) for a in abar], dtype=torch.float64, device=device)
            if not torch.isfinite(w).all() or (w < 0).any():
                raise ValueError(f"potential_weight(ᾱ) must be finite and ≥ 0 at every level, got {w.tolist()}")
        w[0] = 1.0
        return w

    def _lambdas_at(self, s: int, adaptive: torch.Tensor) -> torch.Tensor:
        """λ_{j} at step s for every factor and run, (F, R): fixed rows from the table, adaptive rows ``adaptive``."""
        fixed = self._lambda_table[:, s, None].expand(-1, adaptive.shape[0])
        return torch.where(self._is_adaptive[:, None], adaptive[None], fixed)

    # -- evaluations ------------------------------------------------------------------------
    def _evaluate(self, plan: Plan, x: torch.Tensor, k: int, with_rewards: bool, with_grads: bool, generator=None):
        """x̂_0(x), rewards (F, R, N[, M]) and reward gradients (F, R, N, …) at level k, in micro-batches."""
        return self._kernel.evaluate(plan, x, k, with_rewards, with_grads, generator, self.counts, self.batch_size)

    def _final_rewards(self, plan: Plan, x: torch.Tensor) -> torch.Tensor:
        r = plan.rewards_at(x, 2, self.batch_size)
        self.counts.reward_calls += len(plan.factors) * x.shape[0] * x.shape[1]
        return r

    def _adaptive_lambda(self, state: State) -> torch.Tensor:
        """The shared λ of the adaptive factors per run (zeros when there are none)."""
        rows = state.lambdas[self._is_adaptive]
        return rows[0] if rows.shape[0] else state.lambdas.new_zeros(state.x.shape[0])

    def _drift(self, plan: Plan, state: State, k: int, lambdas: torch.Tensor) -> torch.Tensor | None:
        """g = ∇ψ_{k-1} at x_k: Σ_j (λ_j/α_j) ∇r_j(x̂_0(x_k)) (masked: at the relaxed x̂_0), or the twist's gradient."""
        if not self._gradient:
            return None
        if isinstance(self.potential, Twist):
            self.counts.gradient_evaluations += state.x.shape[0] * state.x.shape[1]
            return self.potential.gradient(state.x, k - 1)
        if state.grads is None or not len(plan.factors):
            return None
        coef = self._weights[k - 1] * lambdas / self._alpha[:, None]
        c = coef.to(state.grads.dtype).reshape(coef.shape + (1,) * (state.grads.ndim - 2))
        return (c * state.grads).sum(0)

    def _phi(self, plan: Plan, rewards: torch.Tensor | None, lambdas: torch.Tensor, ref: torch.Tensor, k: int):
        """φ_k = w_k Σ_j λ_j r_j / α_j per particle (R, N), float64 (masked: its log-mean-exp over the fills)."""
        if rewards is None or not len(plan.factors):
            return torch.zeros(ref.shape[:2], dtype=torch.float64, device=ref.device)
        return self._kernel.phi(rewards, self._weights[k] * lambdas, self._alpha)

    # -- the Feynman–Kac system ---------------------------------------------------------------
    def init(self, plan: Plan, generator: torch.Generator | None = None) -> tuple[State, StepInfo]:
        """Draw x_K, weight it by G_K and (maybe) resample: the state at level K."""
        self._setup(plan)
        return self._start(plan, generator)

    def _start(self, plan: Plan, generator: torch.Generator | None = None) -> tuple[State, StepInfo]:
        """:meth:`init` after the configuration is read (particle Gibbs starts every sweep here)."""
        process, K = plan.process, plan.process.num_steps
        R, N, P, device = plan.runs(self.num_runs), self._particles, plan.groups, self._device
        lam = self._lambdas_at(0, torch.zeros(R, dtype=torch.float64, device=device))
        needs = self.potential.uses_rewards
        drift = None
        if self._gradient and self._kernel.tilts_initial and (not needs or bool((lam != 0).any())):
            origin = torch.zeros((P, 1) + process.event_shape, device=device)  # one probe per group
            probe = State(
                K, origin, None, None, None, origin.new_zeros(P, 1, dtype=torch.float64), None, None, lam[:, :P]
            )
            if needs:
                _, _, grads = self._evaluate(plan, origin, K, True, True)
                probe = replace(probe, grads=grads)
            drift = self._drift(plan, probe, K + 1, lam[:, :P])
            drift = None if drift is None else drift.repeat((R // P,) + (1,) * (drift.ndim - 1))
        drift, clipped = self._bound(drift, K + 1, (R, N))
        x, log_ratio = self._initial((R, N), drift, generator)
        x0, rewards, grads = self._evaluate(plan, x, K, needs, self._gradient and needs, generator)
        psi = self.potential.start(self._phi(plan, rewards, lam, x, K), x, K)
        state = State(
            K,
            x,
            x0,
            rewards,
            grads,
            psi,
            torch.full((R, N), -math.log(N), dtype=torch.float64, device=device),
            torch.zeros(R, dtype=torch.float64, device=device),
            lam,
        )
        return self._reweight(state, log_ratio + psi, 0, generator, last=False, clipped=clipped)

    def step(self, plan: Plan, state: State, generator: torch.Generator | None = None) -> tuple[State, StepInfo]:
        """Move x_k → x_{k-1}, weight by G_k, and (maybe) resample: the state at level k − 1."""
        process, k = plan.process, state.level
        s, last = process.num_steps - k + 1, k == 1
        # the drift uses λ of the next level; adaptive factors (λ not chosen yet) use their current λ
        lam_guide = self._lambdas_at(s, self._adaptive_lambda(state))
        drift = None if process.is_deterministic(k) else self._drift(plan, state, k, lam_guide)  # nothing to tilt
        drift, clipped = self._bound(drift, k, state.psi.shape)
        x_new, log_ratio = self._move(state, k, drift, generator)
        if last:
            exact = state.rewards if process.is_deterministic(k) and state.rewards is not None else None
            rewards = self._final_rewards(plan, x_new) if exact is None else exact
            x0, grads = None, None
        else:
            needs = self.potential.uses_rewards
            x0, rewards, grads = self._evaluate(plan, x_new, k - 1, needs, self._gradient and needs, generator)

        def increment(adaptive_lam: torch.Tensor):
            lam = torch.ones_like(state.lambdas) if last else self._lambdas_at(s, adaptive_lam)
            phi = self._phi(plan, rewards, lam, x_new, k - 1)
            psi = (
                plan.log_factor(rewards).to(torch.float64)
                if last
                else self.potential.advance(state.psi, phi, x_new, k - 1)
            )
            return log_ratio + psi - state.psi, psi, lam

        chosen = self._adaptive_lambda(state)
        if self._adaptive is not None and not last:
            chosen = self._adaptive.solve(lambda lam: state.log_weights + increment(lam)[0], chosen)
        inc, psi, lam = increment(chosen)
        new = replace(state, level=k - 1, x=x_new, x0=x0, rewards=rewards, grads=grads, psi=psi, lambdas=lam)
        return self._reweight(new, inc, s, generator, last, clipped)

    # -- hooks that conditional SMC (particle Gibbs) overrides ---------------------------------
    def _initial(self, shape, drift, generator):
        """x_K and log p − log q for R × N particles."""
        return self._kernel.initial(shape, drift, generator)

    def _move(self, state: State, k: int, drift, generator):
        """x_{k-1} and log p − log q for every particle of ``state`` at level k."""
        return self._kernel.move(state, k, drift, generator)

    def _resample(self, state: State, generator) -> torch.Tensor:
        """Ancestors (R, N) from the normalised weights of ``state``."""
        return self.resampler(state.log_weights, generator)

    def _bound(self, drift: torch.Tensor | None, k: int, batch) -> tuple[torch.Tensor | None, torch.Tensor]:
        """The drift of the move from level k inside the trust region, and the fraction of particles scaled (R,)."""
        if drift is None:
            return None, torch.zeros(batch[0], dtype=torch.float64, device=self._device)
        if drift.shape[:2] != tuple(batch):  # one probe per group, broadcast over the particles
            drift = drift.expand(tuple(batch) + drift.shape[2:])
        drift, clipped = self._kernel.bound(drift, k, self.trust_region)
        return drift, clipped.to(torch.float64).mean(-1)

    def _reweight(
        self, state: State, inc: torch.Tensor, s: int, generator, last: bool, clipped: torch.Tensor | None = None
    ) -> tuple[State, StepInfo]:
        _check_increment(inc, s)
        joint = state.log_weights + inc
        dlogz = torch.logsumexp(joint, -1)
        log_weights = normalize(joint)
        state = replace(state, log_weights=log_weights, log_evidence=state.log_evidence + dlogz)
        cur_ess = ess(log_weights)
        R, N = log_weights.shape
        device = log_weights.device
        if last:
            do = torch.zeros(R, dtype=torch.bool, device=device)
        elif self.resample_every is not None:
            lo, hi = self.resample_window or (1, 10**9)
            due = lo <= s <= hi and (s - lo) % self.resample_every == 0
            do = torch.full((R,), due, dtype=torch.bool, device=device)
        else:
            do = cur_ess < self.ess_threshold * N
        ancestors = torch.arange(N, device=device).expand(R, N).clone()
        if bool(do.any()):
            drawn = self._resample(state, generator)
            ancestors = torch.where(do[:, None], drawn, ancestors)
            gathered = state.gather(ancestors)
            keep = ~do[:, None]
            state = replace(gathered, log_weights=torch.where(keep, log_weights, gathered.log_weights))
        info = StepInfo(cur_ess, do, state.lambdas.clone(), dlogz, ancestors, clipped, inc)
        return state, info

    # -- the loop ----------------------------------------------------------------------------
    def run(self, *args, seed: Seed = None, **kwargs) -> Result:
        """Run on ``model(*args, **kwargs)`` with an explicit seed or generator; return a :class:`Result`."""
        plan = read_plan(self.model, *args, **kwargs)
        generator = as_generator(seed, plan.process.device)
        state, info = self.init(plan, generator)
        infos = [info]
        bar = progress_bar(plan.process.levels, progress=self.progress, desc=type(self).__name__, leave=False)
        for _ in bar:
            state, info = self.step(plan, state, generator)
            infos.append(info)
            lam = f"{float(info.lambdas.min()):.3f}" if info.lambdas.numel() else "-"
            bar.set_postfix(ess=f"{float(info.ess.min()):.1f}", lam=lam, refresh=False)
        result = self._result(plan, state, infos)
        result.config["seed"] = seed if isinstance(seed, int) else None
        return result

    def _result(self, plan: Plan, state: State, infos: list[StepInfo]) -> Result:
        rewards = state.rewards if state.rewards is not None else plan.rewards_at(state.x, 2, self.batch_size)
        return collect(
            plan,
            state.x,
            rewards,
            state.log_weights,
            state.log_evidence,
            infos,
            self.counts,
            self.config(),
            batched=self.num_runs is not None,
        )

    def config(self) -> dict:
        """The engine's settings, for reports and reproducibility."""
        return {
            "engine": type(self).__name__,
            "num_particles": self._particles,
            "num_runs": self.num_runs,
            "proposal": self.proposal,
            "trust_region": self.trust_region,
            "potential": repr(self.potential),
            "potential_weight": self.potential_weight if isinstance(self.potential_weight, str) else "custom",
            "resampler": self.resampler_name,
            "ess_threshold": self.ess_threshold,
            "resample_every": self.resample_every,
            "resample_window": self.resample_window,
            "tempering": repr(self.tempering),
            "budget": None if self.budget is None else self.budget.as_dict(),
            **({"fill": self.fill, "num_fills": self.num_fills} if isinstance(self._kernel, MaskedKernel) else {}),
        }


def _check_increment(inc: torch.Tensor, s: int) -> None:
    if torch.isnan(inc).any() or (inc == float("inf")).any():
        raise NonFiniteError(
            f"step {s}: {int((~torch.isfinite(inc)).sum())} incremental log weights are NaN or +inf; check the "
            "denoiser output and the twist for non-finite values"
        )
    dead = torch.isneginf(inc).all(-1)
    if dead.any():
        raise DegenerateWeightsError(
            f"step {s}: every particle of run(s) {dead.nonzero().flatten().tolist()[:5]} has weight zero; "
            "the potential is −∞ everywhere: relax the constraint or raise the number of particles"
        )
