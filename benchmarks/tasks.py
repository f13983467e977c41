"""Benchmark tasks: a model, its reward and temperature, and the exact target it must be compared with.

A :class:`Task` carries everything the suite needs: the Pyro model, exact draws of the target (for
EMD and MMD), the exact log Z when it is known, exact tilted moments (linear-Gaussian tasks), an
oracle twist (the exact soft value, for the "oracle" engine that shows what a perfect value
function would give), and a few task-specific diagnostics of the drawn points.

Tasks are built by name from :data:`TASKS`, so that worker processes can rebuild them. The discrete
task (masked diffusion over an enumerable V^L) also carries its exact law over the V^L sequences
(``law``), for the total-variation metric, and a Hamming ground distance (``cost``) for the EMD.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import pyro
import torch

import tilted
from tilted.distributions import GaussianDiffusion, GaussianMixture, MaskedDiffusion, TableReward, TabularSequences
from tilted.distributions.tabular import sequence_index
from tilted.reference import LinearGaussianChain, MaskedChain, gaussian_log_expectation, tilt_mixture
from tilted.rewards import Quadratic

F64 = torch.float64


@dataclass
class Task:
    """One benchmark problem: p_tar(x) ∝ p_θ(x) exp(r(x)/α) with an exact reference.

    Attributes
    ----------
    exact_sample
        ``exact_sample(n, generator) -> (n, d)`` float64 draws of the exact target.
    log_z, log_z_exact
        log Z of the reference and whether it is the chain's own (exact) or the data law's (approximate).
    moments
        (mean, covariance) of the exact target, when known in closed form.
    expected_reward
        E_tar[r] of the exact target.
    data_sample
        Draws of the untilted data law (toys: for the "pretrained chain vs data law" distance).
    twist
        An oracle soft value ψ(x, k) ≈ log E[exp(r(x_0)/α) | x_k = x] (exact for linear-Gaussian).
    diagnostics
        Name → function of the drawn points (n, d) → float, reported beside the metrics.
    cost
        Ground distance for EMD, ``cost(x, y) -> (n, m)``.
    engines
        Engine names that apply (``None``: every engine of the process family).
    law
        Discrete tasks: the exact target's probabilities over the V^L sequences (``all_sequences`` order).
    reference
        Tasks whose reference is an importance-sampling pool: its log Ẑ, s.e., ESS and number of chains.
    draws
        Independent exact draws (n, d) of the target, when the reference provides them (rejection
        sampling from a pool): benchmarks then compare against disjoint slices of them, never a
        resample of one pool against another, whose shared points bias the floor low.
    """

    name: str
    title: str
    description: str
    process: GaussianDiffusion | MaskedDiffusion
    reward: Callable[[torch.Tensor], torch.Tensor]
    temperature: float
    exact_sample: Callable[[int, torch.Generator], torch.Tensor]
    log_z: float | None = None
    log_z_exact: bool = False
    moments: tuple[torch.Tensor, torch.Tensor] | None = None
    expected_reward: float | None = None
    data_sample: Callable[[int, torch.Generator], torch.Tensor] | None = None
    twist: Callable[[torch.Tensor, int], torch.Tensor] | None = None
    diagnostics: dict[str, Callable[[torch.Tensor], float]] = field(default_factory=dict)
    cost: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = torch.cdist
    engines: tuple[str, ...] | None = None
    plot2d: bool = False
    reference: dict | None = None
    draws: torch.Tensor | None = None
    law: torch.Tensor | None = None

    def model(self) -> None:
        """The Pyro model: the pretrained chain at site "x" and one reward factor "r"."""
        x = pyro.sample("x", self.process)
        tilted.factor("r", self.reward, x, temperature=self.temperature)

    @property
    def dim(self) -> int:
        return int(self.process.event_shape.numel())

    @property
    def discrete(self) -> bool:
        return isinstance(self.process, MaskedDiffusion)

    def point_rewards(self, points: torch.Tensor) -> torch.Tensor:
        """r of output points (n, d) float64 (token ids for a discrete task), float64."""
        return self.reward(points.long() if self.discrete else points).to(F64)

    def histogram(self, points: torch.Tensor) -> torch.Tensor:
        """Discrete tasks: the empirical law of points (n, L) over the V^L sequences."""
        V = self.process.vocab_size
        index = sequence_index(points.long(), V)
        return torch.bincount(index, minlength=V**self.dim).to(F64) / points.shape[0]


# -- analytic data laws -----------------------------------------------------------------------------
class IsotropicMixture(GaussianMixture):
    """Σ_c w_c N(μ_c, v·I) with its exact denoiser written for a shared isotropic covariance.

    Same law and same x̂_0 as ``GaussianMixture(means, v)``: with s² = ᾱv + 1 − ᾱ and g = √ᾱ v/s²,
    E[x_0 | x_t = x] = (1 − g√ᾱ) Σ_c π_c(x) μ_c + g x, π_c(x) ∝ w_c exp(−‖x − √ᾱ μ_c‖²/2s²).
    A few element-wise operations instead of ``GaussianMixture.posterior_mean``'s general
    full-covariance path (batched triangular solves and matrix products), about 4× cheaper on the
    toys; used to keep the benchmark's run time down (docs/benchmarks.md says so).
    """

    def __init__(self, means, variance: float, weights=None):
        super().__init__(means, variance, weights)
        self.variance = float(variance)

    def posterior_mean(self, x: torch.Tensor, alpha_cumprod: float) -> torch.Tensor:
        a = float(alpha_cumprod)
        s2 = a * self.variance + 1 - a
        g = math.sqrt(a) * self.variance / s2
        xd = x.to(F64)
        d2 = (xd.unsqueeze(-2) - math.sqrt(a) * self.means).pow(2).sum(-1)  # (..., C)
        resp = torch.softmax(self.weights.log() - d2 / (2 * s2), -1)
        return ((1 - g * math.sqrt(a)) * (resp @ self.means) + g * xd).to(x.dtype)


# -- exact quantities of Gaussian mixtures tilted by quadratic rewards ---------------------------------
def mixture_expected_reward(mixture: GaussianMixture, reward: Quadratic) -> float:
    """E[r(x)] = Σ_c w_c (tr(A S_c) + m_cᵀ A m_c + bᵀ m_c + c) for x ~ Σ_c w_c N(m_c, S_c)."""
    A, b = reward.A, reward.b
    m, S = mixture.means, mixture.covariances
    per = torch.einsum("ij,cji->c", A, S) + ((m @ A) * m).sum(-1) + m @ b + reward.c
    return float(mixture.weights @ per)


def mixture_soft_value(data: IsotropicMixture, process: GaussianDiffusion, reward: Quadratic, alpha: float):
    """ψ_k(x) = log E[exp(r(x_0)/α) | x_k = x] under the data law's forward process at level ᾱ_k.

    Given x_k = x at noise level ᾱ, x_0 is the mixture of N(μ_c + g(x − √ᾱ μ_c), v(1 − g√ᾱ)·I),
    s² = ᾱv + 1 − ᾱ, g = √ᾱ v/s², with responsibilities π_c(x) ∝ w_c exp(−‖x − √ᾱ μ_c‖²/2s²); each
    component's E[exp(r/α)] is closed form (:func:`tilted.reference.gaussian_log_expectation`).
    This is the value of the *data* diffusion, a close approximation of the K-step chain's.
    """
    v, eye = data.variance, torch.eye(data.dim, dtype=F64)

    def psi(x: torch.Tensor, k: int) -> torch.Tensor:
        a = float(process.alphas_cumprod[int(k)])
        s2 = a * v + 1 - a
        g = math.sqrt(a) * v / s2
        xd = x.to(F64).unsqueeze(-2)  # (..., 1, d)
        centred = xd - math.sqrt(a) * data.means  # (..., C, d)
        log_pi = torch.log_softmax(data.weights.log() - centred.pow(2).sum(-1) / (2 * s2), -1)
        mean = data.means + g * centred
        cov = max(v * (1 - g * math.sqrt(a)), 0.0) * eye
        return torch.logsumexp(log_pi + gaussian_log_expectation(mean, cov, reward, alpha), -1)

    return psi


def tweedie_value(data: GaussianMixture, process: GaussianDiffusion, reward: Quadratic, alpha: float):
    """The engines' cheap value r(x̂_0(x_k))/α, for comparison with :func:`mixture_soft_value`."""

    def value(x: torch.Tensor, k: int) -> torch.Tensor:
        return reward(process.predict(x.to(F64), int(k))) / alpha

    return value


# -- the DAS Figure-1 toys ------------------------------------------------------------------------------
def _toy(name, title, description, means, reward, diagnostics, num_steps: int, oracle: bool) -> Task:
    data = IsotropicMixture(means, 0.3)
    process = GaussianDiffusion(data=data, num_steps=num_steps)
    alpha = 1.0
    target, log_z = tilt_mixture(data, reward, alpha)
    return Task(
        name=name,
        title=title,
        description=description,
        process=process,
        reward=reward,
        temperature=alpha,
        exact_sample=target.sample,
        log_z=float(log_z),
        log_z_exact=False,
        expected_reward=mixture_expected_reward(target, reward),
        data_sample=data.sample,
        twist=mixture_soft_value(data, process, reward, alpha) if oracle else None,
        diagnostics=diagnostics,
        plot2d=True,
    )


def das_grid(num_steps: int = 100) -> Task:
    """9 Gaussians N(μ, 0.3·I) at {−4, 0, 4}², reward −x²/100 − y², α = 1 (DAS Figure 1, left)."""
    g = torch.tensor([-4.0, 0.0, 4.0], dtype=F64)
    return _toy(
        "grid",
        "DAS toy: 3×3 grid mixture",
        "9 equally weighted Gaussians N(μ, 0.3·I), μ ∈ {−4, 0, 4}²; reward r = −x²/100 − y², α = 1. "
        "The target keeps the middle row (y ≈ 0), nearly evenly over its three modes.",
        torch.cartesian_prod(g, g),
        Quadratic(A=torch.diag(torch.tensor([-0.01, -1.0], dtype=F64))),
        {"P(|y| < 2)": lambda x: float((x[:, 1].abs() < 2).double().mean()), "sd(y)": lambda x: float(x[:, 1].std())},
        num_steps,
        oracle=False,  # SMC already lands here; the oracle (costly) is run where it explains a gap
    )


def das_ring(num_steps: int = 100) -> Task:
    """8 Gaussians N(μ, 0.3·I) on the circle of radius 4, reward −x² − (y − 1)²/10, α = 1."""
    angles = torch.arange(8, dtype=F64) * (2 * math.pi / 8)
    return _toy(
        "ring",
        "DAS toy: ring mixture",
        "8 equally weighted Gaussians N(μ, 0.3·I) on the circle of radius 4 at angles 2πi/8; reward "
        "r = −x² − (y − 1)²/10, α = 1. The target keeps the two modes on the y axis, about 82 % top and 18 % bottom.",
        4 * torch.stack([angles.cos(), angles.sin()], -1),
        Quadratic(A=torch.diag(torch.tensor([-1.0, -0.1], dtype=F64)), b=torch.tensor([0.0, 0.2], dtype=F64), c=-0.1),
        {"P(y > 0)": lambda x: float((x[:, 1] > 0).double().mean()), "sd(x)": lambda x: float(x[:, 0].std())},
        num_steps,
        oracle=True,
    )


# -- linear-Gaussian chains -----------------------------------------------------------------------------
class AffineGaussian(GaussianMixture):
    """One Gaussian N(μ, Σ) whose exact (affine) denoiser is evaluated as one matrix product.

    Same law and same x̂_0 as ``GaussianMixture(mean, cov)``; ``GaussianMixture.posterior_mean``
    evaluates ``gain @ resid`` as a batch of matrix-vector products, which costs about 10× more at
    d = 64 (reported in docs/benchmarks.md). Used here only to keep the benchmark's run time down.
    """

    def __init__(self, mean, cov):
        super().__init__(torch.as_tensor(mean, dtype=F64)[None], cov)
        self._gains: dict[float, tuple[torch.Tensor, torch.Tensor]] = {}

    def posterior_mean(self, x: torch.Tensor, alpha_cumprod: float) -> torch.Tensor:
        a = float(alpha_cumprod)
        if a not in self._gains:
            S, mu = self.covariances[0], self.means[0]
            C = a * S + (1 - a) * torch.eye(self.dim, dtype=F64)
            gain = math.sqrt(a) * torch.linalg.solve(C, S).mT  # √ᾱ Σ C⁻¹ (Σ, C symmetric)
            offset = mu - math.sqrt(a) * gain @ mu
            self._gains[a] = (gain, offset)
        gain, offset = self._gains[a]
        dtype = x.dtype if x.dtype == F64 else torch.float32
        return (x.to(dtype) @ gain.mT.to(dtype) + offset.to(dtype)).to(x.dtype)


def linear_gaussian(dim: int, num_steps: int = 100, seed: int = 0) -> Task:
    """N(μ, Σ) data with a rotated, anisotropic Σ (eigenvalues 0.25 … 2), reward −¼‖x‖² + ½·1ᵀx, α = 1."""
    gen = torch.Generator().manual_seed(seed + dim)
    mean = torch.randn(dim, generator=gen, dtype=F64)
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=gen, dtype=F64))
    cov = q @ torch.diag(torch.linspace(0.25, 2.0, dim, dtype=F64)) @ q.mT
    cov = 0.5 * (cov + cov.mT)
    data = AffineGaussian(mean, cov)
    process = GaussianDiffusion(data=data, num_steps=num_steps)
    reward = Quadratic(A=-0.25 * torch.eye(dim, dtype=F64), b=torch.full((dim,), 0.5, dtype=F64))
    alpha = 1.0
    chain = LinearGaussianChain(process)
    t_mean, t_cov, log_z = chain.tilted(reward, alpha)
    chol = torch.linalg.cholesky(t_cov)
    return Task(
        name=f"lg{dim}",
        title=f"Linear-Gaussian, d = {dim}",
        description=f"One Gaussian N(μ, Σ) in d = {dim} (μ ~ N(0, I), Σ = Q diag(0.25 … 2) Qᵀ with a random "
        "rotation Q); reward r = −‖x‖²/4 + 1ᵀx/2, α = 1. Exact target, log Z and tilted moments of the "
        f"{num_steps}-step chain from `LinearGaussianChain(process).tilted(reward, α)`.",
        process=process,
        reward=reward,
        temperature=alpha,
        exact_sample=lambda n, g: t_mean + torch.randn(n, dim, generator=g, dtype=F64) @ chol.mT,
        log_z=float(log_z),
        log_z_exact=True,
        moments=(t_mean, t_cov),
        expected_reward=mixture_expected_reward(GaussianMixture(t_mean[None], t_cov), reward),
        twist=chain.twist(reward, alpha),
        diagnostics={},
        plot2d=False,
    )


# -- the enumerable discrete task ---------------------------------------------------------------------
def hamming(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Hamming distance between token sequences (n, L) and (m, L): the number of differing positions."""
    return torch.cdist(x.to(F64), y.to(F64), p=0)


def discrete(num_steps: int = 8, vocab_size: int = 4, length: int = 4, seed: int = 0) -> Task:
    """Masked diffusion over V^L = 4^4 sequences: p ∝ U(0,1)² table, reward table U(−2, 2), α = 0.5."""
    gen = torch.Generator().manual_seed(seed)
    shape = (vocab_size,) * length
    probs = torch.rand(shape, generator=gen, dtype=F64) ** 2
    reward = TableReward(4 * torch.rand(shape, generator=gen, dtype=F64) - 2)
    alpha = 0.5
    process = MaskedDiffusion(data=TabularSequences(probs), num_steps=num_steps, schedule="cosine")
    chain = MaskedChain(process)
    law, log_z = chain.tilted(reward, alpha)
    sequences = chain.sequences

    def exact_sample(n: int, g: torch.Generator) -> torch.Tensor:
        return sequences[torch.multinomial(law, n, replacement=True, generator=g)].to(F64)

    r = chain.reward_table(reward)
    return Task(
        name="discrete",
        title=f"Discrete: masked diffusion over V^L = {vocab_size}^{length}",
        description=f"`MaskedDiffusion(data=TabularSequences(p), num_steps={num_steps}, schedule='cosine')` with "
        f"p ∝ u², u ~ U(0, 1) over the {vocab_size**length} sequences (seed {seed}); reward a table r ~ U(−2, 2) "
        f"(`TableReward`, differentiable on relaxed inputs for the Taylor proposal), α = {alpha}. Exact target "
        "and log Z of the chain by enumeration (`tilted.reference.MaskedChain(process).tilted(reward, α)`).",
        process=process,
        reward=reward,
        temperature=alpha,
        exact_sample=exact_sample,
        log_z=float(log_z),
        log_z_exact=True,
        expected_reward=float(law @ r),
        twist=chain.twist(reward, alpha),
        diagnostics={"P(top-10 sequences)": _mass_on(sequences, law.topk(10).indices, vocab_size)},
        cost=hamming,
        law=law,
    )


def _mass_on(sequences: torch.Tensor, rows: torch.Tensor, vocab_size: int) -> Callable[[torch.Tensor], float]:
    """The fraction of points (n, L) that are one of the given rows of ``sequences``."""
    chosen = torch.zeros(sequences.shape[0], dtype=torch.bool)
    chosen[rows] = True
    return lambda x: float(chosen[sequence_index(x.long(), vocab_size)].double().mean())


#: name → factory(num_steps) of every task; ``--tasks`` selects among these (and "overhead").
TASKS: dict[str, Callable[..., Task]] = {
    "grid": das_grid,
    "ring": das_ring,
    "lg2": lambda num_steps=100: linear_gaussian(2, num_steps),
    "lg16": lambda num_steps=100: linear_gaussian(16, num_steps),
    "lg64": lambda num_steps=100: linear_gaussian(64, num_steps),
    "discrete": lambda num_steps=8: discrete(num_steps),
}


def build(name: str, num_steps: int = 100) -> Task:
    if name not in TASKS:
        raise KeyError(f"unknown task {name!r}; choose from {sorted(TASKS)}")
    return TASKS[name](num_steps=num_steps)
