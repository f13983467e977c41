"""SMC moves and potentials for masked discrete diffusion: the Taylor proposal and fill potentials.

:class:`~tilted.inference.SMC` and :class:`~tilted.inference.Importance` run a
:class:`~tilted.distributions.MaskedDiffusion` through the same Feynman–Kac system as a Gaussian
model; this module supplies the pieces that differ. :class:`MaskedKernel` is what the engine builds
for a masked process (``SMC._setup`` dispatches on the process type); it evaluates the potentials and
moves the particles.

Potentials from fills
---------------------
x̂_0(x_k) is a table of per-position probabilities, not a sequence, so rewards are evaluated on
*fills*: clean sequences drawn from x̂_0 (visible tokens kept, masked positions drawn independently).
With φ the tempered log-potential Σ_j λ_j r_j/α_j,

- ``fill="soft"`` (default): φ_k = log (1/M) Σ_m exp(Σ_j λ_j r_j(f_m)/α_j) over M = ``num_fills`` fills
  f_m ~ x̂_0(x_k): a Monte-Carlo estimate of the soft value log E[exp(r(x_0)/α) | x_k] under the
  factorised denoiser;
- ``fill="argmax"``: φ_k = Σ_j λ_j r_j(argmax x̂_0(x_k))/α_j, one deterministic fill (cheaper; no
  randomness, but a hard decode that ignores the uncertainty of the masked positions).

SMC multiplies φ_k by w_k = α_k, the visible fraction (``potential_weight="signal"``; docs/engines.md).

A soft-fill ψ is random. The target stays exact: the weight of a whole path is
Π_k p_k/q_k · exp(ψ_0) whatever the intermediate ψ_k, as long as each ψ_k is computed once per particle,
stored in the state and gathered with it at resampling (the telescope ψ_{k-1} − ψ_k uses the *carried*
value), and the last potential ψ_0 = Σ_j r_j(x_0)/α_j is exact. The randomness only adds variance.

To keep that variance down the fills use common random numbers: each run draws M uniform vectors
u_m ∈ [0, 1)^L once, at its start, and fill m at level k is the inverse-CDF fill of x̂_0(x_k) at u_m
(:func:`fill_tokens`). Each fill is still a draw from the factorised x̂_0, but particles in the same
state get the same ψ (resampling copies of one particle, or the all-mask particles at level K, do not
create weight noise), and a particle's fills change from one level to the next only where x̂_0 does.
Given the uniforms, ψ is a deterministic function of the state, so the engine is exact conditionally
on them; runs draw their own and stay independent. ``Max``/``Sum`` potentials combine the φ_k the same
way as for Gaussian models.

The Taylor (gradient) proposal
------------------------------
The reward protocol: a reward is called with ``long`` token ids of shape (..., L) (the fills and the
final x_0; never with mask ids). For ``proposal="gradient"`` it is *also* called with float
probability vectors P of shape (..., L, V) and must be differentiable in them (for example
:class:`~tilted.distributions.TableReward`'s multilinear extension, or a network that embeds tokens by
``P @ embedding``). A reward that rejects float input or returns no gradient raises
:class:`~tilted.errors.ModelError`; use ``proposal="prior"``.

At level k the reward is differentiated at the relaxed input P = x̂_0(x_k) (one-hot at visible
positions): g = Σ_j (λ_j/α_j) ∇_P r_j(P), with λ of the next level. The first-order change of the
tempered reward when masked position i becomes token j (the rest of P fixed) is

    τ_i(j) = g_{ij} − Σ_{j'} P_{ij'} g_{ij'},        τ_i(mask) = 0,

(the gradient at the new one-hot entry minus its expectation under the current value P_i; staying masked
keeps P_i). The proposal tilts the prior kernel's categorical at each masked position,

    q_i(o) = p_i(o) exp(τ_i(o)) / Σ_{o'} p_i(o') exp(τ_i(o')),   o ∈ {0, …, V−1, mask},

visible positions are carried (q = p), and the weight correction is the exact
log p(x_{k-1} | x_k) − log q(x_{k-1} | x_k) = Σ_{masked i} [log p_i(o_i) − log q_i(o_i)]. For a reward
multilinear in P (e.g. a :class:`~tilted.distributions.TableReward`), τ_i(j) = E[r | fill_i = j] − E[r]
under the factorised fill law, exactly.
"""

from __future__ import annotations

import math

import torch

from tilted.distributions.masked import MaskedDiffusion, draw_categorical
from tilted.errors import ModelError, NonFiniteError, ShapeError
from tilted.factor import evaluate_reward

F64 = torch.float64
FILLS = ("soft", "argmax")


def check_fill(fill: str, num_fills: int) -> None:
    if fill not in FILLS:
        raise ValueError(f"fill must be one of {FILLS}, got {fill!r}")
    if isinstance(num_fills, bool) or not isinstance(num_fills, int) or num_fills < 1:
        raise ValueError(f"num_fills must be a positive integer, got {num_fills!r}")


def fill_tokens(prediction: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF fills: token j at position i where cdf_{i,j-1} ≤ u_i < cdf_{ij}, never a zero-probability token.

    ``prediction`` (..., L, V) and ``uniforms`` (..., M, L) broadcast over the leading dimensions; returns
    (..., M, L) ``long``. Each fill is a draw from the factorised law Π_i x̂_0(·)_i when u ~ U[0, 1)^L.
    """
    p = prediction.to(F64)
    cdf = p.cumsum(-1)
    # the last token of positive probability takes any u beyond the rounded total mass
    last = (p > 0).long().cumsum(-1).argmax(-1, keepdim=True)
    cdf = cdf.scatter(-1, last, math.inf)
    hit = (cdf.unsqueeze(-3) > uniforms.to(F64).unsqueeze(-1)) & (p > 0).unsqueeze(-3)  # (..., M, L, V)
    return hit.long().argmax(-1)


def draw_fills(prediction: torch.Tensor, fill: str, uniforms: torch.Tensor | None = None) -> torch.Tensor:
    """Clean sequences read off x̂_0 (R, N, L, V): (R, N, M, L).

    ``"argmax"``: M = 1, the most probable token at each position. ``"soft"``: inverse-CDF fills with the
    run's uniforms (R, M, L), shared by the particles of a run and kept for the whole run.
    """
    if fill == "argmax":
        return prediction.argmax(-1).unsqueeze(-2)
    return fill_tokens(prediction, uniforms[:, None])


def fill_potential(rewards: torch.Tensor, lambdas: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """φ = log mean_m exp(Σ_j λ_j r_{j,m}/α_j) from fill rewards (F, R, N, M), λ (F, R), α (F,): (R, N) float64."""
    tempered = (lambdas[:, :, None, None] * rewards.to(F64) / alpha[:, None, None, None]).sum(0)
    return torch.logsumexp(tempered, -1) - math.log(tempered.shape[-1])


def taylor_tilt(gradient: torch.Tensor, prediction: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
    """τ (..., L, V + 1): τ_i(j) = g_ij − Σ_j' P_ij' g_ij' at masked positions, 0 for "stay masked" and elsewhere."""
    g = gradient.to(F64)
    centred = g - (g * prediction.to(F64)).sum(-1, keepdim=True)
    tilt = torch.cat([centred, torch.zeros_like(centred[..., :1])], -1)
    return torch.where(masked[..., None], tilt, torch.zeros_like(tilt))


def masked_move(probs: torch.Tensor, tilt: torch.Tensor | None = None, generator=None):
    """Draw x' from the tilted kernel q ∝ p·exp(τ) per position; return x' and log p(x') − log q(x') (float64).

    ``probs`` (..., L, V + 1) is the prior kernel (:meth:`MaskedDiffusion.transition_probs`); with
    ``tilt=None`` this is the prior (bootstrap) move, ratio 0.
    """
    batch = probs.shape[:-2]
    if tilt is None:
        return draw_categorical(probs, generator), torch.zeros(batch, dtype=F64, device=probs.device)
    log_p = probs.to(F64).log()
    log_q = torch.log_softmax(log_p + tilt, -1)
    x = draw_categorical(log_q.exp(), generator)
    return x, at_tokens(log_p - log_q, x)


def at_tokens(log_probs: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Σ_i log_probs[..., i, x_i]: a per-position table (..., L, V + 1) read at the tokens x (..., L)."""
    at = x.expand(log_probs.shape[:-1]).unsqueeze(-1)
    return log_probs.gather(-1, at).squeeze(-1).sum(-1)


def relaxed_gradients(factors, P: torch.Tensor) -> torch.Tensor:
    """∇_P r_j(P) for every factor at relaxed inputs P (n, L, V): (F, n, L, V), float64."""
    n = P.shape[0]
    grads = []
    for f in factors:
        Pg = P.detach().to(torch.get_default_dtype()).requires_grad_(True)
        with torch.enable_grad():
            try:
                r = evaluate_reward(f.name, f.reward, (Pg,), (n,))
            except (ShapeError, TypeError, IndexError, RuntimeError, ValueError) as err:
                raise ModelError(
                    f"the Taylor proposal (proposal='gradient') calls reward {f.name!r} on float probability "
                    f"vectors of shape (..., L, V) = {tuple(P.shape)} and differentiates it; the call failed "
                    f"({type(err).__name__}: {err}). Make the reward accept relaxed inputs (e.g. "
                    "tilted.distributions.TableReward, or embed tokens by P @ E), or use proposal='prior'"
                ) from err
            if not r.requires_grad:
                raise ModelError(
                    f"reward {f.name!r} is not differentiable in its relaxed (…, L, V) input; the Taylor proposal "
                    "needs its gradient. Use proposal='prior'"
                )
            (g,) = torch.autograd.grad(r.sum(), Pg)
        if not torch.isfinite(g).all():
            raise NonFiniteError(f"the gradient of reward {f.name!r} at the relaxed input has non-finite entries")
        grads.append(g.to(F64))
    if not grads:
        return P.new_zeros((0,) + P.shape, dtype=F64)
    return torch.stack(grads)


class MaskedKernel:
    """What SMC does on a :class:`MaskedDiffusion`: evaluations on fills and categorical moves.

    The masked counterpart of :class:`~tilted.inference.proposals.GaussianKernel`, with the same methods.

    Parameters
    ----------
    process
        The masked diffusion.
    fill, num_fills
        How rewards are read off x̂_0 (module docstring): ``"soft"`` with M fills, or ``"argmax"``.
    """

    #: x_K is all masks, a point mass: there is nothing for a proposal to tilt
    tilts_initial = False

    def __init__(self, process: MaskedDiffusion, fill: str = "soft", num_fills: int = 4):
        check_fill(fill, num_fills)
        self.process = process
        self.fill = fill
        self.num_fills = num_fills if fill == "soft" else 1
        self.uniforms: torch.Tensor | None = None  # (R, M, L), drawn at the first evaluation of a run

    def evaluate(self, plan, x, k, with_rewards, with_grads, generator, counts, batch_size=None):
        """x̂_0 (R, N, L, V), fill rewards (F, R, N, M) and relaxed gradients (F, R, N, L, V) at level k."""
        process, F = self.process, len(plan.factors)
        R, N, L = x.shape
        flat = x.reshape(-1, L)
        n = flat.shape[0]
        size = batch_size or n
        with torch.no_grad():  # gradients flow only through the reward at the relaxed input, never the denoiser
            x0 = torch.cat([process.predict(c, k) for c in flat.split(size)])
        counts.denoiser_calls += n
        rewards = grads = None
        if with_rewards:
            if self.fill == "soft" and (self.uniforms is None or self.uniforms.shape[0] != R):
                self.uniforms = torch.rand((R, self.num_fills, L), generator=generator, dtype=F64, device=x0.device)
            fills = draw_fills(x0.reshape(R, N, L, -1), self.fill, self.uniforms).reshape(n, -1, L)
            parts = [plan.rewards(c) for c in fills.split(size)]
            rewards = torch.cat(parts, 1).detach().reshape(F, R, N, fills.shape[1])
            counts.reward_calls += F * n * fills.shape[1]
        if with_grads:
            parts = [relaxed_gradients(plan.factors, c) for c in x0.split(size)]
            grads = torch.cat(parts, 1).reshape((F, R, N) + x0.shape[1:])
            counts.gradient_evaluations += F * n
        return x0.reshape(R, N, L, -1), rewards, grads

    phi = staticmethod(fill_potential)

    def bound(self, drift: torch.Tensor, k: int, tau: float | None):
        """No trust region: a Taylor tilt reweights categorical probabilities, which stay in the simplex."""
        return drift, torch.zeros(drift.shape[:2], dtype=torch.bool, device=drift.device)

    def initial(self, shape, drift=None, generator=None):
        """x_K: all masks (q = p, log ratio 0)."""
        x = self.process.draw_initial(tuple(shape))
        return x, torch.zeros(tuple(shape), dtype=F64, device=x.device)

    def move(self, state, k: int, gradient: torch.Tensor | None = None, generator=None):
        """x_k → x_{k-1}: the prior kernel, or its Taylor tilt by g = Σ_j (λ_j/α_j) ∇r_j at x̂_0 (R, N, L, V)."""
        probs = self.process.transition_probs(state.x, k, state.x0)
        tilt = None if gradient is None else taylor_tilt(gradient, state.x0, state.x == self.process.mask_id)
        return masked_move(probs, tilt, generator)

    def pinned(self, x, x0, k: int, gradient, x_new) -> torch.Tensor:
        """log p − log q of a *given* x_{k-1} = ``x_new`` under the (tilted) move from (x, x̂_0) at level k."""
        if k > self.process.num_steps or gradient is None:
            return torch.zeros(x_new.shape[:-1], dtype=F64, device=x_new.device)
        log_p = self.process.transition_probs(x, k, x0).to(F64).log()
        log_q = torch.log_softmax(log_p + taylor_tilt(gradient, x0, x == self.process.mask_id), -1)
        return at_tokens(log_p - log_q, x_new)

    def log_transition(self, x, x0, k: int, x_new) -> torch.Tensor:
        """log p_k(x_new | x) for every particle (x (R, N, L), x_new broadcast), float64; −∞ where impossible."""
        return at_tokens(self.process.transition_probs(x, k, x0).to(F64).log(), x_new)
