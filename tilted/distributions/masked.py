"""Masked (absorbing-state) discrete diffusion as a sequential Pyro distribution.

Sequences have length L and tokens 0, …, V−1; the id V is the mask token. Levels k = K, …, 0 carry
α_k, the probability that a token is unmasked (visible) at level k, with α_K = 0 (x_K is all masks)
and α_0 = 1 (x_0 has no mask). With t_k = k/K the schedules are

- ``"linear"``:    α(t) = 1 − t;
- ``"loglinear"``: the MDLM/SEDD log-linear noise σ(t) = −log(1 − (1 − ε)t), α(t) = e^{−σ(t)} =
  1 − (1 − ε)t with ε = 10⁻³, at the levels k < K; the first level is set to α_K = 0 (MDLM's sampler
  also starts from the all-mask prior);
- ``"cosine"``:    α(t) = 1 − cos(π/2 · (1 − t)) (MaskGIT's mask ratio cos(π/2 · (1 − t)) read backwards);

or a callable α(t) on a float64 tensor of times, or a tensor (α_0, …, α_K). The values must not
increase with k, α_k < 1 for k ≥ 1, and the end points are set to α_0 = 1, α_K = 0 exactly.

Step k (x_k → x_{k-1}). The denoiser gives per-position probabilities x̂_0(x_k) over the V clean
tokens (one-hot on the visible token at unmasked positions: carry-over unmasking). Positions are
independent given x_k:

- an unmasked position is carried: x_{k-1,i} = x_{k,i};
- a masked position becomes token j with probability  u_k · x̂_0(x_k)_{ij},  u_k = (α_{k-1} − α_k)/(1 − α_k),
  and stays masked with probability 1 − u_k = (1 − α_{k-1})/(1 − α_k).

So :meth:`transition` is exact: the product over positions of categoricals over V + 1 outcomes.
The final step: α_0 = 1 gives u_1 = (1 − α_1)/(1 − α_1) = 1 exactly, so every position still masked
at level 1 is filled and x_0 has no mask.

The denoiser is any callable ``denoiser(x_t, t, **context)`` with x_t of shape (B, L) (``long``, mask
id V) and t of shape (B,) holding t_k = k/K (float), returning logits (B, L, V) over the clean
tokens. With ``data=TabularSequences(probs)`` the exact posterior is used instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import torch
from pyro.distributions import Delta
from torch.distributions import constraints

from tilted.distributions.process import SequentialProcess
from tilted.errors import ModelError, ShapeError

F64 = torch.float64
SCHEDULES = ("linear", "loglinear", "cosine")
LOGLINEAR_EPS = 1e-3


class SequenceLaw(Protocol):
    """A data law over sequences with an exact masked-diffusion denoiser (e.g. ``TabularSequences``)."""

    vocab_size: int
    length: int

    def posterior(self, x: torch.Tensor) -> torch.Tensor: ...


def masking_schedule(schedule: Any, num_steps: int) -> torch.Tensor:
    """α_k for k = 0, …, K (float64) from a schedule name, a callable α(t) or a tensor (module docstring)."""
    K = int(num_steps)
    t = torch.arange(K + 1, dtype=F64) / K
    if isinstance(schedule, str):
        if schedule == "linear":
            a = 1 - t
        elif schedule == "loglinear":
            sigma = -torch.log1p(-(1 - LOGLINEAR_EPS) * t)  # σ(t), infinite nowhere: (1 − ε)t < 1
            a = torch.exp(-sigma)
        elif schedule == "cosine":
            a = 1 - torch.cos(math.pi / 2 * (1 - t))
        else:
            raise ModelError(f"unknown schedule {schedule!r}; use one of {SCHEDULES}, a callable α(t) or a tensor")
    elif callable(schedule):
        a = torch.as_tensor(schedule(t), dtype=F64)
    else:
        a = torch.as_tensor(schedule, dtype=F64)
    if a.shape != (K + 1,):
        raise ModelError(f"the schedule must give K + 1 = {K + 1} values α_0, …, α_K, got shape {tuple(a.shape)}")
    a = a.clone()
    a[0], a[K] = 1.0, 0.0
    if not torch.isfinite(a).all() or (a < 0).any() or (a[1:] > a[:-1]).any() or (a[1:] >= 1).any():
        raise ModelError("α_k must be finite, in [0, 1), non-increasing in k for k ≥ 1, with α_0 = 1 and α_K = 0")
    return a


class MaskedDiffusion(SequentialProcess):
    """A pretrained masked diffusion model over token sequences as a Pyro distribution (module docstring).

    Parameters
    ----------
    denoiser
        ``denoiser(x_t, t, **context) -> logits`` of shape (B, L, V) for x_t of shape (B, L) (``long``)
        and t of shape (B,) (t_k = k/K). A ``torch.nn.Module`` or any callable; an output with a
        ``.logits`` attribute is unwrapped.
    data
        A sequence law with an exact denoiser (:class:`~tilted.distributions.TabularSequences`), used
        instead of ``denoiser``.
    length, vocab_size
        L and V (taken from ``data`` when given). The mask token id is V.
    num_steps
        K.
    schedule
        ``"linear"``, ``"loglinear"``, ``"cosine"``, a callable α(t), or a tensor (α_0, …, α_K).
    context
        Keyword arguments passed to every denoiser call (conditioning).
    """

    def __init__(
        self,
        denoiser: Callable[..., Any] | None = None,
        *,
        data: SequenceLaw | None = None,
        length: int | None = None,
        vocab_size: int | None = None,
        num_steps: int = 100,
        schedule: Any = "linear",
        context: Mapping[str, Any] | None = None,
    ):
        if (denoiser is None) == (data is None):
            raise ModelError("give exactly one of denoiser= (a network or callable) and data= (a sequence law)")
        if data is not None:
            for name, given, have in (("length", length, data.length), ("vocab_size", vocab_size, data.vocab_size)):
                if given is not None and int(given) != int(have):
                    raise ShapeError(f"{name}={given} differs from the data law's {have}")
            length, vocab_size = data.length, data.vocab_size
        if length is None or vocab_size is None:
            raise ModelError("length= and vocab_size= are required with a denoiser")
        for name, v in (("length", length), ("vocab_size", vocab_size), ("num_steps", num_steps)):
            if isinstance(v, bool) or int(v) != v or v < 1:
                raise ModelError(f"{name} must be a positive integer, got {v!r}")
        super().__init__(torch.Size([int(length)]), int(num_steps))
        self.length, self.vocab_size = int(length), int(vocab_size)
        self.denoiser = denoiser
        self.data = data
        self.context = dict(context or {})
        self.schedule = schedule if isinstance(schedule, str) else "custom"
        #: α_k for levels k = 0, …, K (index by level), float64
        self.alphas = masking_schedule(schedule, self.num_steps)
        #: t_k = k/K for k = K, …, 1, in sampling order (what the denoiser is given)
        self.timesteps = torch.arange(self.num_steps, 0, -1, dtype=F64) / self.num_steps

    def __repr__(self) -> str:
        return (
            f"MaskedDiffusion(length={self.length}, vocab_size={self.vocab_size}, num_steps={self.num_steps}, "
            f"schedule={self.schedule!r})"
        )

    @property
    def mask_id(self) -> int:
        return self.vocab_size

    @property
    def support(self):
        return constraints.integer_interval(0, self.vocab_size - 1)

    @property
    def signal_fraction(self) -> torch.Tensor:
        """α_k for k = 0, …, K, the fraction of visible tokens: the weight ``potential_weight="signal"`` gives level k."""
        return self.alphas

    def unmask_probability(self, k: int) -> float:
        """u_k = (α_{k-1} − α_k)/(1 − α_k): the chance that a masked position is filled at step k (u_1 = 1)."""
        if not 1 <= int(k) <= self.num_steps:
            raise ModelError(f"level k must be in 1..{self.num_steps}, got {k}")
        a, a_prev = float(self.alphas[k]), float(self.alphas[k - 1])
        return (a_prev - a) / (1 - a)

    def _check(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.is_floating_point() or x.is_complex():
            raise ShapeError("masked diffusion states are integer token ids (a long tensor)")
        if x.ndim < 1 or x.shape[-1] != self.length:
            raise ShapeError(f"expected x with trailing shape ({self.length},), got {tuple(x.shape)}")
        return x.long()

    # -- the chain --------------------------------------------------------------------------
    def initial(self):
        return Delta(torch.full(self.event_shape, self.mask_id, dtype=torch.long), event_dim=1)

    def draw_initial(self, shape, generator=None):
        return torch.full(torch.Size(shape) + self.event_shape, self.mask_id, dtype=torch.long, device=self.device)

    def placeholder(self) -> torch.Tensor:
        return torch.zeros(self.event_shape, dtype=torch.long, device=self.device)

    def kernel(self, fill: str = "soft", num_fills: int = 4, **options):
        """What SMC moves with on this process: categorical moves and fill potentials (:mod:`tilted.inference.discrete`)."""
        from tilted.inference.discrete import MaskedKernel

        return MaskedKernel(self, fill, num_fills)

    def predict(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """x̂_0(x_k): per-position probabilities over the V clean tokens, (..., L, V), float64.

        One-hot on the visible token at unmasked positions (carry-over unmasking).
        """
        x = self._check(x)
        V = self.vocab_size
        masked = x == V
        if self.data is not None:
            probs = self.data.posterior(x).to(F64)
        else:
            batch = x.shape[:-1]
            flat = x.reshape(-1, self.length)
            t = torch.full((flat.shape[0],), k / self.num_steps, dtype=torch.get_default_dtype(), device=x.device)
            out = self.denoiser(flat, t, **self.context)
            out = getattr(out, "logits", out)
            want = (flat.shape[0], self.length, V)
            if not isinstance(out, torch.Tensor) or tuple(out.shape) != want:
                got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                raise ShapeError(
                    f"the denoiser returned {got} for x_t of shape {tuple(flat.shape)}; it must return logits {want}"
                )
            if not torch.isfinite(out).all():
                raise ShapeError("the denoiser returned non-finite logits")
            probs = torch.softmax(out.to(F64), -1).reshape(batch + (self.length, V))
        onehot = torch.nn.functional.one_hot(x.clamp_max(V - 1), V).to(F64)
        return torch.where(masked[..., None], probs, onehot)

    def transition_probs(self, x: torch.Tensor, k: int, prediction: torch.Tensor | None = None) -> torch.Tensor:
        """p(x_{k-1,i} = o | x_k) for every position i and outcome o ∈ {0, …, V−1, mask}: (..., L, V + 1), float64."""
        x = self._check(x)
        x0 = self.predict(x, k) if prediction is None else prediction.to(F64)
        a, a_prev = float(self.alphas[k]), float(self.alphas[k - 1])
        fill, stay = (a_prev - a) / (1 - a), (1 - a_prev) / (1 - a)  # exactly 1 and 0 at k = 1
        x0 = x0 / x0.sum(-1, keepdim=True)
        masked = (x == self.vocab_size)[..., None]
        on_mask = torch.cat([fill * x0, torch.full_like(x0[..., :1], stay)], -1)
        carried = torch.cat([x0, torch.zeros_like(x0[..., :1])], -1)
        return torch.where(masked, on_mask, carried)

    def transition(self, x, k, prediction=None):
        logits = self.transition_probs(x, k, prediction).log()
        return torch.distributions.Independent(torch.distributions.Categorical(logits=logits), 1)

    def draw_transition(self, x, k, generator=None, prediction=None):
        return draw_categorical(self.transition_probs(x, k, prediction), generator)


def draw_categorical(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One draw per row of ``probs`` (..., C) (rows need not be normalised); shape ``probs.shape[:-1]``, long."""
    flat = probs.reshape(-1, probs.shape[-1])
    if flat.shape[0] == 0:
        return torch.zeros(probs.shape[:-1], dtype=torch.long)
    return torch.multinomial(flat, 1, generator=generator).reshape(probs.shape[:-1])
