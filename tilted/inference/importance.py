"""Importance sampling with the pretrained model as proposal; best-of-N as its argmax.

Notes
-----
N independent ancestral runs x_0^i ~ p_θ, weights w_i = exp(Σ_j r_j(x_0^i)/α_j) and
Ẑ = (1/N) Σ_i w_i (unbiased). In Feynman–Kac terms: the prior proposal, ψ_k = 0 for k > 0 and
no resampling, so this is :class:`~tilted.inference.smc.SMC` with the terminal potential; the
reward is called once per particle, at the end.

Best-of-N (rejection of all but the highest reward) is the α → 0 limit of drawing one particle
from these weights: ``Importance(model, N).run(seed=0).best()``.
"""

from __future__ import annotations

from tilted.inference.smc import SMC


class Importance(SMC):
    """Self-normalised importance sampling of the tilted target from the pretrained chain.

    Parameters
    ----------
    model, num_particles, num_runs, batch_size, progress, budget
        As for :class:`~tilted.inference.smc.SMC` (a budget sizes N: K denoiser calls and F reward calls
        per particle).
    """

    def __init__(
        self, model, num_particles: int | None = None, *, num_runs=None, batch_size=None, progress=None, budget=None
    ):
        super().__init__(
            model,
            num_particles,
            proposal="prior",
            potential="terminal",
            ess_threshold=0.0,
            num_runs=num_runs,
            batch_size=batch_size,
            progress=progress,
            budget=budget,
        )

    def config(self) -> dict:
        return {
            "engine": "Importance",
            "num_particles": self._particles,
            "num_runs": self.num_runs,
            "budget": None if self.budget is None else self.budget.as_dict(),
        }
