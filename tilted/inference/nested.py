"""Nested importance sampling: SVDD's local choice among M candidates inside a consistent SMC.

Notes
-----
At step k every particle draws M candidates c_1, …, c_M ~ p_k(· | x_k) from the pretrained kernel
and keeps one, c_J, with probability ∝ w_m = exp(ψ_{k-1}(c_m) − ψ_k(x_k)) (SVDD's soft choice,
with the engine's potential ψ; README, Guarantees). Globally, particles are weighted by the *average local
weight* and resampled across the run:

    G_k = log (1/M) Σ_m exp(ψ_{k-1}(c_m) − ψ_k(x_k)).

Why this is exact. The move draws (c_{1:M}, J) from q(c_{1:M}, J) = Π_m p_k(c_m | x_k) · w_J / Σ_m w_m.
Take as the extended target of the step π(c_{1:M}, J) = (1/M) γ(c_J) Π_{m≠J} p_k(c_m | x_k) with
γ(c) = p_k(c | x_k) exp(ψ_{k-1}(c) − ψ_k(x_k)) — the bootstrap SMC target of the step for the kept
candidate, with the others as independent auxiliary draws and J uniform. Then

    π / q = (1/M) γ(c_J) / (p_k(c_J | x_k) w_J / Σ_m w_m) = (1/M) Σ_m w_m,

so G_k is the exact incremental weight of an SMC on the extended space, whose marginal for the kept
candidates is the Feynman–Kac path law of bootstrap SMC with potential ψ. The ψ telescope (ψ_0 =
Σ_j r_j(x_0)/α_j exactly, on the kept x_0) then makes the weighted particles consistent for the tilted
target, and E[exp G_k | x_k] = E_p[exp(ψ_{k-1} − ψ_k) | x_k] (a random-weight SMC), so log Ẑ accumulates
as in :class:`~tilted.inference.SMC` and Ẑ is unbiased for fixed tempering schedules. With M = 1 it
is bootstrap SMC, draw for draw; larger M makes the particles better adapted (lower weight variance)
for M times the denoiser calls.

The kept candidate's x̂_0, rewards and ψ travel with it (and are gathered by ancestor at
resampling): no evaluation is repeated. Deterministic steps give one candidate (no choice, G_k is
the bootstrap weight). Masked (discrete) models run too: candidates are draws of the unmasking
categoricals, and ψ is read off fills of x̂_0 exactly as :class:`~tilted.inference.SMC` reads it
(the same evaluation, so M = 1 is bootstrap SMC draw for draw there as well).
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch

from tilted.errors import NonFiniteError
from tilted.inference.candidates import choose, expand, take
from tilted.inference.potentials import Potential
from tilted.inference.result import Counts
from tilted.inference.smc import SMC, State
from tilted.inference.walk import positive_int
from tilted.plan import Plan
from tilted.tempering import Tempering

F64 = torch.float64


class NestedIS(SMC):
    """Nested importance sampling: SMC whose move picks one of M prior candidates by local weight (module Notes).

    Update rule at step k (per particle, then across the run)::

        c_1, …, c_M ~ p_k(· | x_k),   w_m = exp(ψ_{k-1}(c_m) − ψ_k(x_k)),
        x_{k-1} = c_J with P(J = m) = w_m / Σ w,    G_k = log mean_m w_m,
        resample the run by the weights when ESS < κN.

    Targets: the tilted target p_θ·exp(Σ_j r_j/α_j)/Z, consistently as N → ∞ for any M ≥ 1, any
    potential and any tempering (the weight is derived in the module Notes); ``log_evidence`` is
    log Ẑ (Ẑ unbiased for fixed schedules). Not guaranteed: good behaviour at small N — like any SMC
    its weights can degenerate when ψ is a poor value estimate; larger M reduces the weight variance
    at M times the cost per step.

    Parameters
    ----------
    num_candidates
        M ≥ 1, candidates per particle and step (default 20, as :class:`~tilted.inference.SVDD`).
    potential
        ψ_k for k > 0, as for :class:`~tilted.inference.SMC` (default ``"tweedie"``:
        ψ_k = Σ_j λ_{j,k} r_j(x̂_0(x_k))/α_j, the SVDD value).
    ess_threshold
        κ: resample when ESS < κN (default 1.0: at every step, as the Uehara et al. tutorial's nested
        IS does; 0.5 resamples adaptively).
    resampler, tempering, num_runs, batch_size, progress, fill, num_fills, budget
        As for :class:`~tilted.inference.SMC` (``fill``/``num_fills``: how masked models read ψ off x̂_0;
        a budget sizes N by :meth:`cost`).
    """

    def __init__(
        self,
        model,
        num_particles: int | None = None,
        *,
        num_candidates: int = 20,
        potential: Potential | str = "tweedie",
        resampler: str = "systematic",
        ess_threshold: float = 1.0,
        tempering: Tempering | str | None = None,
        num_runs: int | None = None,
        batch_size: int | None = None,
        progress: bool | None = None,
        fill: str = "soft",
        num_fills: int = 4,
        budget=None,
    ):
        positive_int("num_candidates", num_candidates)
        self.num_candidates = num_candidates
        super().__init__(
            model,
            num_particles,
            proposal="prior",
            potential=potential,
            resampler=resampler,
            ess_threshold=ess_threshold,
            tempering=tempering,
            num_runs=num_runs,
            batch_size=batch_size,
            progress=progress,
            fill=fill,
            num_fills=num_fills,
            budget=budget,
        )

    def cost(self, plan: Plan) -> Counts:
        """Per particle and run: x̂_0 and the rewards (× fills) of every candidate below level K; the last exact."""
        if self._kernel is None:
            self._setup(plan)
        process, F = plan.process, len(plan.factors)
        needs, fills = self.potential.uses_rewards, getattr(self._kernel, "num_fills", 1)
        M = {k: 1 if process.is_deterministic(k) else self.num_candidates for k in process.levels}
        inner = sum(M[k] for k in process.levels if k > 1)
        reuse_last = M[1] == 1 and process.is_deterministic(1) and needs
        rewards = (F * fills * (1 + inner) if needs else 0) + (0 if reuse_last else F * M[1])
        return Counts(1 + inner, rewards, 0)

    def step(self, plan: Plan, state: State, generator: torch.Generator | None = None):
        """Expand x_k into M candidates, keep one by local weight, weight by the mean local weight."""
        process, k = plan.process, state.level
        s, last = process.num_steps - k + 1, k == 1
        R, N = state.psi.shape
        cands = expand(process, state.x, state.x0, k, self.num_candidates, generator)
        M = cands.shape[2]
        flat = cands.flatten(1, 2)
        if last and M == 1 and process.is_deterministic(k) and state.rewards is not None:
            x0, rewards = None, state.rewards  # x_0 = x̂_0(x_1): its exact rewards are known
        elif last:
            x0, rewards = None, self._final_rewards(plan, flat)
        else:  # SMC's evaluation: x̂_0 and the rewards φ needs (of fills of x̂_0, for masked models)
            x0, rewards, _ = self._evaluate(plan, flat, k - 1, self.potential.uses_rewards, False, generator)
        psi_prev = state.psi.repeat_interleave(M, dim=1)

        def increment(adaptive_lam: torch.Tensor):
            lam = torch.ones_like(state.lambdas) if last else self._lambdas_at(s, adaptive_lam)
            if last:
                psi = plan.log_factor(rewards).to(F64)
            else:
                psi = self.potential.advance(psi_prev, self._phi(plan, rewards, lam, flat, k - 1), flat, k - 1)
            local = (psi - psi_prev).reshape(R, N, M)
            return torch.logsumexp(local, -1) - math.log(M), psi, lam, local

        chosen = self._adaptive_lambda(state)
        if self._adaptive is not None and not last:
            chosen = self._adaptive.solve(lambda lam: state.log_weights + increment(lam)[0], chosen)
        inc, psi, lam, local = increment(chosen)
        if torch.isnan(local).any():
            raise NonFiniteError(f"step {s}: local log weights of the candidates are NaN; check the potential")
        dead = torch.isneginf(inc)[..., None]  # every candidate has weight 0: choose any (the weight kills it)
        index = choose(torch.where(dead, torch.zeros_like(local), local), False, generator)

        def kept(t, dim):
            return None if t is None else take(t.unflatten(dim + 1, (N, M)), index, dim)

        new = replace(
            state,
            level=k - 1,
            x=take(cands, index, 0),
            x0=kept(x0, 0),
            rewards=kept(rewards, 1),
            grads=None,
            psi=kept(psi, 0),
            lambdas=lam,
        )
        return self._reweight(new, inc, s, generator, last)

    def config(self) -> dict:
        return {**super().config(), "num_candidates": self.num_candidates}
