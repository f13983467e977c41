"""Gradient guidance: DPS, FreeDoM and MPGD — approximate samplers that push each step up the reward.

All three take the pretrained step x_k → x_{k-1} and add a step along the gradient of the value
ψ̂ = Σ_j r_j/α_j of the denoiser's prediction (:mod:`tilted.inference.values`):

    x_{k-1} = μ_k(x_k) + σ_k z + ρ_k · g_k,        z ~ N(0, I),

where μ_k, σ_k are the pretrained kernel's mean and standard deviation (DDPM or DDIM with the
process's η), and the methods differ in g_k and ρ_k:

======== ========================================================== ===============================
engine   g_k                                                        ρ_k
======== ========================================================== ===============================
DPS      ∇_{x_k} ψ̂(x̂_0(x_k)), backpropagated through the denoiser    ζ (``scale``)
FreeDoM  ∇_{x_k} ψ̂(x̂_0(x_k)), through the denoiser, with time travel ζ·√ᾱ_k while τ_k > stop·T, then 0
MPGD     ∇_{x̂_0} ψ̂(x̂_0), at the prediction (no denoiser backprop)   ζ
======== ========================================================== ===============================

The temperatures α_j act as inverse guidance strengths; the factors' tempering schedules are not
used. With ζ = 0 (or a reward that does not depend on x) the update is the pretrained step and the
engines draw exactly what ``process.sample`` draws with the same seed (the noise is drawn in the same
order; FreeDoM's time travel draws more).

What they do not guarantee: none of them samples the tilted target p_θ·exp(r/α)/Z, for any ζ. The
added drift approximates the soft-value gradient ∇ log E[exp(r(x_0)/α) | x_k] by the gradient at the
posterior mean (Jensen's gap, exact only for linear rewards on linear-Gaussian chains), with a step
size ζ that is a free parameter rather than the σ_k² of the locally optimal kernel, and no weight
corrects the error. They return unweighted particles (uniform ``log_weights``, NaN ``log_evidence``:
:mod:`tilted.inference.walk`). For the exact target use :class:`~tilted.inference.SMC` with
``proposal="gradient"`` (the same drift, σ_k²-scaled and weighted).

Deterministic kernels (DDIM η = 0, the last step to ᾱ_0 = 1) need no density here: the guided
step is the deterministic update plus ρ_k g_k. Rewards must be differentiable (a
:class:`~tilted.errors.ModelError` says otherwise and names the derivative-free engines).

Cost per step and particle: one denoiser call, one reward call per factor and one gradient (one
backward pass through denoiser and rewards for DPS/FreeDoM, through the rewards only for MPGD);
FreeDoM repeats this ``recurrence`` times on the steps of its time-travel window.

Masked (discrete) diffusion has no continuous state to push: :class:`TaylorGuidance` tilts the
unmasking categoricals by the first-order change of the reward at the relaxed prediction instead.
"""

from __future__ import annotations

import math

import torch

from tilted.distributions.masked import MaskedDiffusion
from tilted.errors import ModelError
from tilted.inference.discrete import masked_move, taylor_tilt
from tilted.inference.proposals import require_differentiable
from tilted.inference.result import Counts
from tilted.inference.values import Values
from tilted.inference.walk import ChainEngine, Walk, non_negative, positive_int
from tilted.plan import Plan


class Guidance(ChainEngine):
    """Base of the guidance engines: x_{k-1} = μ_k + σ_k z + ρ_k g_k (module docstring).

    Subclasses set :attr:`through_denoiser` and may override :meth:`step_size` and :meth:`repeats`.
    """

    #: whether g_k is ∇_{x_k} ψ̂(x̂_0(x_k)) (True) or ∇_{x̂_0} ψ̂ at the prediction (False)
    through_denoiser = True

    def __init__(
        self,
        model,
        num_particles: int | None = None,
        *,
        scale: float = 1.0,
        num_runs=None,
        batch_size=None,
        progress=None,
        budget=None,
    ):
        super().__init__(
            model, num_particles, num_runs=num_runs, batch_size=batch_size, progress=progress, budget=budget
        )
        self.scale = non_negative("scale", scale)

    def check(self, plan: Plan) -> None:
        if isinstance(plan.process, MaskedDiffusion):
            raise ModelError(
                f"{type(self).__name__} guides Gaussian diffusion through continuous gradients; for a masked "
                "(discrete) model use TaylorGuidance, the Taylor tilt of its categoricals"
            )
        super().check(plan)
        if self.scale > 0:
            require_differentiable(plan.factors, type(self).__name__)

    def step_size(self, process, k: int) -> float:
        """ρ_k, the multiplier of g_k at step k."""
        return self.scale

    def repeats(self, process, k: int) -> int:
        """How many times step k is taken (time travel re-noises x_{k-1} → x_k in between)."""
        return 1

    def cost(self, plan: Plan) -> Counts:
        """Per particle: each (repeated) step calls the denoiser once, and where it guides also the rewards and
        one gradient; the final rewards are exact."""
        process, F = plan.process, len(plan.factors)
        guided = {k: F > 0 and self.step_size(process, k) > 0 for k in process.levels}
        rep = {k: self.repeats(process, k) for k in process.levels}
        moves = sum(rep.values())
        with_grad = sum(rep[k] for k in process.levels if guided[k])
        return Counts(moves, F * with_grad + F, with_grad)

    def move(self, plan: Plan, values: Values, x: torch.Tensor, k: int, generator=None) -> torch.Tensor:
        """One guided step x_k → x_{k-1}."""
        process = plan.process
        rho = self.step_size(process, k)
        guide = rho > 0 and len(plan.factors) > 0
        if guide:
            x0, g = values.gradient(x, k, self.through_denoiser)
        else:
            x0 = values.predict(x, k)
        mean, sigma = process.transition_moments(x, k, x0)
        if sigma > 0:
            mean = mean + sigma * torch.randn(mean.shape, generator=generator, dtype=mean.dtype, device=mean.device)
        return mean + rho * g if guide else mean

    def step(self, plan: Plan, values: Values, walk: Walk, generator=None):
        process, k, x = plan.process, walk.level, walk.x
        times = self.repeats(process, k)
        for i in range(times):
            prev = self.move(plan, values, x, k, generator)
            if i + 1 < times:  # time travel: x_k ~ q(x_k | x_{k-1}), the forward kernel
                mean, sd = process.forward_moments(prev, k)
                x = mean + sd * torch.randn(prev.shape, generator=generator, dtype=prev.dtype, device=prev.device)
        return Walk(k - 1, prev), self.info(plan, prev.shape[0])

    def config(self) -> dict:
        return {**super().config(), "scale": self.scale}


class DPS(Guidance):
    """Diffusion posterior sampling (Chung et al., ICLR 2023) with a reward: reconstruction guidance.

    Update rule (step k = K, …, 1; μ_k, σ_k the pretrained DDPM/DDIM kernel)::

        x_{k-1} = μ_k(x_k) + σ_k z + ζ · ∇_{x_k} Σ_j r_j(x̂_0(x_k)) / α_j

    with the gradient backpropagated through the denoiser. This is the reference implementation's
    update (``x_t -= scale · ∇_{x_t} ‖y − A(x̂_0)‖``) with the loss ‖y − A(x̂_0)‖ replaced by −ψ̂: a
    plain step size ζ on the gradient. The paper writes ζ_i = ζ'/‖y − A(x̂_0)‖ on the gradient of the
    *squared* residual, which is the same step on the unsquared norm; a general reward has no residual
    to normalise by, so no normalisation is applied. To reproduce DPS on an inverse problem, state the
    reward r(x) = −‖y − A(x)‖ with temperature 1.

    Targets: nothing exactly — an approximate posterior sampler (module docstring). It does not
    sample p_θ·exp(r/α)/Z; its samples move towards high reward by an amount set by ζ, not by α alone.

    Parameters
    ----------
    model, num_particles, num_runs, batch_size, progress
        As for :class:`~tilted.inference.walk.ChainEngine`.
    scale
        ζ ≥ 0 (default 1.0, the reference code's default; its task configurations use 0.3–1.0 for
        residual-norm losses on images). Tune it for your reward: too large a step overshoots.
    """


class FreeDoM(Guidance):
    """FreeDoM (Yu et al., ICCV 2023): training-free energy guidance with time travel.

    Update rule at step k (training timestep τ_k, T training timesteps)::

        x_{k-1} = μ_k(x_k) + σ_k z + ρ_k ∇_{x_k} Σ_j r_j(x̂_0(x_k)) / α_j,
        ρ_k = ζ √ᾱ_k  if τ_k > stop·T,  else 0,

    and, on the steps with travel_window[0]·T ≤ τ_k ≤ travel_window[1]·T, *time travel*: re-noise
    x_k ← √(ᾱ_k/ᾱ_{k-1}) x_{k-1} + √(1 − ᾱ_k/ᾱ_{k-1}) ε with the forward kernel and take the guided step
    again, ``recurrence`` times in all. Defaults follow the reference code (vvictoryuki/FreeDoM,
    ``Face-GD/functions/denoising.py``): ρ_t = √ᾱ_t·rho_scale with ``rho_scale=1.0``, guidance off for
    t ≤ ``stop`` = 100 of 1000 training steps, and r = 10 recurrences for 500 ≤ t ≤ 800 (its ImageNet
    setting; its face setting uses r = 1, no time travel).

    Targets: nothing exactly. Even with ζ = 0, time travel does not leave the pretrained chain's law
    invariant: forward-noising then denoising preserves a marginal only when the denoising kernel is
    the exact reverse of the forward one, which a finite-step sampler's is not (tests compute the
    resulting law in closed form on a linear-Gaussian chain). With ``recurrence=1`` and ζ = 0 it is
    the pretrained sampler.

    Parameters
    ----------
    scale
        ζ ≥ 0, the ``rho_scale`` of the reference code (default 1.0; its tasks use 0.2–500).
    recurrence
        r ≥ 1, steps taken per level inside the travel window (default 10).
    travel_window
        (lo, hi): fractions of the training time whose steps time-travel (default (0.5, 0.8)).
    stop
        Fraction of the training time below which guidance is off (default 0.1).
    model, num_particles, num_runs, batch_size, progress
        As for :class:`~tilted.inference.walk.ChainEngine`.
    """

    def __init__(
        self,
        model,
        num_particles: int | None = None,
        *,
        scale: float = 1.0,
        recurrence: int = 10,
        travel_window: tuple[float, float] = (0.5, 0.8),
        stop: float = 0.1,
        num_runs=None,
        batch_size=None,
        progress=None,
        budget=None,
    ):
        super().__init__(
            model,
            num_particles,
            scale=scale,
            num_runs=num_runs,
            batch_size=batch_size,
            progress=progress,
            budget=budget,
        )
        positive_int("recurrence", recurrence)
        lo, hi = (non_negative("travel_window", v) for v in travel_window)
        if not lo <= hi <= 1:
            raise ModelError(
                f"travel_window must be (lo, hi) with 0 ≤ lo ≤ hi ≤ 1 (fractions of the training time), got {travel_window!r}"
            )
        self.recurrence = recurrence
        self.travel_window = (lo, hi)
        self.stop = non_negative("stop", stop)

    @staticmethod
    def _time(process, k: int) -> float:
        """The time of level k as a fraction in [0, 1] (diffusion: τ_k / T; flow matching: t_k)."""
        return process.time(k)

    def step_size(self, process, k: int) -> float:
        if self._time(process, k) <= self.stop:
            return 0.0
        return self.scale * math.sqrt(float(process.alphas_cumprod[k]))

    def repeats(self, process, k: int) -> int:
        lo, hi = self.travel_window
        return self.recurrence if lo <= self._time(process, k) <= hi else 1

    def travel_levels(self, process) -> list[int]:
        """The levels k whose step time-travels."""
        return [k for k in process.levels if self.repeats(process, k) > 1]

    def config(self) -> dict:
        return {
            **super().config(),
            "recurrence": self.recurrence,
            "travel_window": self.travel_window,
            "stop": self.stop,
        }


class MPGD(Guidance):
    """Manifold-preserving guided diffusion (He et al., ICLR 2024), without projection.

    Update rule: guide the prediction, not the state, and take the DDIM/DDPM step with it::

        x̂_0' = x̂_0(x_k) + (ζ / √ᾱ_{k-1}) ∇_{x̂_0} Σ_j r_j(x̂_0) / α_j,
        x_{k-1} = √ᾱ_{k-1} x̂_0' + √(1 − ᾱ_{k-1} − σ_k²) ε̂(x_k) + σ_k z,

    with ε̂(x_k) from the *unguided* prediction (so x_{k-1} = μ_k + σ_k z + ζ ∇_{x̂_0} ψ̂). The gradient
    is of the reward at x̂_0 only: no backpropagation through the denoiser, so a step costs one
    denoiser call and one reward gradient. This is ``mpgd_wo_proj`` of the reference code
    (KellyYutongHe/mpgd_pytorch: ``x_0_hat -= scale/√ᾱ_prev · ∇ loss``); the autoencoder projection
    variants need a latent model and are not provided.

    Targets: nothing exactly (module docstring): the step keeps x̂_0 near the data manifold in image
    models but does not correct for the tilt.

    Parameters
    ----------
    scale
        ζ ≥ 0 (default 1.0, the reference code's default; its FFHQ scripts use 4 at 100 steps,
        7.5 at 50 and 17.5 at 20 for residual-norm losses).
    model, num_particles, num_runs, batch_size, progress
        As for :class:`~tilted.inference.walk.ChainEngine`.
    """

    through_denoiser = False


class TaylorGuidance(ChainEngine):
    """Discrete gradient guidance for masked diffusion: the Taylor tilt of the unmasking categoricals.

    Update rule at step k. With P = x̂_0(x_k) (per-position probabilities, one-hot at visible positions)
    and g = Σ_j ∇_P r_j(P)/α_j the gradient of the rewards at the relaxed input (rewards must accept
    float (..., L, V) inputs, e.g. :class:`~tilted.distributions.TableReward` or a network embedding
    tokens by P @ E), every masked position i is drawn from the prior categorical tilted by the
    first-order change of the reward::

        q_i(o) ∝ p_k(x_{k-1,i} = o | x_k) · exp(ζ τ_i(o)),   τ_i(j) = g_ij − Σ_j' P_ij' g_ij',   τ_i(mask) = 0,

    and visible positions are carried. This is TAG, the Taylor-approximated guidance of Nisonoff et al.
    ("Unlocking guidance for discrete state-space diffusion and flow models", ICLR 2025), for masked
    diffusion, and the move of ``SMC(model, N, proposal="gradient")`` on masked models
    (:func:`tilted.inference.discrete.taylor_tilt`) without its weight. ζ = 1 (default, TAG's guidance
    strength γ = 1) is the first-order approximation of the optimal kernel p_k·exp(v_{k-1}/α − v_k/α).

    Targets: approximately the tilted target. Exact in one case (tested): one step (K = 1) and an
    additive reward r(s) = Σ_i f_i(s_i) with a multilinear relaxation — then τ is the exact per-position
    tilt. Otherwise not guaranteed: the first-order expansion ignores interactions between positions
    unmasked together and uses the value at x̂_0, and no weight corrects either (SMC with
    ``proposal="gradient"`` does). It returns unweighted particles (:mod:`tilted.inference.walk`).

    Parameters
    ----------
    scale
        ζ ≥ 0 (default 1.0). ζ = 0 is the pretrained sampler, draw for draw.
    model, num_particles, num_runs, batch_size, progress
        As for :class:`~tilted.inference.walk.ChainEngine`.

    Cost per step and particle: one denoiser call and one gradient per factor (the reward at the relaxed
    input, no denoiser backprop); the final rewards are exact.
    """

    def __init__(
        self,
        model,
        num_particles: int | None = None,
        *,
        scale: float = 1.0,
        num_runs=None,
        batch_size=None,
        progress=None,
        budget=None,
    ):
        super().__init__(
            model, num_particles, num_runs=num_runs, batch_size=batch_size, progress=progress, budget=budget
        )
        self.scale = non_negative("scale", scale)

    def cost(self, plan: Plan) -> Counts:
        """Per particle: one denoiser call per step, F relaxed gradients per step when guiding, exact final rewards."""
        K, F = plan.process.num_steps, len(plan.factors)
        return Counts(K, F, F * K if self.scale > 0 and F > 0 else 0)

    def check(self, plan: Plan) -> None:
        if not isinstance(plan.process, MaskedDiffusion):
            raise ModelError(
                f"TaylorGuidance runs masked diffusion, got {type(plan.process).__name__}; for Gaussian diffusion "
                "use DPS, FreeDoM or MPGD"
            )
        if self.scale > 0:
            require_differentiable(plan.factors, type(self).__name__)

    def step(self, plan: Plan, values: Values, walk: Walk, generator=None):
        process, k, x = plan.process, walk.level, walk.x
        tilt = None
        if self.scale > 0 and len(plan.factors) > 0:
            x0, g = values.relaxed_gradient(x, k)
            tilt = taylor_tilt(self.scale * g, x0, x == process.mask_id)
        else:
            x0 = values.predict(x, k)
        x_new, _ = masked_move(process.transition_probs(x, k, x0), tilt, generator)
        return Walk(k - 1, x_new), self.info(plan, x.shape[0])

    def config(self) -> dict:
        return {**super().config(), "scale": self.scale}
