"""Derivative-free search: SVDD value decoding, beam search and best-of-N.

Each engine expands particles into candidates from the *pretrained* kernel
(:func:`~tilted.inference.candidates.expand`) and keeps candidates by their value
ψ̂ = Σ_j r_j(x̂_0(x))/α_j (:mod:`tilted.inference.values`; at level 0 the exact Σ_j r_j(x_0)/α_j).
Rewards need no gradient. Gaussian and masked (discrete) diffusion both run: for a masked model the
candidates are draws of the per-position categoricals and ψ̂ is read off fills of x̂_0 (``fill="soft"``:
the soft value over ``num_fills`` fills, or ``"argmax"``; as in :class:`~tilted.inference.SMC`). A candidate's x̂_0 is computed once: it scores the candidate and, if the
candidate is kept, gives the next step's kernel moments.

- :class:`SVDD` chooses one of M candidates *per particle* at every step (a soft or greedy policy);
- :class:`BeamSearch` keeps the best N of all N·M candidates of a run at every step;
- :class:`BestOfN` runs M pretrained chains per returned particle and keeps the best final sample.

None of them samples the tilted target (README, Guarantees); they return unweighted particles (uniform
``log_weights``, NaN ``log_evidence``: :mod:`tilted.inference.walk`) with their exact final rewards.
For a consistent sampler with the same moves use :class:`~tilted.inference.NestedIS`.

Deterministic steps (DDIM η = 0, the last step to ᾱ_0 = 1) have one candidate per particle, so
nothing is chosen there; with η = 0 throughout, SVDD and beam search reduce to the pretrained
sampler (a warning says so) and best-of-N to a search over initial noise.

Cost: a step with M candidates makes M denoiser calls and M·F reward calls per particle (none for
the rewards when there is nothing to choose); the last step's values are exact rewards and need no
denoiser call.
"""

from __future__ import annotations

import warnings

import torch

from tilted.distributions.gaussian import GaussianPath
from tilted.distributions.masked import MaskedDiffusion
from tilted.inference.candidates import choose, expand, take, top
from tilted.inference.discrete import check_fill
from tilted.inference.result import Counts
from tilted.inference.values import Values
from tilted.inference.walk import ChainEngine, Walk, non_negative, positive_int
from tilted.plan import Plan


class CandidateSearch(ChainEngine):
    """Base of the search engines: candidate expansion and scoring (module docstring)."""

    processes = (GaussianPath, MaskedDiffusion)

    def __init__(
        self,
        model,
        num_particles: int | None = None,
        *,
        num_candidates: int = 20,
        fill: str = "soft",
        num_fills: int = 4,
        num_runs=None,
        batch_size=None,
        progress=None,
        budget=None,
    ):
        super().__init__(
            model, num_particles, num_runs=num_runs, batch_size=batch_size, progress=progress, budget=budget
        )
        positive_int("num_candidates", num_candidates)
        check_fill(fill, num_fills)
        self.num_candidates = num_candidates
        self.fill, self.num_fills = fill, num_fills

    def check(self, plan: Plan) -> None:
        super().check(plan)
        process = plan.process
        inner = [k for k in process.levels if k > 1 and process.is_deterministic(k)]
        if inner and self.num_candidates > 1 and not isinstance(self, BestOfN):
            warnings.warn(
                f"steps {inner[:3]}… are deterministic (η = 0): their candidates coincide, so {type(self).__name__} "
                "chooses nothing there (with η = 0 throughout it is the pretrained sampler); use eta > 0",
                stacklevel=3,
            )

    def candidates(self, plan: Plan, values: Values, walk: Walk, num: int, generator=None):
        """Candidates (R, N, M', *E) of every particle, their x̂_0, values ψ̂ (R, N, M') and exact rewards.

        Values are evaluated when there is a choice (M' > 1) and at level 0, where they come with the exact
        rewards (F, R, N, M') of the candidates x_0 (otherwise ``None``).
        """
        k = walk.level
        x0 = walk.x0 if walk.x0 is not None else values.predict(walk.x, k)
        cands = expand(plan.process, walk.x, x0, k, num, generator)
        return (cands, *values.state(cands, k - 1, with_value=cands.shape[2] > 1))

    def cost(self, plan: Plan) -> Counts:
        """Per particle: x̂_0 at level K, then x̂_0 of every candidate below it and their values where there
        is a choice (× fills); the candidates x_0 of the last step are scored by exact rewards."""
        process, F, fills = plan.process, len(plan.factors), self._fills(plan)
        M = {k: 1 if process.is_deterministic(k) else self.num_candidates for k in process.levels}
        inner = [k for k in process.levels if k > 1]
        rewards = sum(F * fills * M[k] for k in inner if M[k] > 1) + F * M[1]
        return Counts(1 + sum(M[k] for k in inner), rewards, 0)

    def config(self) -> dict:
        return {
            **super().config(),
            "num_candidates": self.num_candidates,
            "fill": self.fill,
            "num_fills": self.num_fills,
        }


class SVDD(CandidateSearch):
    """Soft value-based decoding (Li et al., 2024, "Derivative-free guidance in continuous and discrete
    diffusion models with soft value-based decoding").

    Update rule at step k, for every particle independently::

        c_1, …, c_M ~ p_k(· | x_k)                      (the pretrained kernel)
        v̂_m = Σ_j r_j(x̂_0(c_m)) / α                      (at the last step: the exact r_j(c_m))
        x_{k-1} = c_J,   P(J = m) ∝ exp(v̂_m)   (α > 0),   J = argmax_m v̂_m   (α = 0)

    The last step chooses among candidates x_0 by their exact rewards and returns x_0 (the reference
    code returns the penultimate state). With M = 1 it is the pretrained sampler, draw for draw.

    Targets: approximately the tilted target when α is the model's temperature. The selection is the
    sampling-importance-resampling approximation of the optimal kernel
    p_k(x_{k-1} | x_k) exp(v_{k-1}(x_{k-1})/α − v_k(x_k)/α) with the soft value v replaced by the
    one-sample estimate r(x̂_0) and the self-normalisation over M candidates. Not guaranteed: r(x̂_0)
    ≠ v (Jensen's gap), finite M biases each step, and the per-particle normaliser that an exact
    sampler must weight by is dropped (:class:`~tilted.inference.NestedIS` keeps it as a weight and is
    consistent). α = 0 is a greedy optimiser with no target.

    Parameters
    ----------
    num_candidates
        M ≥ 1, candidates per particle and step (default 20, the duplication size of the authors'
        image code, masa-ue/SVDD-image).
    temperature
        α in the selection: ``None`` (default) uses every factor's own temperature (selection
        ∝ exp(Σ_j r_j/α_j), the model's tilt); a number α ≥ 0 replaces them all; 0 selects the
        argmax of Σ_j r_j (SVDD's greedy variant).
    fill, num_fills
        Masked models: ψ̂ from ``num_fills`` fills of x̂_0 (``"soft"``, default 4) or its ``"argmax"``
        (with ``temperature=0`` the soft value becomes the best fill's Σ_j r_j).
    model, num_particles, num_runs, batch_size, progress
        As for :class:`~tilted.inference.walk.ChainEngine`.
    """

    def __init__(
        self,
        model,
        num_particles: int | None = None,
        *,
        num_candidates: int = 20,
        temperature: float | None = None,
        fill: str = "soft",
        num_fills: int = 4,
        num_runs=None,
        batch_size=None,
        progress=None,
        budget=None,
    ):
        super().__init__(
            model,
            num_particles,
            num_candidates=num_candidates,
            fill=fill,
            num_fills=num_fills,
            num_runs=num_runs,
            batch_size=batch_size,
            progress=progress,
            budget=budget,
        )
        self.temperature = None if temperature is None else non_negative("temperature", temperature)

    def step(self, plan: Plan, values: Values, walk: Walk, generator=None):
        cands, cand_x0, value, rewards = self.candidates(plan, values, walk, self.num_candidates, generator)
        if value is None:
            index = torch.zeros(cands.shape[:2], dtype=torch.long, device=cands.device)
        else:
            index = choose(value, self.temperature == 0, generator)
        chosen = Walk(walk.level - 1, take(cands, index, 0), take(cand_x0, index, 0), take(rewards, index, 1))
        return chosen, self.info(plan, cands.shape[0])

    def config(self) -> dict:
        return {**super().config(), "temperature": self.temperature}


class BeamSearch(CandidateSearch):
    """Beam search over the pretrained chain: keep the N best of N × M candidates at every step.

    Update rule at step k, for each run: every beam x_k^i (i = 1…N) proposes M candidates from the
    pretrained kernel p_k(· | x_k^i); all N·M are scored by v̂ = Σ_j r_j(x̂_0(c))/α_j (exact rewards at
    the last step), and the N highest become the beams at level k − 1, best first. The trace records
    each new beam's parent in ``ancestors`` (``resampled`` where the beams changed parents).

    Targets: nothing — a greedy optimiser of the value (the Uehara et al. tutorial's beam search).
    It returns N distinct-by-construction high-value states, not a sample: diversity collapses as
    beams share parents. Not guaranteed to find the best x_0 (the Tweedie value is a proxy), nor to
    improve on best-of-N at equal compute.

    Parameters
    ----------
    num_particles
        N, beams per run (and particles returned).
    num_candidates
        M ≥ 1, candidates per beam and step (default 20; with M = 1 the beams are pretrained draws,
        reordered by value at the last step).
    fill, num_fills
        Masked models: how ψ̂ is read off x̂_0, as for :class:`SVDD`.
    model, num_runs, batch_size, progress
        As for :class:`~tilted.inference.walk.ChainEngine`.
    """

    def step(self, plan: Plan, values: Values, walk: Walk, generator=None):
        cands, cand_x0, value, rewards = self.candidates(plan, values, walk, self.num_candidates, generator)
        R, N, M = cands.shape[:3]
        runs = torch.arange(R, device=cands.device)[:, None]
        if value is None:
            pick = torch.arange(N, device=cands.device).expand(R, N)
        else:
            pick = top(value.reshape(R, N * M), N)

        def keep(t, dim):
            flat = t.flatten(dim + 1, dim + 2)
            return flat[runs, pick] if dim == 0 else flat[:, runs, pick]

        rewards = None if rewards is None else keep(rewards, 1)
        chosen = Walk(walk.level - 1, keep(cands, 0), keep(cand_x0, 0), rewards)
        return chosen, self.info(plan, R, ancestors=pick // M)


class BestOfN(CandidateSearch):
    """Best-of-N: run M independent pretrained chains per particle and keep the highest final value.

    Update rule: draw M initial noises x_K^{(m)} ~ N(0, I) per returned particle, run the process's own
    chain from each — *stochastically* with the process's η (each chain also draws its own step noise),
    or deterministically with η = 0 (then this is a search over initial noise alone) — and return the
    x_0^{(m)} of largest Σ_j r_j(x_0^{(m)})/α_j (exact rewards; one factor: the largest reward).
    ``Importance(model, M).run().best()`` returns the same kind of draw from weighted particles.

    Targets: nothing — the α → 0 limit of importance sampling with M proposals; a strong baseline for
    reward maximisation at equal compute, with no diversity control.

    Parameters
    ----------
    num_particles
        N, particles returned per run (each the best of its own M chains).
    num_candidates
        M ≥ 1, chains per returned particle (default 20). M = 1 is the pretrained sampler.
    fill, num_fills
        Unused (only final, exact rewards are compared); accepted for a uniform signature.
    model, num_runs, batch_size, progress
        As for :class:`~tilted.inference.walk.ChainEngine`.
    """

    def init(self, plan: Plan, values: Values, generator=None):
        R = plan.runs(self.num_runs)
        x = plan.process.draw_initial((R, self._particles * self.num_candidates), generator)
        return Walk(plan.process.num_steps, x), self.info(plan, R)

    def cost(self, plan: Plan) -> Counts:
        """Per returned particle: M pretrained chains (K denoiser calls each) and their exact final rewards."""
        M = self.num_candidates
        return Counts(M * plan.process.num_steps, M * len(plan.factors), 0)

    def step(self, plan: Plan, values: Values, walk: Walk, generator=None):
        cands, cand_x0, value, rewards = self.candidates(plan, values, walk, 1, generator)
        x, x0, rewards = cands[:, :, 0], cand_x0[:, :, 0], None if rewards is None else rewards[..., 0]
        R = x.shape[0]
        if walk.level == 1:  # the last step: keep the best of each particle's M chains
            grouped = x.shape[:1] + (self._particles, self.num_candidates)
            index = choose(value.reshape(grouped), True)
            x = take(x.reshape(grouped + x.shape[2:]), index, 0)
            rewards = take(rewards.reshape(rewards.shape[:1] + grouped), index, 1)
            x0 = x
        return Walk(walk.level - 1, x, x0, rewards), self.info(plan, R)
