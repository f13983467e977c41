"""The result every engine returns: weighted particles, evidence, per-step traces and compute counts."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field, fields
from typing import Any

import torch

from tilted._random import Seed, as_generator
from tilted.inference.weights import ess as _ess
from tilted.inference.weights import normalize


@dataclass
class Counts:
    """Compute used, counted in particle evaluations (a batch of B particles counts B)."""

    denoiser_calls: int = 0
    reward_calls: int = 0
    gradient_evaluations: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(vars(self))

    def scaled(self, n: int) -> Counts:
        """Every count times n (the cost of n particles from the cost of one)."""
        return Counts(*(n * v for v in vars(self).values()))

    def __add__(self, other: Counts) -> Counts:
        return Counts(*(a + b for a, b in zip(vars(self).values(), vars(other).values(), strict=True)))


@dataclass
class StepTrace:
    """Per-step records, one row per step s = 0 (initial draw of x_K), 1, …, K (the move to x_0).

    ``ess`` and ``log_evidence_increments`` have shape (S, R); ``resampled`` (S, R) says whether
    the particles were resampled after the step; ``lambdas`` (S, F, R) holds λ of each factor;
    ``ancestors`` (S, R, N) the ancestor indices used after the step (identity when not resampled);
    ``drift_clipped`` (S, R) the fraction of particles whose proposal drift the trust region scaled
    down (0 for proposals without a drift); ``log_increments`` (S, R, N) every particle's incremental
    log weight G (0 for engines without weights).
    """

    ess: torch.Tensor
    resampled: torch.Tensor
    lambdas: torch.Tensor
    log_evidence_increments: torch.Tensor
    ancestors: torch.Tensor
    timesteps: torch.Tensor
    drift_clipped: torch.Tensor
    log_increments: torch.Tensor


@dataclass(frozen=True)
class StepInfo:
    """What happened at one step: one row of a :class:`StepTrace`, for R runs of N particles."""

    ess: torch.Tensor  # (R,)
    resampled: torch.Tensor  # (R,)
    lambdas: torch.Tensor  # (F, R)
    log_evidence_increment: torch.Tensor  # (R,)
    ancestors: torch.Tensor  # (R, N)
    drift_clipped: torch.Tensor | None = None  # (R,) fraction of particles whose drift was scaled
    log_increments: torch.Tensor | None = None  # (R, N) incremental log weights G of the step


@dataclass
class Result:
    """Weighted particles approximating the tilted target, from any engine.

    Attributes
    ----------
    particles
        Every site of the model, replayed with the final states: ``(N, *event)``, or
        ``(R, N, *event)`` with ``num_runs=R``. A process with P groups (one chain per prompt) gives
        ``(R, N, *event)`` with R = M·P, run r = m·P + p holding group p (M = ``num_runs`` or 1).
    log_weights
        Normalised log weights, ``(N,)`` or ``(R, N)``.
    log_evidence
        log Ẑ, an estimate of log E_{p_θ}[exp(Σ_k r_k/α_k)], ``()`` or ``(R,)``.
    rewards
        The final reward of every particle, per factor.
    trace
        Per-step :class:`StepTrace`; ``None`` for engines without steps.
    counts
        :class:`Counts` of denoiser calls, reward calls and gradient evaluations.
    temperatures
        α of every factor, by name (for diagnostics: the applied log-factor is r/α).
    sweeps
        :class:`~tilted.inference.ParticleGibbs` only: its :class:`~tilted.inference.SweepTrace`
        (per-sweep renewal of each level, retained rewards, autocorrelation); ``None`` otherwise.
    """

    particles: dict[str, torch.Tensor]
    log_weights: torch.Tensor
    log_evidence: torch.Tensor
    rewards: dict[str, torch.Tensor]
    site: str
    trace: StepTrace | None = None
    counts: Counts = field(default_factory=Counts)
    config: dict[str, Any] = field(default_factory=dict)
    temperatures: dict[str, float] = field(default_factory=dict)
    sweeps: Any = None  # particle Gibbs: its SweepTrace (tilted.inference.gibbs)

    @property
    def batched(self) -> bool:
        return self.log_weights.ndim == 2

    @property
    def num_particles(self) -> int:
        return self.log_weights.shape[-1]

    @property
    def weights(self) -> torch.Tensor:
        return self.log_weights.exp()

    @property
    def ess(self) -> torch.Tensor:
        """Kish effective sample size of the final weights (per run)."""
        return _ess(self.log_weights)

    def sample(self, num_samples: int, seed: Seed = None) -> dict[str, torch.Tensor]:
        """Equally weighted draws (multinomial on the final weights): site → ``(num_samples, *event)``.

        With several runs, draws are taken in each run: ``(R, num_samples, *event)``.
        """
        gen = as_generator(seed, self.log_weights.device)
        w = normalize(self.log_weights.to(torch.float64)).exp()
        idx = torch.multinomial(w.reshape(-1, w.shape[-1]), num_samples, replacement=True, generator=gen)
        return {name: self._take(v, idx) for name, v in self.particles.items()}

    def best(self, num: int = 1) -> dict[str, torch.Tensor]:
        """The ``num`` particles of largest weight, best first (best-of-N after importance sampling)."""
        idx = torch.topk(self.log_weights.reshape(-1, self.num_particles), num, dim=-1).indices
        return {name: self._take(v, idx) for name, v in self.particles.items()}

    def mean(self, site: str | None = None) -> torch.Tensor:
        """Self-normalised weighted mean of a site (per run)."""
        v = self.particles[site or self.site].to(torch.float64)
        w = normalize(self.log_weights.to(torch.float64)).exp()
        return (w.reshape(w.shape + (1,) * (v.ndim - w.ndim)) * v).sum(w.ndim - 1)

    def _take(self, value: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        if not self.batched:
            return value[idx[0]]
        return value[torch.arange(idx.shape[0], device=idx.device)[:, None], idx]

    def __repr__(self) -> str:
        runs = self.log_weights.shape[0] if self.batched else 1
        shape = tuple(self.particles[self.site].shape) if self.site in self.particles else "?"
        more = len(self.particles) - (self.site in self.particles)
        text = (
            f"Result({self.config.get('engine', '?')}: {runs} run{'s' * (runs > 1)} × {self.num_particles} "
            f"particles of site {self.site!r} {shape}{f' (+{more} sites)' if more else ''}; "
            f"log Ẑ {log_evidence_text(self.log_evidence, self.config.get('groups', 1))}"
        )
        if not torch.isnan(self.log_evidence).all():
            text += f"; final ESS {float(self.ess.min()):.1f} of {self.num_particles}{' (worst run)' * (runs > 1)}"
        steps = "no per-step trace" if self.trace is None else f"{self.trace.ess.shape[0]} steps"
        return text + f"; {steps})"

    def _repr_html_(self) -> str:
        """The notebook summary (:func:`tilted.diagnostics.report.render_summary`)."""
        from tilted.diagnostics.report import render_summary

        with warnings.catch_warnings():  # a display is no place for conversion warnings
            warnings.simplefilter("ignore")
            return render_summary(self)


def log_evidence_text(log_evidence, groups: int = 1) -> str:
    """log Ẑ over R runs as "mean ± s.e. (over R runs)", s.e. = sd/√R; per group with P groups (run r = m·P + p).

    NaN everywhere (approximate engines) reads "none"; one run has no standard error.
    """
    z = torch.as_tensor(log_evidence, dtype=torch.float64).reshape(-1).cpu()
    if torch.isnan(z).all():
        return "none (an approximate engine: unweighted particles, no evidence estimate)"
    M = z.numel() // groups
    z = z.reshape(M, groups)
    if M == 1:
        values = [f"{float(v):.4g}" for v in z[0]]
        how = "one run: no standard error, use num_runs ≥ 2"
    else:
        se = z.std(0) / math.sqrt(M)
        values = [f"{float(m):.4g} ± {float(s):.2g}" for m, s in zip(z.mean(0), se, strict=True)]
        how = f"mean ± s.e. over {M} runs" + " of each group" * (groups > 1)
    if groups > 1:
        shown = [f"group {p}: {v}" for p, v in enumerate(values[:4])]
        values = ["; ".join(shown) + ("; …" if groups > 4 else "")]
    return f"{values[0]} ({how})"


def collect(plan, x, rewards, log_weights, log_evidence, infos, counts, config, batched: bool) -> Result:
    """Assemble a :class:`Result` from an engine's final particles (R, N, *event) and its step records.

    The model is replayed with the final states (and the rewards already computed), so every site has
    a value (sites whose values do not carry the particle dimensions are left out); without
    ``batched`` (and without groups) the run dimension R = 1 is dropped.
    """
    R, N = log_weights.shape
    batched = batched or plan.grouped
    site = plan.to_site(x, 2)
    values = plan.replay(site, plan.to_site(rewards, 2, lead=1))
    lead = site.shape[: 1 + plan.grouped]
    particles = {name: plan.from_site(v, (R, N)) for name, v in values.items() if v.shape[: len(lead)] == lead}

    def out(t):
        return t if batched else t[0]

    def stack(name):
        return torch.stack([getattr(i, name) for i in infos])

    trace = StepTrace(
        ess=stack("ess"),
        resampled=stack("resampled"),
        lambdas=stack("lambdas"),
        log_evidence_increments=stack("log_evidence_increment"),
        ancestors=stack("ancestors"),
        timesteps=torch.cat([plan.process.timesteps, torch.tensor([-1])]),
        drift_clipped=torch.stack(
            [i.ess.new_zeros(i.ess.shape) if i.drift_clipped is None else i.drift_clipped.to(i.ess) for i in infos]
        ),
        log_increments=torch.stack(
            [
                torch.zeros(i.ancestors.shape, dtype=torch.float64, device=i.ancestors.device)
                if i.log_increments is None
                else i.log_increments.to(torch.float64)
                for i in infos
            ]
        ),
    )
    if not batched:
        run_dim = {"lambdas": 2, "timesteps": None}
        trace = StepTrace(
            **{
                f.name: getattr(trace, f.name)
                if run_dim.get(f.name, 1) is None
                else getattr(trace, f.name).select(run_dim.get(f.name, 1), 0)
                for f in fields(trace)
            }
        )
    return Result(
        particles={k: out(v) for k, v in particles.items()},
        log_weights=out(log_weights),
        log_evidence=out(log_evidence),
        rewards={f.name: out(rewards[j]) for j, f in enumerate(plan.factors)},
        site=plan.site,
        trace=trace,
        counts=counts,
        config={**config, "groups": plan.groups} if plan.grouped else config,
        temperatures={f.name: float(f.temperature) for f in plan.factors},
    )
