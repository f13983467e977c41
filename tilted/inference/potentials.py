"""Intermediate log-potentials ψ_k of the Feynman–Kac system.

Every engine weights a move x_k → x_{k-1} by exp(ψ_{k-1} − ψ_k) (times p/q), and imposes the exact
terminal potential ψ_0 = Σ_j r_j(x_0)/α_j. The product telescopes, so the target is exact for any
choice below: ψ only shapes the variance. With φ_k = Σ_j λ_{j,k} r_j(x̂_0(x_k))/α_j:

- ``Tweedie`` (default; FK steering's "difference" potential): ψ_k = φ_k;
- ``Max`` (FK steering): ψ_k = max(ψ_{k+1}, φ_k), the best value seen along the path;
- ``Sum`` (FK steering): ψ_k = ψ_{k+1} + φ_k, the accumulated value along the path;
- ``Terminal``: ψ_k = 0 before the end (importance sampling: no intermediate reward calls);
- ``Twist(fn)``: ψ_k = fn(x_k, k), a user-supplied (e.g. exact) soft value;
- ``LearnedSoftValue.fit(model)`` (:mod:`tilted.inference.learned`): a soft value fitted by Monte-Carlo
  regression on pretrained chains;
- ``GaussianSoftValue(model)``: the soft value under a Gaussian approximation of the denoising
  posterior, x_0 | x_k ≈ N(x̂_0(x_k), Σ_k(x_k)) with Σ_k from second-order Tweedie (see its Notes).

The sum potential tilts the particles by about exp(K·r/α) before the final correction
exp(r/α − Σ_k φ_k); for concave rewards that correction can have infinite variance (for
r = −a‖x‖², once (K − 2)·a/α exceeds 1/(2 Var x)). It stays consistent, but its error bars do not
hold: prefer Tweedie or Max unless you know the weights are well behaved.

Path-dependent potentials (max, sum) keep ψ itself as their state, and ψ is gathered with the
particles at resampling, so no other bookkeeping is needed.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from tilted._random import Seed, as_generator
from tilted.distributions.gaussian import GaussianPath
from tilted.errors import ModelError
from tilted.inference.result import Counts
from tilted.plan import read_plan

F64 = torch.float64
COVARIANCES = ("full", "scalar")


class Potential:
    """ψ_k from the previous ψ and φ_k (see module docstring)."""

    #: whether φ_k (Tweedie rewards r(x̂_0(x_k))) is needed at every level
    uses_rewards: bool = True

    def start(self, phi: torch.Tensor, x: torch.Tensor, k: int) -> torch.Tensor:
        """ψ_K at the initial level."""
        return phi

    def advance(self, psi: torch.Tensor, phi: torch.Tensor, x: torch.Tensor, k: int) -> torch.Tensor:
        """ψ_k given ψ_{k+1} (gathered along the path) and φ_k."""
        return phi

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Tweedie(Potential):
    """ψ_k = Σ_j λ_{j,k} r_j(x̂_0(x_k)) / α_j (DAS, TDS; FK steering's "difference")."""


class Max(Potential):
    """ψ_k = max over the path so far of φ (FK steering's "max" potential)."""

    def advance(self, psi, phi, x, k):
        return torch.maximum(psi, phi)


class Sum(Potential):
    """ψ_k = Σ over the path so far of φ (FK steering's "sum" potential)."""

    def advance(self, psi, phi, x, k):
        return psi + phi


class Terminal(Potential):
    """ψ_k = 0 for k > 0: only the exact terminal reward weights the particles (importance sampling)."""

    uses_rewards = False

    def start(self, phi, x, k):
        return x.new_zeros(x.shape[:2], dtype=torch.float64)

    def advance(self, psi, phi, x, k):
        return torch.zeros_like(psi)


class Twist(Potential):
    """ψ_k = fn(x_k, k): a user-supplied twist, e.g. an exact or learned soft value v_k/α.

    ``fn(x, k)`` maps states of shape (..., *event) at level k to one log-potential per particle.
    With the gradient proposal its gradient ∇_x fn(x_k, k − 1) sets the drift.
    """

    uses_rewards = False

    def __init__(self, fn: Callable[[torch.Tensor, int], torch.Tensor]):
        if not callable(fn):
            raise ModelError("Twist(fn): fn must be callable as fn(x, k)")
        self.fn = fn

    def __call__(self, x: torch.Tensor, k: int) -> torch.Tensor:
        with torch.no_grad():  # a value only: a differentiable fn would keep every step's graph alive
            out = self.fn(x, k)
        if not isinstance(out, torch.Tensor) or out.shape != x.shape[:2]:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ModelError(
                f"twist returned {got} for states of shape {tuple(x.shape)}; return one value per particle"
            )
        return out.to(torch.float64)

    def start(self, phi, x, k):
        return self(x, k)

    def advance(self, psi, phi, x, k):
        return self(x, k)

    def gradient(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """∇_x fn(x, k) for every particle."""
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            out = self.fn(xg, k)
            if not out.requires_grad:
                raise ModelError("the twist is not differentiable in x; use proposal='prior'")
            return torch.autograd.grad(out.sum(), xg)[0]


class GaussianSoftValue(Twist):
    """ψ_k(x) = log (1/M) Σ_m exp(Σ_j r_j(x̂_0(x) + L_k(x) ε_m)/α_j): the soft value of a Gaussian posterior.

    Parameters
    ----------
    model, *args, **kwargs
        The Pyro model (and its arguments) the engine runs; its Gaussian process and factors are read
        from it, so the potential uses exactly the model's rewards and temperatures.
    num_draws
        M, draws of x_0 per particle and level.
    covariance
        ``"full"``: Σ_k from the exact Jacobian (d vector–Jacobian products per particle and level;
        small d); ``"scalar"``: Σ_k ≈ s²I with s² = c_k tr(J)/d, tr(J) by one Hutchinson probe (one
        vector–Jacobian product; large d).
    seed
        Seed or generator of the draws ε_m (and probes), drawn afresh at the start of every run.
    batch_size
        Particles per evaluation (``None``: all at once).

    Notes
    -----
    For x_k = √ᾱ_k x_0 + √(1 − ᾱ_k) ε, second-order Tweedie gives the posterior covariance

        Cov[x_0 | x_k] = (1 − ᾱ_k)/√ᾱ_k · J_k(x_k),      J_k = ∂x̂_0/∂x_k,

    exact for the data diffusion of any data law. The potential replaces the posterior by
    N(x̂_0, Σ_k), Σ_k = c_k J_k (symmetrised, negative eigenvalues clipped; c_k = (1 − ᾱ_k)/√ᾱ_k),
    and estimates ψ_k = log E[exp(Σ_j r_j(x_0)/α_j)] under it by M draws x̂_0 + L ε_m, with L = Σ_k^½
    the symmetric square root (continuous in x, unlike a Cholesky or eigenvector factor, whose draws
    would jump where the factor does).
    The ε_m are common random numbers: drawn once per run (at ``start``) and shared by its particles
    and levels, so particles in equal states get equal ψ and ψ is a deterministic function of the
    state given them; the engine stays exact (ψ only shapes the variance; ψ_0 is the exact reward).
    For Gaussian data and a linear reward bᵀx the estimate is bᵀx̂_0 plus a constant per run and
    level, which is the exact soft value of a DDPM chain up to that constant: with the gradient
    proposal every weight is equal at every step. Where the posterior is multimodal (a noisy state
    between modes) the Gaussian spreads mass between the modes and over-values that region, less
    than r(x̂_0) does. The factors' tempering schedules are not applied (λ ≡ 1).

    Cost per particle and level, counted in :attr:`counts` (the engine's ``result.counts`` when run
    by :class:`~tilted.inference.SMC`, which binds them; the engine's own x̂_0 is not shared): one
    denoiser call, d (``"full"``) or 1 (``"scalar"``) gradient evaluations for Σ_k, F·M reward calls;
    the gradient proposal's ∇_x ψ (through x̂_0, L held fixed) costs the same again, plus the one
    gradient evaluation per particle that the engine counts for every twist gradient.
    """

    def __init__(
        self,
        model,
        *args,
        num_draws: int = 8,
        covariance: str = "full",
        seed: Seed = None,
        batch_size: int | None = None,
        **kwargs,
    ):
        if isinstance(num_draws, bool) or not isinstance(num_draws, int) or num_draws < 1:
            raise ModelError(f"num_draws must be a positive integer, got {num_draws!r}")
        if covariance not in COVARIANCES:
            raise ModelError(f"covariance must be one of {COVARIANCES}, got {covariance!r}")
        self.plan = read_plan(model, *args, **kwargs)
        if not isinstance(self.plan.process, GaussianPath):
            raise ModelError(
                f"GaussianSoftValue needs a Gaussian-path process (diffusion or flow matching), got "
                f"{type(self.plan.process).__name__}"
            )
        if self.plan.grouped:
            raise ModelError(
                "GaussianSoftValue runs processes without groups (its d Jacobian products suit small d); for one "
                "chain per prompt use the default Tweedie potential"
            )
        super().__init__(self.value)
        self.num_draws, self.covariance, self.batch_size = num_draws, covariance, batch_size
        self.device = self.plan.process.device
        self.generator = as_generator(seed, self.device)
        self.counts = Counts()
        self.draws: torch.Tensor | None = None  # ε, (R, M, *E)
        self.probes: torch.Tensor | None = None  # Rademacher v, (R, *E)

    def __repr__(self) -> str:
        return f"GaussianSoftValue(num_draws={self.num_draws}, covariance={self.covariance!r})"

    def bind(self, counts: Counts) -> None:
        """Count this potential's evaluations in an engine's counts (SMC calls this at the start of a run)."""
        self.counts = counts

    def redraw(self, runs: int) -> None:
        """Fresh common random numbers ε_m (and Hutchinson probes) for ``runs`` runs."""
        event = self.plan.process.event_shape
        self.draws = torch.randn(
            (runs, self.num_draws) + event, generator=self.generator, dtype=F64, device=self.device
        )
        signs = torch.randint(0, 2, (runs,) + event, generator=self.generator, device=self.device)
        self.probes = (2 * signs - 1).to(F64)

    def start(self, phi, x, k):
        self.redraw(x.shape[0])
        return self(x, k)

    def factor(self, k: int, leaf: torch.Tensor, x0: torch.Tensor, probes: torch.Tensor):
        """L with LLᵀ = Σ_k from x̂_0 = x0 at leaf, float64, no gradient: (n, d, d), or (n, 1, 1) for Σ_k = s²I."""
        n, d = x0.shape[0], x0[0].numel()
        if k == 0:
            return torch.zeros(n, d, d, dtype=F64, device=x0.device)
        process = self.plan.process
        if float(process.signal[k]) == 0:
            raise ModelError(
                f"GaussianSoftValue: level {k} is pure noise (a_k = 0), where Tweedie's covariance (s²/a)∂x̂_0/∂x "
                "is undefined; give FlowMatching times= that stop short of t = 1"
            )
        c = float(process.noise[k]) ** 2 / float(process.signal[k])  # Tweedie: Σ_k = (s²/a) ∂x̂_0/∂x_k
        flat = x0.reshape(n, d)
        if self.covariance == "scalar":
            (vj,) = torch.autograd.grad(flat, leaf, probes.to(flat.dtype), retain_graph=True)
            trace = (vj.reshape(n, d).to(F64) * probes).sum(-1)
            self.counts.gradient_evaluations += n
            return (c * trace / d).clamp_min(0).sqrt().reshape(n, 1, 1)
        rows = [torch.autograd.grad(flat[:, i].sum(), leaf, retain_graph=True)[0].reshape(n, d) for i in range(d)]
        self.counts.gradient_evaluations += d * n
        cov = c * torch.stack(rows, -2).to(F64)
        evals, vecs = torch.linalg.eigh(0.5 * (cov + cov.mT))
        return (vecs * evals.clamp_min(0).sqrt().unsqueeze(-2)) @ vecs.mT  # Σ^½: continuous in x

    def _evaluate(self, x: torch.Tensor, k: int, with_grad: bool):
        """ψ_k (R, N) and, with ``with_grad``, ∇_x ψ_k through x̂_0 with L held fixed."""
        if self.draws is None or self.draws.shape[0] != x.shape[0]:
            self.redraw(x.shape[0])
        process, event = self.plan.process, self.plan.process.event_shape
        R, N, M = x.shape[0], x.shape[1], self.num_draws
        flat = x.reshape((R * N,) + event)
        eps = self.draws[:, None].expand((R, N, M) + event).reshape(R * N, M, -1)
        probes = self.probes[:, None].expand((R, N) + event).reshape((R * N,) + event)
        size = self.batch_size or flat.shape[0]
        psis, grads = [], []
        for i in range(0, flat.shape[0], size):
            sl = slice(i, i + size)
            with torch.enable_grad():
                leaf = flat[sl].detach().requires_grad_(True)
                x0 = process.predict(leaf, k) if k > 0 else leaf
                L = self.factor(k, leaf, x0, probes[sl])
                n = leaf.shape[0]
                centre = x0 if with_grad else x0.detach()
                spread = L * eps[sl] if L.shape[-1] == 1 else torch.einsum("nij,nmj->nmi", L, eps[sl])
                samples = centre.reshape(n, 1, -1).to(F64) + spread
                rewards = self.plan.rewards(samples.reshape((n, M) + event))  # (F, n, M)
                psi = torch.logsumexp(self.plan.log_factor(rewards.to(F64)), -1) - math.log(M)
                if with_grad:
                    (g,) = torch.autograd.grad(psi.sum(), leaf)
                    grads.append(g)  # the engine counts this gradient evaluation
            psis.append(psi.detach())
            self.counts.denoiser_calls += n if k > 0 else 0
            self.counts.reward_calls += len(self.plan.factors) * M * n
        psi = torch.cat(psis).reshape(R, N)
        return psi, torch.cat(grads).reshape(x.shape) if with_grad else None

    def value(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """ψ_k(x) for states x of shape (R, N, *E) (R runs with their own draws)."""
        return self._evaluate(x, k, False)[0]

    def gradient(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """∇_x ψ_k(x) through x̂_0 with the factor L held fixed (a proposal drift; any drift keeps SMC exact)."""
        return self._evaluate(x, k, True)[1]


POTENTIALS = {"tweedie": Tweedie, "difference": Tweedie, "max": Max, "sum": Sum, "terminal": Terminal}


def as_potential(potential: Potential | str | Callable) -> Potential:
    if isinstance(potential, Potential):
        return potential
    if isinstance(potential, str):
        if potential not in POTENTIALS:
            raise ModelError(f"unknown potential {potential!r}; use one of {sorted(POTENTIALS)} or Twist(fn)")
        return POTENTIALS[potential]()
    if callable(potential):
        return Twist(potential)
    raise ModelError(f"potential must be a name, a Potential or a callable fn(x, k), got {type(potential).__name__}")
