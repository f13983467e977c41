"""Sequence laws given by an explicit table over V^L, with the exact masked-diffusion denoiser.

A table P over all sequences s ∈ {0, …, V−1}^L is a data law whose denoiser for masked diffusion is
exact and needs no training. Given a partially masked x (mask token id V), the clean sequences
consistent with x are those that agree with x at every unmasked position, and the posterior over the
clean token at position i is

    p(x_{0,i} = j | x) = Σ_{s consistent with x, s_i = j} P(s)  /  Σ_{s consistent with x} P(s).

For masked diffusion this posterior does not depend on the level: the mask pattern is drawn
independently of the tokens, so x_k tells only which tokens are visible. At an unmasked position it
is one-hot on the visible token (carry-over unmasking).

When no sequence of positive probability is consistent with x, the posterior is undefined. A masked
chain can reach such an x: positions unmasked at the same step are drawn independently given x_k, so
the pair can be one the table never produces. There we fall back to the data's unconditional
per-position marginals p(x_{0,i} = j) at the masked positions (still one-hot at the visible ones).

:class:`TableReward` is the companion reward: a table r(s) over V^L, evaluated by lookup on token
tensors and by its multilinear extension on probability vectors (the relaxed input the Taylor
proposal differentiates, see :mod:`tilted.inference.discrete`).
"""

from __future__ import annotations

import torch

from tilted._random import Seed, as_generator
from tilted.errors import ModelError, ShapeError

F64 = torch.float64

#: largest table (number of sequences V^L) handled here: tables are enumerated densely
MAX_SEQUENCES = 1 << 20


def all_sequences(vocab_size: int, length: int) -> torch.Tensor:
    """Every sequence of {0, …, V−1}^L in lexicographic order, shape (V^L, L), ``long``.

    Row n is the base-V expansion of n, most significant digit first: the order of
    ``table.reshape(-1)`` for a table of shape (V,)*L.
    """
    V, L = int(vocab_size), int(length)
    if V < 1 or L < 1:
        raise ModelError(f"vocab_size and length must be positive, got {V} and {L}")
    if V**L > MAX_SEQUENCES:
        raise ModelError(f"V^L = {V}^{L} sequences are too many to enumerate (at most {MAX_SEQUENCES})")
    n = torch.arange(V**L)
    powers = V ** torch.arange(L - 1, -1, -1)
    return (n[:, None] // powers) % V


def sequence_index(x: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """The position of each sequence (..., L) in :func:`all_sequences` order: Σ_i x_i V^{L−1−i}."""
    L = x.shape[-1]
    powers = int(vocab_size) ** torch.arange(L - 1, -1, -1, device=x.device)
    return (x.long() * powers).sum(-1)


def _check_table(table, name: str) -> torch.Tensor:
    t = torch.as_tensor(table, dtype=F64)
    if t.ndim < 1 or len(set(t.shape)) != 1:
        raise ShapeError(f"{name} must have shape (V,)*L (one axis per position, V tokens each), got {tuple(t.shape)}")
    if t.shape[0] < 1 or t.numel() > MAX_SEQUENCES:
        raise ShapeError(f"{name} of shape {tuple(t.shape)} is empty or has more than {MAX_SEQUENCES} entries")
    if not torch.isfinite(t).all():
        raise ModelError(f"{name} has non-finite entries")
    return t


class TabularSequences:
    """A data law over sequences of length L with tokens 0..V−1, given by its probability table.

    Parameters
    ----------
    probs
        Tensor of shape (V,)*L: probs[s_1, …, s_L] ∝ P(s). Non-negative with a positive sum; normalised
        here (kept in float64).

    Notes
    -----
    ``MaskedDiffusion(data=TabularSequences(probs), num_steps=K)`` is a pretrained masked diffusion
    model with the exact denoiser :meth:`posterior` (module docstring). The law of x_0 under that
    chain is *not* P in general: see :class:`tilted.reference.MaskedChain`.
    """

    def __init__(self, probs):
        p = _check_table(probs, "probs")
        if (p < 0).any() or p.sum() <= 0:
            raise ModelError("probs must be non-negative with a positive sum")
        self.vocab_size = p.shape[0]
        self.length = p.ndim
        self.probs = p / p.sum()
        self.event_shape = torch.Size([self.length])
        self.sequences = all_sequences(self.vocab_size, self.length)  # (S, L)
        self._flat = self.probs.reshape(-1)
        # (S, L, V) one-hot of every sequence, and the per-position marginals (L, V)
        self._onehot = torch.nn.functional.one_hot(self.sequences, self.vocab_size).to(F64)
        self.marginals = torch.einsum("s,slv->lv", self._flat, self._onehot)

    def __repr__(self) -> str:
        return f"TabularSequences(vocab_size={self.vocab_size}, length={self.length})"

    @property
    def mask_id(self) -> int:
        return self.vocab_size

    def _check(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.is_floating_point() or x.is_complex():
            raise ShapeError("expected a tensor of integer token ids")
        if x.ndim < 1 or x.shape[-1] != self.length:
            raise ShapeError(f"expected sequences of length {self.length} in the last dimension, got {tuple(x.shape)}")
        return x.long()

    def posterior(self, x: torch.Tensor) -> torch.Tensor:
        """p(x_{0,i} = j | visible tokens of x) for every position: shape (..., L, V), float64.

        ``x`` holds token ids 0..V−1 and the mask id V. Positions that are unmasked get a one-hot row.
        """
        x = self._check(x)
        V, L, S = self.vocab_size, self.length, self.sequences.shape[0]
        if ((x < 0) | (x > V)).any():
            raise ShapeError(
                f"token ids must be in 0..{V} ({V} is the mask), got values in {int(x.min())}..{int(x.max())}"
            )
        batch = x.shape[:-1]
        flat = x.reshape(-1, L)
        masked = flat == V
        out = []
        chunk = max(1, (1 << 22) // (S * L))
        for xs, ms in zip(flat.split(chunk), masked.split(chunk), strict=True):
            agree = (xs[:, None, :] == self.sequences[None]) | ms[:, None, :]  # (B, S, L)
            w = agree.all(-1).to(F64) * self._flat  # (B, S): P(s) on the consistent sequences
            post = torch.einsum("bs,slv->blv", w, self._onehot)
            total = w.sum(-1)[:, None, None]
            empty = total <= 0
            fallback = torch.where(
                ms[..., None], self.marginals, torch.nn.functional.one_hot(xs.clamp_max(V - 1), V).to(F64)
            )
            out.append(torch.where(empty, fallback, post / total.clamp_min(torch.finfo(F64).tiny)))
        return torch.cat(out).reshape(batch + (L, V))

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """log P(x) for clean sequences (..., L) (−∞ off the support), float64."""
        x = self._check(x)
        if ((x < 0) | (x >= self.vocab_size)).any():
            raise ShapeError(f"clean token ids must be in 0..{self.vocab_size - 1}")
        return self._flat[sequence_index(x, self.vocab_size)].log()

    def sample(self, n: int, generator: Seed = None) -> torch.Tensor:
        """n independent draws from P, shape (n, L), ``long``."""
        idx = torch.multinomial(self._flat, n, replacement=True, generator=as_generator(generator))
        return self.sequences[idx]


class TableReward:
    """A reward given by a table r(s) over V^L, usable with the Taylor (gradient) proposal.

    Called on token ids (..., L) (``long``) it looks the table up. Called on float probability vectors
    P of shape (..., L, V) it returns the multilinear extension

        r(P) = Σ_s r(s) Π_i P_{i, s_i}  =  E[r(S)],  S_i ~ P_i independently,

    which equals the table on one-hot inputs and is differentiable, with ∂r/∂P_{ij} = E[r(S) | S_i = j]
    when rows of P are probability vectors: the first-order (Taylor) tilt is then exact for single-position
    changes. Values are float64.
    """

    def __init__(self, table):
        t = _check_table(table, "table")
        self.table = t
        self.vocab_size = t.shape[0]
        self.length = t.ndim

    def __repr__(self) -> str:
        return f"TableReward(vocab_size={self.vocab_size}, length={self.length})"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        V, L = self.vocab_size, self.length
        if x.is_floating_point():
            if x.ndim < 2 or x.shape[-2:] != (L, V):
                raise ShapeError(f"TableReward: relaxed input must have shape (..., {L}, {V}), got {tuple(x.shape)}")
            batch = x.shape[:-2]
            P = x.to(F64)
            out = self.table.reshape(V, -1).expand(batch + (V, V ** (L - 1)))  # (..., V, rest)
            for i in range(L):
                out = (out * P[..., i, :, None]).sum(-2)  # contract position i
                if i < L - 1:
                    out = out.reshape(batch + (V, V ** (L - 2 - i)))
            return out[..., 0]
        if x.ndim < 1 or x.shape[-1] != L:
            raise ShapeError(f"TableReward: expected token ids of shape (..., {L}), got {tuple(x.shape)}")
        if ((x < 0) | (x >= V)).any():
            raise ShapeError(f"TableReward: token ids must be in 0..{V - 1} (no masks), got {x.min()}..{x.max()}")
        return self.table.reshape(-1)[sequence_index(x, V)]
