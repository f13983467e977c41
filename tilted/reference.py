"""Closed-form exact targets: Gaussian laws tilted by quadratic rewards, and linear-Gaussian chains.

Tests and benchmarks need targets whose tilted law and evidence are known exactly. Three facts give
them (all in float64):

1. **Gaussian expectation of an exponentiated quadratic.** For x ~ N(m, S), S = L Lᵀ (L from an
   eigendecomposition, so S may be singular) and r(x) = xᵀAx + bᵀx + c,

       log E[exp(r(x)/α)] = r(m)/α − ½ log|B| + ½ uᵀ B⁻¹ u,
       B = I − 2 LᵀAL/α,   u = Lᵀ(2Am + b)/α,

   finite iff B ≻ 0. As a function of m it is the quadratic mᵀPm + pᵀm + p₀ with
   G = L B⁻¹ Lᵀ, P = A/α + 2AGA/α², p = b/α + 2AGb/α², p₀ = c/α + bᵀGb/(2α²) − ½ log|B|.
2. **Tilted Gaussian.** N(m, S)·exp(r/α)/Z = N(m + G(2Am + b)/α, G), log Z as in 1 (G = (S⁻¹ − 2A/α)⁻¹
   when S is invertible). A Gaussian mixture tilts component by component, with weights w_c Z_c / Z.
3. **Linear-Gaussian chain.** For one-component Gaussian data N(μ, Σ) the exact denoiser is affine,
   x̂₀(x_k) = A_k x_k + c_k with A_k = √ᾱ_k Σ C_k⁻¹, C_k = ᾱ_k Σ + (1−ᾱ_k)I, c_k = μ − √ᾱ_k A_k μ, so
   each step of :class:`~tilted.distributions.GaussianDiffusion` is x_{k-1} = M_k x_k + m_k + σ_k ε with

       g_k = √ᾱ_{k-1} − s_k √ᾱ_k/√(1−ᾱ_k),  h_k = s_k/√(1−ᾱ_k),  s_k = √(1 − ᾱ_{k-1} − σ_k²),
       M_k = g_k A_k + h_k I,  m_k = g_k c_k.

   On any Gaussian path x_k = a_k x₀ + s_k ε (flow matching: a = 1 − t, s = t) the same holds with
   A_k = a_k Σ C_k⁻¹, C_k = a_k² Σ + s_k² I, c_k = μ − a_k A_k μ, g_k = a_{k-1} − r_k a_k/s_k,
   h_k = r_k/s_k, r_k = √(s_{k-1}² − σ_k²) (for a = √ᾱ, s = √(1 − ᾱ) these are the formulas above).
   Marginals, the conditional law of x₀ given x_k, the chain's tilted target and the exact soft value
   ψ_k(x) = log E[exp(r(x₀)/α) | x_k = x] (a quadratic in x) follow by composing affine maps.

The chain's law of x₀ is *not* the data law: it is the law the discretised sampler actually draws
(x_K ~ N(0, I) instead of the noised data law, and a finite-step discretisation). Engines that are
exact for the chain must be compared against :meth:`LinearGaussianChain.tilted`, never against the
tilted data law. For N((4, 4), 0.3·I) data, the linear schedule and trailing spacing,
KL(chain ‖ data) is 0.23 at 10 steps, 0.0072 at 100 and 1.0e-4 at 1000 with η = 1 (mostly a variance
deficit: 0.138, 0.265, 0.296 instead of 0.3); deterministic DDIM (η = 0) gives 0.13, 0.0021 and
6.6e-4, where it stalls at the prior mismatch KL(N(0, I) ‖ law of x_K) = 6.5e-4, which a
deterministic (bijective) chain carries to x₀ unchanged. :func:`chain_data_kl_table` computes these,
and ``docs/reference.md`` tabulates them with sampled distances for the DAS Gaussian-mixture toy.
"""

from __future__ import annotations

import math

import torch

from tilted._random import Seed, as_generator
from tilted.distributions.gaussian import GaussianDiffusion, GaussianPath
from tilted.distributions.mixture import GaussianMixture
from tilted.errors import ModelError, NoDensityError, ShapeError
from tilted.rewards.analytic import Quadratic

F64 = torch.float64


# -- Gaussian laws tilted by a quadratic reward -----------------------------------------------------
def _check(reward: Quadratic, temperature: float, dim: int) -> float:
    if not isinstance(reward, Quadratic):
        raise ModelError(f"closed-form tilts need a tilted.rewards.Quadratic reward, got {type(reward).__name__}")
    if reward.dim != dim:
        raise ShapeError(f"the reward has dimension {reward.dim} but the Gaussian has dimension {dim}")
    alpha = float(temperature)
    if not (math.isfinite(alpha) and alpha > 0):
        raise ModelError(f"temperature must be finite and > 0, got {temperature}")
    return alpha


def _inputs(mean, cov, reward: Quadratic, temperature: float):
    """mean, cov as float64 (autograd kept), checked against each other and the reward; α."""
    mean, cov = torch.as_tensor(mean).to(F64), torch.as_tensor(cov).to(F64)
    d = mean.shape[-1]
    if cov.ndim < 2 or cov.shape[-2:] != (d, d):
        raise ShapeError(
            f"mean of shape {tuple(mean.shape)} needs a covariance of shape (..., {d}, {d}), got {tuple(cov.shape)}"
        )
    return mean, cov, _check(reward, temperature, d)


def _sqrt_factor(cov: torch.Tensor) -> torch.Tensor:
    """L with L Lᵀ = cov for a positive semi-definite (possibly singular) cov, via eigh."""
    if not torch.allclose(cov, cov.mT, rtol=1e-8, atol=1e-12):
        raise ModelError("the covariance must be symmetric")
    lam, vec = torch.linalg.eigh(0.5 * (cov + cov.mT))
    tol = 1e-10 * lam.abs().amax(-1, keepdim=True).clamp_min(1.0)
    if (lam < -tol).any():
        raise ModelError(f"the covariance must be positive semi-definite; smallest eigenvalue {lam.min().item():.3g}")
    return vec * lam.clamp_min(0).sqrt().unsqueeze(-2)


def _coefficients(cov: torch.Tensor, reward: Quadratic, alpha: float):
    """(P, p, p₀, G): log E[exp(r(x)/α)] = mᵀPm + pᵀm + p₀ for x ~ N(m, cov); G = L B⁻¹ Lᵀ."""
    A, b = reward.A, reward.b
    L = _sqrt_factor(cov)
    B = torch.eye(cov.shape[-1], dtype=F64) - (2 / alpha) * L.mT @ A @ L
    B = 0.5 * (B + B.mT)
    mu = torch.linalg.eigvalsh(B)
    if (mu.amin(-1) <= 1e-12 * mu.abs().amax(-1).clamp_min(1.0)).any():
        raise ModelError(
            "the tilt exp(r/α) is not normalisable under this Gaussian: I − 2LᵀAL/α (S = LLᵀ) is not positive "
            f"definite (smallest eigenvalue {mu.min().item():.3g}); make A more negative or raise the temperature"
        )
    chol = torch.linalg.cholesky(B)
    logdet = 2 * chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    G = L @ torch.cholesky_solve(L.mT, chol)
    G = 0.5 * (G + G.mT)
    AG = A @ G
    P = A / alpha + (2 / alpha**2) * AG @ A
    p = b / alpha + (2 / alpha**2) * (AG @ b)
    p0 = reward.c / alpha + (b @ G @ b) / (2 * alpha**2) - 0.5 * logdet
    return 0.5 * (P + P.mT), p, p0, G


def _quadratic_form(x: torch.Tensor, P: torch.Tensor, p: torch.Tensor, p0: torch.Tensor) -> torch.Tensor:
    """xᵀPx + pᵀx + p₀ over the last dimension, broadcasting leading dimensions."""
    return ((x.unsqueeze(-2) @ P).squeeze(-2) * x).sum(-1) + (x * p).sum(-1) + p0


def gaussian_log_expectation(mean, cov, reward: Quadratic, temperature: float) -> torch.Tensor:
    """log E[exp(r(x)/α)] for x ~ N(mean, cov) and a quadratic reward r.

    Parameters
    ----------
    mean
        (..., d); leading dimensions are a batch of means.
    cov
        (..., d, d) positive semi-definite, possibly singular (zero gives r(mean)/α); broadcast with mean.
    reward
        :class:`~tilted.rewards.Quadratic`, r(x) = xᵀAx + bᵀx + c.
    temperature
        α > 0.

    Returns
    -------
    Tensor of shape ``mean.shape[:-1]`` (broadcast with ``cov.shape[:-2]``), float64.

    Raises
    ------
    ModelError
        When the tilt is not normalisable (I − 2LᵀAL/α not positive definite, cov = LLᵀ).

    Notes
    -----
    With z ~ N(0, I), x = m + Lz: E[exp(zᵀQz + uᵀz)] = |I − 2Q|^{-1/2} exp(½ uᵀ(I − 2Q)⁻¹u) with
    Q = LᵀAL/α and u = Lᵀ(2Am + b)/α, so the result is r(m)/α − ½ log|B| + ½ uᵀB⁻¹u, B = I − 2Q.
    """
    mean, cov, alpha = _inputs(mean, cov, reward, temperature)
    P, p, p0, _ = _coefficients(cov, reward, alpha)
    return _quadratic_form(mean, P, p, p0)


def tilt_gaussian(mean, cov, reward: Quadratic, temperature: float):
    """The tilted Gaussian N(mean, cov)·exp(r/α)/Z.

    Returns
    -------
    (mean', cov', log_Z)
        The tilted law N(mean', cov') and log Z = log E[exp(r(x)/α)]; float64, batched like
        :func:`gaussian_log_expectation`.

    Notes
    -----
    Completing the square, cov' = (S⁻¹ − 2A/α)⁻¹ = L(I − 2LᵀAL/α)⁻¹Lᵀ and mean' = m + cov'(2Am + b)/α.
    The second forms hold for singular S too: the tilted law lives on the same affine subspace.
    """
    mean, cov, alpha = _inputs(mean, cov, reward, temperature)
    P, p, p0, G = _coefficients(cov, reward, alpha)
    shift = (G @ (2 * (mean @ reward.A) + reward.b).unsqueeze(-1)).squeeze(-1) / alpha
    return mean + shift, G, _quadratic_form(mean, P, p, p0)


def tilt_mixture(mixture: GaussianMixture, reward: Quadratic, temperature: float):
    """A Gaussian mixture tilted by exp(r/α): again a Gaussian mixture.

    Returns
    -------
    (GaussianMixture, log_Z)

    Notes
    -----
    Σ_c w_c N(μ_c, Σ_c) exp(r/α) = Σ_c w_c Z_c N(μ'_c, Σ'_c), with (μ'_c, Σ'_c, Z_c) from
    :func:`tilt_gaussian`; the new weights are w_c Z_c / Z and Z = Σ_c w_c Z_c.
    """
    means, covs, log_zc = tilt_gaussian(mixture.means, mixture.covariances, reward, temperature)
    logits = mixture.weights.log() + log_zc
    return GaussianMixture(means, covs, torch.softmax(logits, 0)), torch.logsumexp(logits, 0)


def gaussian_kl(mean0, cov0, mean1, cov1) -> float:
    """KL(N(mean0, cov0) ‖ N(mean1, cov1)) = ½[tr(S₁⁻¹S₀) + δᵀS₁⁻¹δ − d + log|S₁|/|S₀|] (∞ if S₀ singular)."""
    sign, logdet0 = torch.linalg.slogdet(cov0)
    if sign <= 0:
        return math.inf
    chol = torch.linalg.cholesky(cov1)
    delta = (mean1 - mean0).unsqueeze(-1)
    trace = torch.cholesky_solve(cov0, chol).diagonal().sum()
    maha = (delta.mT @ torch.cholesky_solve(delta, chol)).squeeze()
    logdet1 = 2 * chol.diagonal().log().sum()
    return float(0.5 * (trace + maha - cov0.shape[-1] + logdet1 - logdet0))


# -- Linear-Gaussian chain --------------------------------------------------------------------------
class ExactTwist:
    """ψ_k(x) = log E[exp(r(x₀)/α) | x_k = x] = xᵀP_k x + p_kᵀx + p₀_k at every level k = K, …, 0."""

    def __init__(self, P: torch.Tensor, p: torch.Tensor, p0: torch.Tensor):
        self.P, self.p, self.p0 = P, p, p0

    def __call__(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """ψ_k(x) for x of shape (..., d), built from torch ops on x (differentiable), in x.dtype."""
        k = int(k)
        if not 0 <= k < self.P.shape[0]:
            raise ModelError(f"level k must be in 0..{self.P.shape[0] - 1}, got {k}")
        cast = {"dtype": x.dtype, "device": x.device}
        return _quadratic_form(x, self.P[k].to(**cast), self.p[k].to(**cast), self.p0[k].to(**cast))

    def quadratic(self, k: int) -> Quadratic:
        """ψ_k as a :class:`~tilted.rewards.Quadratic`."""
        return Quadratic(A=self.P[k], b=self.p[k], c=float(self.p0[k]))


class LinearGaussianChain:
    """The exact law of a :class:`GaussianDiffusion` over one-component Gaussian data.

    Parameters
    ----------
    process
        ``GaussianDiffusion(data=GaussianMixture(mean, cov), ...)`` with one component and no
        ``clip_sample`` (clipping makes the denoiser non-linear).

    Notes
    -----
    Step k is x_{k-1} = M_k x_k + m_k + σ_k ε (module docstring). With x_K ~ N(0, I):

    - marginals: μ_{k-1} = M_k μ_k + m_k, Σ_{k-1} = M_k Σ_k M_kᵀ + σ_k² I;
    - x₀ | x_k ~ N(F_k x + f_k, S_k) with F_0 = I, f_0 = 0, S_0 = 0 and F_k = F_{k-1}M_k,
      f_k = F_{k-1}m_k + f_{k-1}, S_k = S_{k-1} + σ_k² F_{k-1}F_{k-1}ᵀ (S_k singular when the
      last steps are deterministic, e.g. S_1 = 0 when ᾱ_0 = 1);
    - ψ_k(x) = log E[exp(r(x₀)/α) | x_k = x] is :func:`gaussian_log_expectation` at mean F_k x + f_k,
      a quadratic in x.
    """

    def __init__(self, process: GaussianPath):
        data = getattr(process, "data", None)
        if not isinstance(process, GaussianPath) or not isinstance(data, GaussianMixture):
            raise ModelError(
                "LinearGaussianChain needs a GaussianDiffusion or FlowMatching built with data=GaussianMixture(...)"
            )
        if data.num_components != 1:
            raise ModelError(f"the data law must be one Gaussian (got {data.num_components} components)")
        if process.clip_sample is not None:
            raise ModelError("clip_sample makes the denoiser non-linear; build the process with clip_sample=None")
        self.process = process
        self.num_steps = K = process.num_steps
        self.dim = d = data.dim
        mu, sig = data.means[0], data.covariances[0]
        eye = torch.eye(d, dtype=F64)
        # the path x_k = a_k x_0 + s_k ε (GaussianDiffusion: a = √ᾱ, s = √(1 − ᾱ))
        sig_, noise, sigma = process.signal.to(F64), process.noise.to(F64), process.sigmas.to(F64)
        a, a_prev = sig_[1:, None, None], sig_[:-1, None, None]
        n, n_prev, s2 = noise[1:, None, None], noise[:-1, None, None], sigma[1:, None, None] ** 2
        # sig is expanded: with K == d, solve() would read a (d, d) right-hand side as K vectors
        gain = a * torch.linalg.solve(a**2 * sig + n**2 * eye, sig.expand(K, d, d)).mT  # A_k = a_k Σ C_k⁻¹
        offset = mu - a[..., 0] * (gain @ mu)  # c_k
        s = (n_prev**2 - s2).clamp_min(0).sqrt()
        g, h = a_prev - s * a / n, s / n
        # index k − 1 holds step k (x_k → x_{k-1})
        self._M, self._m, self._sigma = g * gain + h * eye, g[..., 0] * offset, sigma[1:]
        means, covs = [torch.zeros(d, dtype=F64)], [eye]
        for k in range(K, 0, -1):
            M = self._M[k - 1]
            means.append(M @ means[-1] + self._m[k - 1])
            cov = M @ covs[-1] @ M.mT + self._sigma[k - 1] ** 2 * eye
            covs.append(0.5 * (cov + cov.mT))
        self._mean, self._cov = torch.stack(means[::-1]), torch.stack(covs[::-1])  # index by level
        F, f, S = [eye], [torch.zeros(d, dtype=F64)], [torch.zeros(d, d, dtype=F64)]
        for k in range(1, K + 1):
            F.append(F[-1] @ self._M[k - 1])
            f.append(F[-2] @ self._m[k - 1] + f[-1])
            cov = S[-1] + self._sigma[k - 1] ** 2 * F[-2] @ F[-2].mT
            S.append(0.5 * (cov + cov.mT))
        self._F, self._f, self._S = torch.stack(F), torch.stack(f), torch.stack(S)

    def _level(self, k: int, low: int = 0) -> int:
        if not low <= int(k) <= self.num_steps:
            raise ModelError(f"level k must be in {low}..{self.num_steps}, got {k}")
        return int(k)

    def step(self, k: int) -> tuple[torch.Tensor, torch.Tensor, float]:
        """(M_k, m_k, σ_k): step k draws x_{k-1} = M_k x_k + m_k + σ_k ε, for k = K, …, 1."""
        k = self._level(k, low=1)
        return self._M[k - 1], self._m[k - 1], float(self._sigma[k - 1])

    def marginal(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, cov) of x_k under the chain, k = K, …, 0."""
        k = self._level(k)
        return self._mean[k], self._cov[k]

    def conditional(self, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(F, f, S): x₀ | x_k = x ~ N(F x + f, S) under the chain (k = 0: F = I, f = 0, S = 0)."""
        k = self._level(k)
        return self._F[k], self._f[k], self._S[k]

    def tilted(self, reward: Quadratic, temperature: float):
        """(mean, cov, log_Z) of the chain's x₀ law tilted by exp(r/α); log Z = log E_chain[exp(r(x₀)/α)]."""
        return tilt_gaussian(self._mean[0], self._cov[0], reward, temperature)

    def twist(self, reward: Quadratic, temperature: float) -> ExactTwist:
        """The exact soft value ψ_k (ψ₀ = r/α), a callable ``psi(x, k)`` for k = K, …, 0."""
        alpha = _check(reward, temperature, self.dim)
        P, p, p0, _ = _coefficients(self._S, reward, alpha)  # in the conditional mean F_k x + f_k
        F, f = self._F, self._f
        Pf = (P @ f.unsqueeze(-1)).squeeze(-1)
        Px = F.mT @ P @ F
        px = (F.mT @ (2 * Pf + p).unsqueeze(-1)).squeeze(-1)
        p0x = (f * Pf).sum(-1) + (p * f).sum(-1) + p0
        return ExactTwist(0.5 * (Px + Px.mT), px, p0x)

    def sample(self, n: int, generator: Seed = None) -> torch.Tensor:
        """n draws of the chain's x₀ law, shape (n, d), float64."""
        z = torch.randn(n, self.dim, dtype=F64, generator=as_generator(generator))
        return self._mean[0] + z @ _sqrt_factor(self._cov[0]).mT

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Density of the chain's x₀ law (raises NoDensityError when its covariance is singular)."""
        if torch.linalg.eigvalsh(self._cov[0]).min() <= 0:
            raise NoDensityError("the chain's law of x₀ is degenerate (singular covariance) and has no density")
        law = torch.distributions.MultivariateNormal(self._mean[0], self._cov[0])
        return law.log_prob(x.to(F64))


# -- How far the chain is from the data law ---------------------------------------------------------
def chain_data_kl_table(
    data: GaussianMixture | None = None,
    num_steps=(10, 25, 50, 100, 250, 1000),
    etas=(1.0, 0.0),
    **process_kwargs,
) -> list[dict]:
    """Rows {num_steps, eta, kl} with kl = KL(chain's x₀ law ‖ data law), for one-Gaussian data.

    ``data`` defaults to N((4, 4), 0.3·I), one component of the DAS toy mixture; ``process_kwargs``
    go to :class:`GaussianDiffusion` (schedule, timestep_spacing, ...).
    """
    data = GaussianMixture([4.0, 4.0], 0.3) if data is None else data
    rows = []
    for eta in etas:
        for k in num_steps:
            chain = LinearGaussianChain(GaussianDiffusion(data=data, num_steps=k, eta=eta, **process_kwargs))
            kl = gaussian_kl(*chain.marginal(0), data.means[0], data.covariances[0])
            rows.append({"num_steps": k, "eta": eta, "kl": kl})
    return rows


def _energy_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    """V-statistic 2E|X−Y| − E|X−X'| − E|Y−Y'|."""
    return float(2 * torch.cdist(x, y).mean() - torch.cdist(x, x).mean() - torch.cdist(y, y).mean())


def chain_data_distance(process: GaussianDiffusion, num_samples: int = 2000, repeats: int = 5, seed: Seed = 0):
    """Sampled distances between ``process`` draws and its data law, with the two-sample floor.

    Returns a dict of (mean, standard error) over ``repeats``: ``w2`` (exact W₂ by ``ot.emd2`` on
    squared Euclidean cost) and ``energy`` between chain and data draws, and ``w2_floor``,
    ``energy_floor`` between two independent data draws of the same size.
    """
    import ot

    gen = as_generator(seed)
    out: dict[str, list[float]] = {"w2": [], "energy": [], "w2_floor": [], "energy_floor": []}
    n = num_samples
    uniform = torch.full((n,), 1.0 / n, dtype=F64)
    for _ in range(repeats):
        x = process.sample((n,), generator=gen).to(F64)
        y, y2, y3 = (process.data.sample(n, gen) for _ in range(3))
        for key, (u, v) in {"": (x, y), "_floor": (y2, y3)}.items():
            out["w2" + key].append(math.sqrt(float(ot.emd2(uniform, uniform, torch.cdist(u, v) ** 2))))
            out["energy" + key].append(_energy_distance(u, v))
    stats = {}
    for key, vals in out.items():
        t = torch.tensor(vals, dtype=F64)
        stats[key] = (float(t.mean()), float(t.std() / math.sqrt(len(vals))) if len(vals) > 1 else math.nan)
    return stats


# -- Masked discrete diffusion: the chain's exact law by enumeration ---------------------------------
# (imported here so the section stands alone; the discrete modules do not import this file)
from tilted.distributions.masked import MaskedDiffusion  # noqa: E402
from tilted.distributions.tabular import all_sequences, sequence_index  # noqa: E402

#: largest number of chain states (V + 1)^L enumerated densely by :class:`MaskedChain`
MAX_CHAIN_STATES = 4096


class MaskedChain:
    """The exact law of a :class:`~tilted.distributions.MaskedDiffusion` chain, by enumeration.

    Parameters
    ----------
    process
        Any masked diffusion (a data-law or a network denoiser) with (V + 1)^L ≤ 4096 states.

    Notes
    -----
    The states are all sequences over {0, …, V} (V = mask), S = (V + 1)^L of them, in the order of
    :func:`~tilted.distributions.tabular.all_sequences` with V + 1 symbols. Step k has the transition
    matrix T_k[s, s'] = Π_i p(x_{k-1,i} = s'_i | x_k = s) (positions are independent given x_k;
    :meth:`MaskedDiffusion.transition_probs`, the denoiser called once on all S states). Starting from
    the point mass on the all-mask state,

        μ_K = δ_mask,   μ_{k-1} = μ_k T_k,

    and μ_0 lives on the V^L mask-free sequences: the chain's law of x_0. It is *not* the data law in
    general, even with an exact data-law denoiser: positions unmasked at the same step are drawn
    independently given x_k, which breaks their correlations (it tends to the data law as K → ∞).
    The soft values run backwards: v_0(s) = r(s)/α and v_k(s) = log Σ_{s'} T_k[s, s'] exp(v_{k-1}(s')).
    Everything is float64. The transition matrices are kept (S² · K · 8 bytes).
    """

    def __init__(self, process: MaskedDiffusion):
        if not isinstance(process, MaskedDiffusion):
            raise ModelError(f"MaskedChain needs a MaskedDiffusion, got {type(process).__name__}")
        V, L, K = process.vocab_size, process.length, process.num_steps
        S = (V + 1) ** L
        if S > MAX_CHAIN_STATES:
            raise ModelError(f"(V + 1)^L = {S} chain states are too many to enumerate (at most {MAX_CHAIN_STATES})")
        self.process = process
        self.num_steps = K
        self.vocab_size, self.length = V, L
        self.states = all_sequences(V + 1, L)  # (S, L), mask = V
        #: the V^L clean sequences (rows), in the order of TabularSequences.sequences and of :meth:`law`
        self.sequences = all_sequences(V, L)
        self._clean = sequence_index(self.sequences, V + 1)  # their rows in ``states``
        transitions = []
        with torch.no_grad():
            for k in range(1, K + 1):
                probs = process.transition_probs(self.states, k).to(F64)  # (S, L, V + 1)
                T = torch.ones(S, S, dtype=F64)
                for i in range(L):
                    T = T * probs[:, i, :][:, self.states[:, i]]
                transitions.append(T)
        self._T = transitions  # index k − 1 holds step k
        start = torch.zeros(S, dtype=F64)
        start[-1] = 1.0  # the all-mask state is the last one
        marginals = [start]
        for k in range(K, 0, -1):
            marginals.append(marginals[-1] @ self._T[k - 1])
        self._marginals = marginals[::-1]  # index by level
        if float(self._marginals[0].sum() - self._marginals[0][self._clean].sum()) > 1e-12:
            raise ModelError("the chain leaves masks at x_0; the schedule must end at α_0 = 1")

    def transition(self, k: int) -> torch.Tensor:
        """T_k (S, S): T_k[s, s'] = p(x_{k-1} = s' | x_k = s), for k = K, …, 1."""
        if not 1 <= int(k) <= self.num_steps:
            raise ModelError(f"level k must be in 1..{self.num_steps}, got {k}")
        return self._T[int(k) - 1]

    def marginal(self, k: int) -> torch.Tensor:
        """The law of x_k over all S states (rows of :attr:`states`), k = K, …, 0."""
        if not 0 <= int(k) <= self.num_steps:
            raise ModelError(f"level k must be in 0..{self.num_steps}, got {k}")
        return self._marginals[int(k)]

    def law(self) -> torch.Tensor:
        """The chain's law of x_0 over the V^L clean sequences (rows of :attr:`sequences`), float64."""
        return self._marginals[0][self._clean]

    def reward_table(self, reward) -> torch.Tensor:
        """r over the clean sequences (V^L,), float64, from a callable on (V^L, L) tokens or a table."""
        return _reward_table(reward, self.sequences, self.vocab_size)

    def tilted(self, reward, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(probs, log_Z): the chain's law of x_0 tilted by exp(r/α), and log E_chain[exp(r(x_0)/α)]."""
        return tilt_table(self.law(), self.reward_table(reward), temperature)

    def soft_values(self, reward, temperature: float) -> list[torch.Tensor]:
        """v_k(s) = log E[exp(r(x_0)/α) | x_k = s] over all S states, for k = 0, …, K (index by level).

        States the chain cannot reach from s to a clean x_0 do not occur (every path ends clean); a clean
        state s at level 0 has v_0(s) = r(s)/α, masked states at level 0 get −∞.
        """
        alpha = _temperature(temperature)
        v0 = torch.full((self.states.shape[0],), -math.inf, dtype=F64)
        v0[self._clean] = self.reward_table(reward) / alpha
        values = [v0]
        for k in range(1, self.num_steps + 1):
            T = self._T[k - 1]
            values.append(torch.logsumexp(T.log() + values[-1][None, :], -1))
        return values

    def twist(self, reward, temperature: float):
        """The exact soft value as a twist ``psi(x, k)`` on token tensors (..., L) (a Twist potential)."""
        values = self.soft_values(reward, temperature)
        V = self.vocab_size

        def psi(x: torch.Tensor, k: int) -> torch.Tensor:
            return values[int(k)][sequence_index(x, V + 1)]

        return psi


def _temperature(temperature) -> float:
    alpha = float(temperature)
    if not (math.isfinite(alpha) and alpha > 0):
        raise ModelError(f"temperature must be finite and > 0, got {temperature}")
    return alpha


def _reward_table(reward, sequences: torch.Tensor, vocab_size: int) -> torch.Tensor:
    n = sequences.shape[0]
    if callable(reward):
        r = torch.as_tensor(reward(sequences), dtype=F64)
    else:
        r = torch.as_tensor(reward, dtype=F64).reshape(-1)
    if r.shape != (n,):
        raise ShapeError(f"the reward must give one value per sequence ({n}), got shape {tuple(r.shape)}")
    if not torch.isfinite(r).all():
        raise ModelError("the reward table has non-finite entries")
    return r


def tilt_table(probs: torch.Tensor, rewards: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(p·exp(r/α)/Z, log Z) for a law ``probs`` and rewards ``rewards`` over the same finite set, float64.

    log Z = log Σ_s p(s) exp(r(s)/α), by log-sum-exp.
    """
    alpha = _temperature(temperature)
    logits = torch.as_tensor(probs, dtype=F64).log() + torch.as_tensor(rewards, dtype=F64) / alpha
    log_z = torch.logsumexp(logits, -1)
    return (logits - log_z).exp(), log_z


def masked_chain_law(process: MaskedDiffusion) -> torch.Tensor:
    """The exact law of x_0 under a masked diffusion chain over the V^L sequences (see :class:`MaskedChain`)."""
    return MaskedChain(process).law()


def weighted_law(tokens: torch.Tensor, log_weights: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """The law of weighted particles over the V^L sequences: tokens (..., N, L), log weights (..., N) → (..., V^L).

    Weights are normalised along N; leading dimensions (e.g. runs) are kept.
    """
    L = tokens.shape[-1]
    w = torch.softmax(log_weights.to(F64), -1)
    idx = sequence_index(tokens, vocab_size)
    out = torch.zeros(w.shape[:-1] + (int(vocab_size) ** L,), dtype=F64)
    return out.scatter_add_(-1, idx, w)


def total_variation(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """½ Σ |p − q| over the last dimension."""
    return 0.5 * (torch.as_tensor(p, dtype=F64) - torch.as_tensor(q, dtype=F64)).abs().sum(-1)
