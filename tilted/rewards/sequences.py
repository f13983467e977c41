"""Rewards on token sequences: composition, motifs, another masked LM's pseudo-likelihood, a learned regressor.

Every reward here takes library token ids x of shape (..., L) (``long``, values 0..V−1, no masks; the
alphabet names token i) and returns one value per sequence, float64. The differentiable ones also take
the relaxed input of the Taylor proposal, probability vectors P of shape (..., L, V) (one-hot rows
are the sequences themselves):

- :class:`Composition`: r(x) = reduce_i w(x_i) over positions (mean or sum), e.g. the hydrophobic
  fraction (:func:`hydrophobic_fraction`) or the net charge (:func:`net_charge`); relaxed, reduce_i Σ_j P_ij w_j,
  its multilinear extension (exact first-order tilts);
- :class:`PWMScore`: a position weight matrix M (W × V log-odds) scanned along the sequence,
  r(x) = log Σ_s exp Σ_w M[w, x_{s+w}] (a smooth maximum over start positions s); relaxed, the window
  scores are Σ_w Σ_j P_{s+w, j} M[w, j];
- :class:`Motif`: the number of non-overlapping matches of a regular expression in the decoded string
  (not differentiable);
- :class:`PseudoLogLikelihood`: Σ_i log p(x_i | x_{−i}) under a masked LM (a
  :class:`~tilted.distributions.MaskedLM`), one masked copy per position, batched (not differentiable);
- :class:`SequenceRegressor`: a small convolutional network on one-hot tokens fitted to (sequence,
  value) pairs by :meth:`SequenceRegressor.fit`: a learned property predictor (differentiable).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import torch

from tilted.errors import ModelError, ShapeError
from tilted.rewards.base import Reward

F64 = torch.float64

#: Kyte–Doolittle's hydrophobic residues (positive hydropathy) of the 20 amino acids
HYDROPHOBIC = "AILMFVC"


class SequenceReward(Reward):
    """Base of the sequence rewards: an alphabet of V token strings, and the checks of ids and relaxed inputs."""

    input = "sequences"

    def __init__(self, alphabet: str | Sequence[str]):
        self.alphabet = list(alphabet)
        if not self.alphabet or len(set(self.alphabet)) != len(self.alphabet):
            raise ModelError("the alphabet must list distinct token strings")

    @property
    def vocab_size(self) -> int:
        return len(self.alphabet)

    def relaxed(self, x: torch.Tensor) -> torch.Tensor:
        """x as probability vectors (..., L, V), float64: one-hot for ids, checked for relaxed input."""
        V = self.vocab_size
        if x.is_floating_point():
            if x.ndim < 2 or x.shape[-1] != V:
                raise ShapeError(
                    f"{type(self).__name__}: relaxed input must be probability vectors (..., L, {V}), "
                    f"got {tuple(x.shape)}"
                )
            return x.to(F64)
        return torch.nn.functional.one_hot(self.ids(x), V).to(F64)

    def ids(self, x: torch.Tensor) -> torch.Tensor:
        """x checked as token ids (..., L) in 0..V−1 (a mask id or a foreign id is a clear error)."""
        if x.is_floating_point() or x.ndim < 1:
            raise ShapeError(f"{type(self).__name__}: expected token ids (..., L), got {x.dtype} {tuple(x.shape)}")
        if x.numel() and (x.min() < 0 or x.max() >= self.vocab_size):
            raise ShapeError(
                f"{type(self).__name__}: token ids must be in 0..{self.vocab_size - 1} (the alphabet "
                f"{''.join(self.alphabet)!r}; masks are not sequences), got {int(x.min())}..{int(x.max())}"
            )
        return x.long()

    def strings(self, x: torch.Tensor) -> list[str]:
        """The decoded strings of ids (..., L), flattened over the batch."""
        ids = self.ids(x).reshape(-1, x.shape[-1]).tolist()
        return ["".join(self.alphabet[i] for i in row) for row in ids]


class Composition(SequenceReward):
    """r(x) = reduce_i w(x_i): per-token weights, averaged (``"mean"``) or summed (``"sum"``) over positions."""

    def __init__(self, alphabet, weights: Mapping[str, float], reduce: str = "mean"):
        super().__init__(alphabet)
        unknown = sorted(set(weights) - set(self.alphabet))
        if unknown:
            raise ModelError(f"weights for tokens {unknown} that are not in the alphabet")
        if reduce not in ("mean", "sum"):
            raise ModelError(f"reduce must be 'mean' or 'sum', got {reduce!r}")
        self.weights = torch.tensor([float(weights.get(a, 0.0)) for a in self.alphabet], dtype=F64)
        self.reduce = reduce

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        per_position = self.relaxed(x) @ self.weights.to(x.device)
        return per_position.mean(-1) if self.reduce == "mean" else per_position.sum(-1)

    def __repr__(self) -> str:
        nonzero = {a: float(w) for a, w in zip(self.alphabet, self.weights, strict=True) if w}
        return f"Composition({nonzero}, reduce={self.reduce!r})"


def hydrophobic_fraction(alphabet, residues: str = HYDROPHOBIC) -> Composition:
    """The fraction of positions holding a hydrophobic residue (default Kyte–Doolittle's ``"AILMFVC"``)."""
    return Composition(alphabet, {a: 1.0 for a in residues if a in alphabet})


def net_charge(alphabet, positive: str = "KR", negative: str = "DE", histidine: float = 0.0) -> Composition:
    """The net charge Σ_i q(x_i) at neutral pH: +1 for K and R, −1 for D and E, ``histidine`` for H."""
    weights = {a: 1.0 for a in positive} | {a: -1.0 for a in negative}
    if histidine:
        weights["H"] = float(histidine)
    return Composition(alphabet, {a: w for a, w in weights.items() if a in alphabet}, reduce="sum")


class PWMScore(SequenceReward):
    """r(x) = log Σ_s exp Σ_w M[w, x_{s+w}]: a position weight matrix M (W, V) scanned along x (smooth max)."""

    def __init__(self, alphabet, matrix):
        super().__init__(alphabet)
        m = torch.as_tensor(matrix, dtype=F64)
        if m.ndim != 2 or m.shape[1] != self.vocab_size or not torch.isfinite(m).all():
            raise ModelError(
                f"the PWM must be a finite (W, {self.vocab_size}) matrix of log-odds, got {tuple(m.shape)}"
            )
        self.matrix = m

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        P = self.relaxed(x)
        W, L = self.matrix.shape[0], P.shape[-2]
        if W > L:
            raise ShapeError(f"PWMScore: the motif has width {W}, longer than the sequences ({L})")
        windows = P.unfold(-2, W, 1)  # (..., L − W + 1, V, W)
        scores = torch.einsum("...svw,wv->...s", windows, self.matrix.to(P.device))
        return torch.logsumexp(scores, -1)


class Motif(SequenceReward):
    """r(x) = the number of non-overlapping matches of the regular expression ``pattern`` in the string of x."""

    differentiable = False

    def __init__(self, alphabet, pattern: str):
        super().__init__(alphabet)
        try:
            self.pattern = re.compile(pattern)
        except re.error as err:
            raise ModelError(f"invalid motif pattern {pattern!r}: {err}") from err

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_floating_point():
            raise ModelError("Motif counts matches in token ids and has no relaxed form; use proposal='prior'")
        counts = [len(self.pattern.findall(s)) for s in self.strings(x)]
        return torch.tensor(counts, dtype=F64, device=x.device).reshape(x.shape[:-1])


class PseudoLogLikelihood(Reward):
    """r(x) = Σ_i log p(x_i | x_{−i}) under a masked LM: L masked copies of each sequence, ``batch_size`` rows a call.

    ``model`` is a :class:`~tilted.distributions.MaskedLM` (from :func:`~tilted.distributions.from_masked_lm`)
    over the same tokens as the sequences; its ``predict`` gives p(x_i | x with position i masked).
    """

    differentiable = False
    input = "sequences"

    def __init__(self, model, batch_size: int = 1024):
        from tilted.distributions.masked import MaskedDiffusion

        if not isinstance(model, MaskedDiffusion):
            raise ModelError("PseudoLogLikelihood needs a MaskedDiffusion (e.g. from_masked_lm(...)) as its model")
        self.model, self.batch_size = model, int(batch_size)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_floating_point():
            raise ModelError("PseudoLogLikelihood reads token ids and has no relaxed form; use proposal='prior'")
        m = self.model
        x = m._check(x)
        if x.numel() and (x.min() < 0 or x.max() >= m.vocab_size):
            raise ShapeError(f"PseudoLogLikelihood: token ids must be in 0..{m.vocab_size - 1} (no masks)")
        batch, L = x.shape[:-1], m.length
        flat = x.reshape(-1, L)
        eye = torch.eye(L, dtype=torch.bool, device=x.device)
        copies = torch.where(eye, m.mask_id, flat[:, None, :]).reshape(-1, L)  # row b·L + i: position i masked
        position = torch.arange(L, device=x.device).repeat(flat.shape[0])
        token = flat.reshape(-1)
        out = []
        with torch.no_grad():
            for rows in torch.arange(len(copies), device=x.device).split(self.batch_size):
                probs = m.predict(copies[rows], 1)  # (n, L, V); time-agnostic models (k only sets t)
                out.append(probs[torch.arange(len(rows)), position[rows], token[rows]])
        logp = torch.cat(out).reshape(flat.shape[0], L).clamp_min(1e-300).log()
        return logp.sum(-1).reshape(batch)


class SequenceRegressor(SequenceReward):
    """A learned property predictor f(x): embedding (P @ E), two 1-D convolutions, mean pooling, a linear head.

    Build with the alphabet and the length, fit with :meth:`fit` on (sequences, values); called on ids or
    on probability vectors (differentiable), it returns f in the units of the values it was fitted to.
    """

    def __init__(self, alphabet, length: int, width: int = 32, kernel: int = 5, seed: int = 0):
        super().__init__(alphabet)
        torch.manual_seed(seed)
        V = self.vocab_size
        self.length = int(length)
        self.embed = torch.nn.Linear(V, width, bias=False)
        self.net = torch.nn.Sequential(
            torch.nn.Conv1d(width, width, kernel, padding=kernel // 2),
            torch.nn.SiLU(),
            torch.nn.Conv1d(width, width, kernel, padding=kernel // 2),
            torch.nn.SiLU(),
        )
        self.head = torch.nn.Linear(width, 1)
        self.network = torch.nn.ModuleList([self.embed, self.net, self.head]).double().eval().requires_grad_(False)
        self.scale = (0.0, 1.0)  # the values' mean and sd (fit standardises them)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        P = self.relaxed(x)
        if P.shape[-2] != self.length:
            raise ShapeError(f"SequenceRegressor: fitted to length {self.length}, got {P.shape[-2]}")
        batch = P.shape[:-2]
        self.network.to(P.device)
        h = self.embed(P.reshape((-1,) + P.shape[-2:])).transpose(1, 2)  # (B, width, L)
        out = self.head(self.net(h).mean(-1)).squeeze(-1)
        return (self.scale[0] + self.scale[1] * out).reshape(batch)

    def fit(self, x: torch.Tensor, y: torch.Tensor, *, epochs: int = 200, lr: float = 3e-3, seed: int = 0):
        """Least squares on standardised values by Adam, full batch; returns self (frozen again after)."""
        P = self.relaxed(x)
        y = torch.as_tensor(y, dtype=F64, device=P.device).reshape(-1)
        if len(y) != P.reshape((-1,) + P.shape[-2:]).shape[0] or not torch.isfinite(y).all():
            raise ModelError("fit needs one finite value per sequence")
        mean, sd = float(y.mean()), float(y.std()) if len(y) > 1 else 1.0
        sd = sd if sd > 0 else 1.0
        self.scale = (0.0, 1.0)
        torch.manual_seed(seed)
        self.network.train().requires_grad_(True)
        opt = torch.optim.Adam(self.network.parameters(), lr)
        target = (y - mean) / sd
        for _ in range(int(epochs)):
            loss = (self(P) - target).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        self.network.eval().requires_grad_(False)
        self.scale = (mean, sd)
        self.loss = float(loss.detach()) * sd**2
        return self


__all__ = [
    "Composition",
    "Motif",
    "PWMScore",
    "PseudoLogLikelihood",
    "SequenceRegressor",
    "hydrophobic_fraction",
    "net_charge",
]
