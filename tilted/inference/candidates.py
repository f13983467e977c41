"""Candidate expansion and selection: the moves of SVDD, nested importance sampling and beam search.

:func:`expand` draws M candidates x_{k-1}^{(1…M)} ~ p_k(· | x_k) per particle from the pretrained
kernel, reusing the denoiser output x̂_0(x_k) the particle already carries (the kernel needs no
further call): Gaussian moves N(μ_k, σ_k²I), or for a masked model the per-position categoricals of
:meth:`~tilted.distributions.MaskedDiffusion.transition_probs`. A deterministic Gaussian step
(σ_k = 0: DDIM with η = 0, or the last step to ᾱ_0 = 1) has one possible successor, so it yields one
candidate whatever M: selection among copies of one state would change nothing, and evaluating them
would waste calls.

The randomness of candidate m of particle i is drawn in one call over (R, N, M, …): with M = 1 this
consumes the generator exactly as the pretrained sampler (``process.sample``) does, so an engine with
one candidate reproduces pretrained draws bit for bit.

Selection: :func:`choose` picks one candidate per particle, with probability ∝ exp(logit) or by
argmax; :func:`take` gathers per-candidate tensors by the chosen index; :func:`top` keeps the best
N of all N·M candidates of a run (beam search).
"""

from __future__ import annotations

import torch

from tilted.distributions.masked import MaskedDiffusion, draw_categorical

F64 = torch.float64


def expand(process, x: torch.Tensor, x0: torch.Tensor, k: int, num: int, generator=None) -> torch.Tensor:
    """Candidates (R, N, M', *event) from p_k(· | x_k) with x̂_0(x_k) = x0; M' = num, or 1 if step k is deterministic."""
    if isinstance(process, MaskedDiffusion):
        probs = process.transition_probs(x, k, x0).unsqueeze(2)  # (R, N, 1, L, V + 1)
        return draw_categorical(probs.expand(probs.shape[:2] + (num,) + probs.shape[3:]), generator)
    mean, sigma = process.transition_moments(x, k, x0)
    mean = mean.unsqueeze(2)
    if sigma == 0:
        return mean
    shape = mean.shape[:2] + (num,) + mean.shape[3:]
    return mean + sigma * torch.randn(shape, generator=generator, dtype=mean.dtype, device=mean.device)


def choose(logits: torch.Tensor, greedy: bool, generator=None) -> torch.Tensor:
    """Index (R, N) of one candidate per particle from logits (R, N, M): argmax, or a draw ∝ exp(logits).

    With one candidate nothing is drawn (the generator is left untouched).
    """
    R, N, M = logits.shape
    if M == 1:
        return logits.new_zeros((R, N), dtype=torch.long)
    if greedy:
        return logits.argmax(-1)
    probs = torch.softmax(logits.to(F64), -1).reshape(R * N, M)
    return torch.multinomial(probs, 1, generator=generator).reshape(R, N)


def take(values: torch.Tensor | None, index: torch.Tensor, dim: int) -> torch.Tensor | None:
    """``values`` of shape (..., R, N, M, *rest) with (R, N, M) starting at ``dim``, at candidate ``index`` (R, N)."""
    if values is None:
        return None
    idx = index.reshape((1,) * dim + index.shape + (1,) * (values.ndim - dim - 2))
    idx = idx.expand(values.shape[:dim] + index.shape + (1,) + values.shape[dim + 3 :])
    return values.gather(dim + 2, idx).squeeze(dim + 2)


def top(scores: torch.Tensor, num: int) -> torch.Tensor:
    """Indices (R, num) of the ``num`` largest scores of each run (R, C), best first."""
    return torch.topk(scores, num, dim=-1, sorted=True).indices
