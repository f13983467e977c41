"""A tiny ESM-architecture protein masked LM trained here on synthetic helical peptides, shipped as safetensors.

The data law (:func:`peptide_data`) is a hidden-phase heptad model of amphipathic helices, length 16 over the
20 amino acids: a sequence picks a phase φ uniformly in 0..6, and position i is *core* when
(i + φ) mod 7 ∈ {0, 3, 4} (the a, d, e positions of a heptad repeat), else *surface*. Core positions draw
from hydrophobic residues, surface positions from polar and charged ones, and with probability 0.15 a
position draws from all 20 instead. The law is known exactly, so samples of the model can be checked
against it (docs/pretrained.md).

:func:`peptide_lm` loads the shipped ``EsmForMaskedLM`` (3 layers of width 64, ESM-2's 33-token
vocabulary and tokenizer) through the same ``from_pretrained`` calls that load
``facebook/esm2_t6_8M_UR50D`` from a local folder, and returns it as a
:class:`~tilted.distributions.MaskedLM` over the 20 amino acids.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

#: the folder holding the shipped weights (config.json, model.safetensors, vocab.txt)
WEIGHTS = Path(__file__).parent / "weights" / "peptides"
AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"
#: ESM-2's vocabulary in its order (facebook/esm2_t6_8M_UR50D vocab.txt)
ESM_VOCAB = ["<cls>", "<pad>", "<eos>", "<unk>", *"LAGVSERTIDPKQNFYMHWCXBUZO", ".", "-", "<null_1>", "<mask>"]
LENGTH = 16
CORE, SURFACE, NOISE = "AILMFVW", "DEKRSTNQGH", 0.15


def emission_probs() -> torch.Tensor:
    """p(token | core) and p(token | surface) over the 20 amino acids, (2, 20), float64."""
    probs = torch.full((2, 20), NOISE / 20, dtype=torch.float64)
    for row, residues in enumerate((CORE, SURFACE)):
        for a in residues:
            probs[row, AMINO_ACIDS.index(a)] += (1 - NOISE) / len(residues)
    return probs


def core_positions(phase: torch.Tensor, length: int = LENGTH) -> torch.Tensor:
    """Whether position i is a core position, (…, L) bool, for phases φ (…,)."""
    return ((torch.arange(length) + phase[..., None]) % 7)[..., None].eq(torch.tensor([0, 3, 4])).any(-1)


def peptide_data(n: int, generator: torch.Generator | None = None, length: int = LENGTH) -> torch.Tensor:
    """n draws of the data law (module docstring): amino-acid ids (n, L), ``long``."""
    phase = torch.randint(0, 7, (n,), generator=generator)
    probs = emission_probs()[(~core_positions(phase, length)).long()]  # (n, L, 20)
    return torch.multinomial(probs.reshape(-1, 20), 1, generator=generator).reshape(n, length)


def log_prob(x: torch.Tensor) -> torch.Tensor:
    """log p(x) under the data law, summed over the 7 phases, (…,) float64."""
    phases = torch.arange(7)
    core = core_positions(phases, x.shape[-1])  # (7, L)
    logp = emission_probs().log()  # (2, 20)
    per = logp[(~core).long()[None], x[..., None, :]]  # (…, 7, L)
    return torch.logsumexp(per.sum(-1), -1) - torch.log(torch.tensor(7.0, dtype=torch.float64))


def peptide_lm(num_steps: int = LENGTH, *, path: str | os.PathLike | None = None, **kwargs):
    """The shipped peptide ESM as a :class:`~tilted.distributions.MaskedLM` over 16 positions and 20 amino acids.

    ``path``: a folder with the same files (for example one written by ``python -m
    tilted.pretrained.train_peptides --out DIR``); ``kwargs`` go to :func:`~tilted.distributions.from_masked_lm`.
    """
    from transformers import EsmForMaskedLM, EsmTokenizer

    from tilted.distributions import from_masked_lm

    folder = WEIGHTS if path is None else Path(path).expanduser()
    model = EsmForMaskedLM.from_pretrained(folder, use_safetensors=True)
    tokenizer = EsmTokenizer.from_pretrained(folder)
    return from_masked_lm(
        model, tokens=AMINO_ACIDS, length=LENGTH, tokenizer=tokenizer, num_steps=num_steps, **kwargs
    )  # fmt: skip
