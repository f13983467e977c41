"""transformers masked language models (ESM, BERT, MDLM/LLaDA-style) as masked diffusion processes.

:func:`from_masked_lm` turns any ``*ForMaskedLM`` into a :class:`MaskedLM`, a
:class:`~tilted.distributions.MaskedDiffusion` over a sub-vocabulary. The library's token i is the
model's id ``tokens[i]`` (i = 0, …, V−1; the library's mask id V is the model's ``mask_token_id``).
The model reads

    [bos] + (tokens ∪ {mask})[x] + [eos]        (bos and eos each when given),

and the denoiser's probabilities are the softmax of the model's logits at the L sequence positions
restricted to the V columns ``tokens``:

    x̂_0(x_k)_{ij} = exp ℓ_{i, tokens[j]} / Σ_{j'} exp ℓ_{i, tokens[j']},

so the model's other ids (special tokens, rare letters) have probability 0. Masked LMs trained as MDLM
or by masked-token objectives (ESM, BERT) are time-agnostic and ignore t; ``time_keyword`` passes
t_k = k/K to models that take it. Calls run batched on the model's device under ``torch.no_grad``
(the model is frozen: engines never differentiate the denoiser of a masked process).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from tilted.distributions.masked import MaskedDiffusion
from tilted.errors import ModelError, ShapeError


class MaskedLMDenoiser(torch.nn.Module):
    """The denoiser of :class:`MaskedLM`: library ids (B, L) with mask V → logits (B, L, V) over ``tokens``."""

    def __init__(self, model, tokens: torch.Tensor, mask_token_id: int, bos: int | None, eos: int | None, time_keyword):
        super().__init__()
        self.model = model
        self.register_buffer("tokens", tokens, persistent=False)
        self.register_buffer("ids", torch.cat([tokens, tokens.new_tensor([mask_token_id])]), persistent=False)
        self.bos, self.eos, self.time_keyword = bos, eos, time_keyword

    def model_ids(self, x: torch.Tensor) -> torch.Tensor:
        """The model's input ids: [bos] + ids[x] + [eos] for library ids x (..., L)."""
        ids = self.ids[x]

        def end(e):
            return [] if e is None else [torch.full(x.shape[:-1] + (1,), e, dtype=ids.dtype, device=x.device)]

        return torch.cat([*end(self.bos), ids, *end(self.eos)], -1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, **context) -> torch.Tensor:
        device = self.tokens.device
        ids = self.model_ids(x.to(device))
        if self.time_keyword is not None:
            context = {self.time_keyword: t.to(device), **context}
        with torch.no_grad():
            out = self.model(input_ids=ids, attention_mask=torch.ones_like(ids), **context)
        logits = getattr(out, "logits", out)
        start = 1 if self.bos is not None else 0
        return logits[:, start : start + x.shape[-1]].float().index_select(-1, self.tokens)


class MaskedLM(MaskedDiffusion):
    """A masked LM as a :class:`MaskedDiffusion` (built by :func:`from_masked_lm`), with string helpers.

    ``alphabet`` holds the token strings of library ids 0, …, V−1 (when a tokenizer gave them);
    :meth:`decode` maps samples to strings and :meth:`encode` strings to library ids.
    """

    def __init__(self, denoiser: MaskedLMDenoiser, *, alphabet: Sequence[str] | None = None, **kwargs):
        super().__init__(denoiser, **kwargs)
        self.alphabet = None if alphabet is None else list(alphabet)

    def _strings(self) -> list[str]:
        if self.alphabet is None:
            raise ModelError("this MaskedLM has no alphabet: build it with tokenizer= (or alphabet=) to use strings")
        return self.alphabet

    def decode(self, x: torch.Tensor, mask: str = "_") -> list | str:
        """Library ids (..., L) → strings (nested lists over the batch dimensions); masks print as ``mask``."""
        strings = self._strings() + [mask]
        x = self._check(x)
        if x.ndim == 1:
            return "".join(strings[int(i)] for i in x)
        return [self.decode(row, mask) for row in x]

    def encode(self, sequences: str | Sequence[str]) -> torch.Tensor:
        """Strings of alphabet letters (one token each, length L) → library ids (..., L), ``long``."""
        if isinstance(sequences, str):
            index = {s: i for i, s in enumerate(self._strings())}
            unknown = sorted(set(sequences) - set(index))
            if unknown or len(sequences) != self.length:
                raise ShapeError(
                    f"{sequences!r}: expected {self.length} letters of the alphabet {''.join(self._strings())!r}"
                    + (f"; unknown {unknown}" if unknown else "")
                )
            return torch.tensor([index[c] for c in sequences], dtype=torch.long)
        return torch.stack([self.encode(s) for s in sequences])


def _token_ids(tokens, tokenizer) -> tuple[list[int], list[str] | None]:
    if isinstance(tokens, str):
        tokens = list(tokens)
    tokens = list(tokens)
    if not tokens:
        raise ModelError("tokens must name at least one token")
    if all(isinstance(t, str) for t in tokens):
        if tokenizer is None:
            raise ModelError("tokens given as strings need tokenizer= to look their ids up")
        ids = tokenizer.convert_tokens_to_ids(tokens)
        unknown = [t for t, i in zip(tokens, ids, strict=True) if i is None or i == tokenizer.unk_token_id]
        if unknown:
            raise ModelError(f"the tokenizer has no token for {unknown}")
        return [int(i) for i in ids], tokens
    if not all(isinstance(t, int) and not isinstance(t, bool) for t in tokens):
        raise ModelError("tokens must be model ids (ints) or token strings")
    names = tokenizer.convert_ids_to_tokens(tokens) if tokenizer is not None else None
    return tokens, names


def from_masked_lm(
    model: Any,
    *,
    tokens: str | Sequence[str] | Sequence[int],
    length: int,
    mask_token_id: int | None = None,
    num_steps: int = 100,
    schedule: Any = "linear",
    bos_token_id: int | None = None,
    eos_token_id: int | None = None,
    tokenizer: Any = None,
    context: Mapping[str, Any] | None = None,
    time_keyword: str | None = None,
) -> MaskedLM:
    """A :class:`MaskedLM` over ``length`` positions and the sub-vocabulary ``tokens`` (module docstring).

    Parameters
    ----------
    model
        A transformers ``*ForMaskedLM`` (or any module returning ``.logits`` of shape (B, T, vocab) for
        ``input_ids`` and ``attention_mask``); it is frozen (``eval()``, ``requires_grad_(False)``).
    tokens
        The V model ids the library's tokens 0, …, V−1 stand for, or their token strings with
        ``tokenizer=`` (a string of single letters such as ``"ACDEFGHIKLMNPQRSTVWY"`` is read letter by letter).
    length
        L, the number of sequence positions (special tokens not counted).
    mask_token_id, bos_token_id, eos_token_id
        The model's mask, start and end ids. With ``tokenizer=`` they default to its ``mask_token_id``,
        its ``cls_token_id`` (else ``bos_token_id``) and its ``eos_token_id`` (else ``sep_token_id``);
        without one, bos and eos are not added unless given. Pass ``-1`` to leave one out explicitly.
    num_steps, schedule
        K and the masking schedule (as :class:`~tilted.distributions.MaskedDiffusion`).
    tokenizer
        A transformers tokenizer: looks up string ``tokens`` and gives :meth:`MaskedLM.decode` its letters.
    context
        Extra keyword arguments for every model call.
    time_keyword
        For time-conditioned models: the keyword under which t_k = k/K is passed (default: not passed).
    """
    ids, names = _token_ids(tokens, tokenizer)
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)

    def default(given, *attributes):
        if given is not None:
            return None if given == -1 else int(given)
        for a in attributes if tokenizer is not None else ():
            value = getattr(tokenizer, a, None)
            if value is not None:
                return int(value)
        return None

    mask = default(mask_token_id, "mask_token_id")
    if mask is None:
        raise ModelError("mask_token_id is required (or a tokenizer with a mask token)")
    bos, eos = (
        default(bos_token_id, "cls_token_id", "bos_token_id"),
        default(eos_token_id, "eos_token_id", "sep_token_id"),
    )
    if len(set(ids)) != len(ids):
        raise ModelError("tokens must be distinct model ids")
    if mask in ids:
        raise ModelError(f"the mask id {mask} is among tokens; the library's mask is separate from its tokens")
    for name, value in (("tokens", max(ids)), ("mask_token_id", mask), ("bos", bos), ("eos", eos)):
        if value is not None and (value < 0 or (vocab is not None and value >= vocab)):
            raise ModelError(f"{name} id {value} is outside the model's vocabulary 0..{vocab - 1}")
    model.eval().requires_grad_(False)
    device = next(model.parameters()).device
    denoiser = MaskedLMDenoiser(model, torch.tensor(ids, dtype=torch.long, device=device), mask, bos, eos, time_keyword)
    return MaskedLM(
        denoiser, alphabet=names, length=length, vocab_size=len(ids), num_steps=num_steps, schedule=schedule,
        context=context,
    )  # fmt: skip
