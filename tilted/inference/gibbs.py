"""Particle Gibbs: conditional SMC sweeps that refine a retained path without leaving the target.

Notes
-----
The tilted path law π(x_{K:0}) ∝ p(x_K) Π_k p_k(x_{k-1} | x_k) · exp(Σ_j r_j(x_0)/α_j) is known up
to Z even when p_θ(x_0) is not, so conditional SMC (Andrieu, Doucet & Holenstein 2010) is an exact
MCMC kernel on it: π is its stationary law for any number N ≥ 2 of particles. A sweep is the
Feynman–Kac system of :class:`~tilted.inference.SMC` (same proposals, potentials ψ_k and fixed
tempering schedules) with one change: particle 0 of every run is *pinned* to the reference path
x'_{K:0} retained by the previous sweep. Its states are not drawn but its weights are computed
like everyone's (G_k = log p_k/q_k + ψ_{k-1} − ψ_k at the pinned x'_{k-1}, with q the proposal from
its own ancestor), so the reference competes with the N − 1 fresh particles.

- **Conditional resampling** (multinomial): when a run resamples (ESS < κN, or on the fixed
  interval), particles 1, …, N − 1 draw ancestors i.i.d. from the weights W; the reference keeps
  ancestor 0.
- **Ancestor sampling** (Lindsten, Jordan & Schön 2014): instead, the reference's ancestor is
  redrawn with P(a = i) ∝ W_i p_k(x'_{k-1} | x^i_k) exp(−ψ_k(x^i_k)) — the ratio of the *final*
  path target to the intermediate one at particle i, so the twist cancels and the reference's
  future is grafted onto the best-fitting past. This breaks path degeneracy: early levels of the
  reference are renewed even when the fresh particles coalesce. Deterministic steps keep a = 0.
- **Selection**: the new reference is the path of one final particle. ``selection="gibbs"`` draws
  it from W; ``"metropolised"`` (default) proposes j ≠ 0 with probability W_j/(1 − W_0) and accepts
  with probability min(1, (1 − W_0)/(1 − W_j)) (Liu's Metropolised Gibbs, which leaves W invariant
  and moves more often). With uniform weights (the exact twist with the exact proposal) it always
  moves, and every level of the path is renewed in every sweep.

Resampling decisions depend on the particles only through a permutation-invariant function of
the weights (ESS), or not at all, so the extended-target argument holds as for resampling at every
step. Adaptive tempering chooses λ from the particles, which would make the intermediate targets
depend on the reference; it is refused (use a fixed schedule). Only multinomial conditional
resampling is implemented (conditional versions of systematic or SSP resampling are not the plain
schemes with one index fixed).

Sweep 0 is unconditional SMC: its log Ẑ is the usual estimate (``result.log_evidence``), and its
selected path starts the chain. Conditional sweeps give no estimate of Z. ``result.particles`` holds
the retained final states of the sweeps after ``burn_in`` (an MCMC chain per run, equally weighted),
and ``result.sweeps`` a :class:`SweepTrace`: per sweep and level whether the retained path changed,
the retained rewards, and their autocorrelation. The fill random numbers of a masked model are drawn
once per chain, so every sweep targets the same π with the same ψ.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from tilted._progress import progress_bar
from tilted._random import Seed, as_generator
from tilted.errors import ModelError, NoDensityError
from tilted.inference.budget import as_budget, sized
from tilted.inference.resampling import multinomial
from tilted.inference.result import Result, collect
from tilted.inference.smc import SMC, State
from tilted.inference.walk import positive_int
from tilted.plan import Plan, read_plan

F64 = torch.float64
SELECTIONS = ("metropolised", "gibbs")


@dataclass
class SweepTrace:
    """Per-sweep records of particle Gibbs (runs dimension R dropped for one unbatched run).

    ``renewed`` (S, K + 1[, R]): whether the retained state at level k (index k = 0, …, K) differs
    from the previous sweep's (sweep 0: all True); ``moved`` (S[, R]): whether the selection left
    the reference; ``rewards`` (S, F[, R]): the exact rewards of each sweep's retained x_0;
    ``log_evidence`` (S[, R]): each sweep's log Ẑ (an estimate of log Z only for sweep 0);
    ``burn_in``: the sweeps left out of ``result.particles``; ``paths`` (S, K + 1[, R], *E): the
    retained path of every sweep, indexed by level, with ``keep_paths=True`` (else ``None``).
    """

    renewed: torch.Tensor
    moved: torch.Tensor
    rewards: torch.Tensor
    log_evidence: torch.Tensor
    burn_in: int
    paths: torch.Tensor | None = None

    @property
    def renewal_rate(self) -> torch.Tensor:
        """The fraction of conditional sweeps (after sweep 0) that changed the state at each level: (K + 1[, R])."""
        return self.renewed[1:].to(F64).mean(0)

    def autocorrelation(self, factor: int = 0, max_lag: int | None = None) -> torch.Tensor:
        """ρ(ℓ), ℓ = 0, …, max_lag, of one factor's retained reward over the sweeps after burn-in: (L[, R])."""
        r = self.rewards[self.burn_in :, factor].to(F64)
        n = r.shape[0]
        if n < 2:
            raise ModelError(f"the autocorrelation needs at least 2 sweeps after burn-in, got {n}")
        max_lag = n - 1 if max_lag is None else min(max_lag, n - 1)
        d = r - r.mean(0)
        var = (d * d).mean(0)
        rho = torch.stack([(d[: n - lag] * d[lag:]).sum(0) / n for lag in range(max_lag + 1)])
        return torch.where(var > 0, rho / var.clamp_min(1e-300), torch.zeros_like(rho))

    def integrated_time(self, factor: int = 0) -> torch.Tensor:
        """τ = 1 + 2 Σ_{ℓ≥1} ρ(ℓ), summed up to the first negative ρ (Geyer's initial positive sequence, simplified)."""
        rho = self.autocorrelation(factor)
        positive = (rho[1:] > 0).to(F64).cumprod(0)
        return 1 + 2 * (rho[1:] * positive).sum(0)


class ParticleGibbs(SMC):
    """Particle Gibbs: conditional SMC sweeps on the tilted path law (module Notes).

    Parameters
    ----------
    model
        A Pyro model with one sequential site and ``tilted.factor`` statements.
    num_particles
        N ≥ 2 particles per sweep (the reference and N − 1 fresh ones).
    num_sweeps
        S sweeps per run, the first unconditional (``None`` with ``budget``: as many as fit).
    burn_in
        Sweeps left out of ``result.particles`` (default 1: the unconditional sweep's draw, exact
        only as N → ∞).
    ancestor_sampling
        Redraw the reference's ancestor at every resampling (default ``True``).
    selection
        ``"metropolised"`` (default) or ``"gibbs"``: how the next reference is chosen (module Notes).
    budget
        Denoiser calls (int) or a :class:`~tilted.inference.budget.Budget`: ``num_sweeps`` becomes the
        largest number of sweeps that fits (sized; :mod:`tilted.inference.budget`).
    keep_paths
        Keep every sweep's whole retained path in ``result.sweeps.paths`` (memory S·(K + 1)·R·|E|).
    **smc_options
        As for :class:`~tilted.inference.SMC` (``proposal``, ``potential``, ``potential_weight``,
        ``tempering`` (fixed schedules), ``ess_threshold``, ``resample_every``, ``num_runs``: independent
        chains, ``batch_size``, ``progress``, ``fill``, ``num_fills``); ``resampler`` must be
        ``"multinomial"``.
    """

    def __init__(
        self,
        model,
        num_particles: int,
        num_sweeps: int | None = 10,
        *,
        burn_in: int = 1,
        ancestor_sampling: bool = True,
        selection: str = "metropolised",
        budget=None,
        keep_paths: bool = False,
        **smc_options,
    ):
        resampler = smc_options.pop("resampler", "multinomial")
        if resampler != "multinomial":
            raise ModelError(
                f"ParticleGibbs resamples conditionally with the multinomial scheme, got resampler={resampler!r}; "
                "leave resampler out"
            )
        super().__init__(model, num_particles, resampler="multinomial", **smc_options)
        if num_particles < 2:
            raise ModelError("ParticleGibbs needs num_particles ≥ 2: the reference and at least one fresh particle")
        self.budget = as_budget(budget)
        if num_sweeps is None and self.budget is None:
            raise ModelError("give num_sweeps or a budget")
        positive_int("num_sweeps", num_sweeps, optional=True)
        if isinstance(burn_in, bool) or not isinstance(burn_in, int) or burn_in < 0:
            raise ModelError(f"burn_in must be an integer ≥ 0, got {burn_in!r}")
        if num_sweeps is not None and self.budget is None and burn_in >= num_sweeps:
            raise ModelError(f"burn_in = {burn_in} leaves none of the {num_sweeps} sweeps; lower it")
        if selection not in SELECTIONS:
            raise ModelError(f"selection must be one of {SELECTIONS}, got {selection!r}")
        self.num_sweeps, self.burn_in = num_sweeps, burn_in
        self.ancestor_sampling, self.selection = bool(ancestor_sampling), selection
        self.keep_paths = bool(keep_paths)
        self._reference: torch.Tensor | None = None  # (K + 1, R, *E), indexed by level

    def _setup(self, plan: Plan) -> None:
        super()._setup(plan)
        if self._adaptive is not None:
            raise ModelError(
                "ParticleGibbs needs fixed tempering schedules: adaptive λ would make each sweep's intermediate "
                "targets depend on the reference. Use e.g. tempering=Exponential(…) or Linear()"
            )
        process = plan.process
        inner = [k for k in process.levels if k > 1 and process.is_deterministic(k)]
        if inner:
            raise NoDensityError(
                f"steps {inner[:3]}… are deterministic (η = 0): conditional SMC needs the transition density of "
                "every step but the last. Use eta > 0"
            )

    def _size(self, plan: Plan) -> int:
        return self.num_particles  # the budget sizes the number of sweeps

    # -- conditional SMC: the reference is particle 0 --------------------------------------------
    def _initial(self, shape, drift, generator):
        x, log_ratio = super()._initial(shape, drift, generator)
        if self._reference is None:
            return x, log_ratio
        ref = self._reference[-1][:, None]
        d = None if drift is None else drift[:, :1]
        x = x.clone()
        x[:, :1] = ref
        log_ratio[:, :1] = self._kernel.pinned(None, None, self._reference.shape[0], d, ref)
        return x, log_ratio

    def _move(self, state: State, k: int, drift, generator):
        x, log_ratio = super()._move(state, k, drift, generator)
        if self._reference is None:
            return x, log_ratio
        ref = self._reference[k - 1][:, None]
        d = None if drift is None else drift[:, :1]
        x0 = None if state.x0 is None else state.x0[:, :1]
        x = x.clone()
        x[:, :1] = ref
        log_ratio[:, :1] = self._kernel.pinned(state.x[:, :1], x0, k, d, ref)
        return x, log_ratio

    def _resample(self, state: State, generator) -> torch.Tensor:
        drawn = multinomial(state.log_weights, generator)
        if self._reference is None:
            return drawn
        k = state.level
        a0 = torch.zeros_like(drawn[:, 0])
        if self.ancestor_sampling and not self._process.is_deterministic(k):
            ref = self._reference[k - 1][:, None]
            logits = state.log_weights + self._kernel.log_transition(state.x, state.x0, k, ref) - state.psi
            a0 = torch.multinomial(torch.softmax(logits, -1), 1, generator=generator)[:, 0]
        drawn[:, 0] = a0
        return drawn

    def _select(self, log_weights: torch.Tensor, generator) -> torch.Tensor:
        """The index (R,) of the next reference among the final particles (module Notes)."""
        W = log_weights.exp()
        if self._reference is None or self.selection == "gibbs":
            return torch.multinomial(W, 1, generator=generator)[:, 0]
        rest = W.clone()
        rest[:, 0] = 0
        mass = rest.sum(-1, keepdim=True)
        free = mass[:, 0] > 0
        j = torch.multinomial(torch.where(free[:, None], rest, torch.ones_like(rest)), 1, generator=generator)[:, 0]
        u = torch.rand(j.shape, dtype=F64, generator=generator, device=j.device)
        Wj = W.gather(-1, j[:, None])[:, 0]
        accept = free & (u * (1 - Wj) < 1 - W[:, 0])
        return torch.where(accept, j, torch.zeros_like(j))

    # -- the sweeps --------------------------------------------------------------------------------
    def sweep(self, plan: Plan, generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, State, list]:
        """One (conditional) SMC sweep: the selected path (K + 1, R, *E), its index (R,), the final state, infos."""
        process = plan.process
        K = process.num_steps
        state, info = self._start(plan, generator)
        infos, kept, ancestors = [info], {K: state.x}, {K: info.ancestors}
        for _ in process.levels:
            state, info = self.step(plan, state, generator)
            infos.append(info)
            if state.level > 0:
                kept[state.level], ancestors[state.level] = state.x, info.ancestors
        j = self._select(state.log_weights, generator)
        runs = torch.arange(j.shape[0], device=j.device)
        path, idx = [state.x[runs, j]], j
        for k in range(1, K + 1):  # x_k = (particles after resampling at level k)[idx]; then idx ← its ancestor
            path.append(kept[k][runs, idx])
            idx = ancestors[k][runs, idx]
        return torch.stack(path), j, state, infos

    def run(self, *args, seed: Seed = None, **kwargs) -> Result:
        """Run S sweeps on ``model(*args, **kwargs)``; return the retained states as a :class:`Result`."""
        plan = read_plan(self.model, *args, **kwargs)
        generator = as_generator(seed, plan.process.device)
        self._setup(plan)
        self._process = plan.process
        S = self._sweeps(plan)
        if self.burn_in >= S:
            raise ModelError(f"burn_in = {self.burn_in} leaves none of the {S} sweeps; lower it or raise the budget")
        self._reference = None
        renewed, moved, rewards, log_z, finals, paths = [], [], [], [], [], []
        for s in progress_bar(range(S), progress=self.progress, desc="ParticleGibbs", leave=False):
            path, j, state, infos = self.sweep(plan, generator)
            runs = torch.arange(j.shape[0], device=j.device)
            previous = self._reference
            change = torch.ones(path.shape[:2], dtype=torch.bool, device=path.device)
            if previous is not None:
                change = (path != previous).flatten(2).any(-1)
            renewed.append(change)
            moved.append(j != 0 if previous is not None else torch.ones_like(j, dtype=torch.bool))
            rewards.append(state.rewards[:, runs, j])  # the exact final rewards (F, R)
            log_z.append(state.log_evidence)
            finals.append(path[0])
            if self.keep_paths:
                paths.append(path)
            self._reference = path
            if s == 0:
                log_evidence = state.log_evidence
        self._reference = None
        x = torch.stack(finals[self.burn_in :], 1)  # (R, S', *E)
        r = torch.stack(rewards[self.burn_in :], -1)  # (F, R, S')
        R, n = x.shape[:2]
        result = collect(
            plan,
            x,
            r,
            torch.full((R, n), -math.log(n), dtype=F64, device=x.device),
            log_evidence,
            infos,
            self.counts,
            self.config() | {"num_sweeps": S},
            batched=self.num_runs is not None,
        )
        batched = self.num_runs is not None or plan.grouped
        trace = SweepTrace(
            renewed=torch.stack(renewed),
            moved=torch.stack(moved),
            rewards=torch.stack(rewards),
            log_evidence=torch.stack(log_z),
            burn_in=self.burn_in,
            paths=torch.stack(paths) if self.keep_paths else None,
        )
        if not batched:
            trace = replace(
                trace,
                renewed=trace.renewed[..., 0],
                moved=trace.moved[:, 0],
                rewards=trace.rewards[..., 0],
                log_evidence=trace.log_evidence[:, 0],
                paths=None if trace.paths is None else trace.paths[:, :, 0],
            )
        result.sweeps = trace
        result.config["seed"] = seed if isinstance(seed, int) else None
        return result

    def _sweeps(self, plan: Plan) -> int:
        if self.budget is None:
            return self.num_sweeps
        R = plan.runs(self.num_runs)
        per_sweep = self.cost(plan).scaled(self.num_particles * R) + self.fixed_cost(plan)
        fit = sized(self.budget, per_sweep, "sweep")
        return fit if self.num_sweeps is None else min(fit, self.num_sweeps)

    def config(self) -> dict:
        return {
            **super().config(),
            "engine": "ParticleGibbs",
            "num_sweeps": self.num_sweeps,
            "burn_in": self.burn_in,
            "ancestor_sampling": self.ancestor_sampling,
            "selection": self.selection,
            "budget": None if self.budget is None else self.budget.as_dict(),
        }
