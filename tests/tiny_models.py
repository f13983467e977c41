"""Tiny stand-ins for pretrained networks, built from configs with seeded random weights (no download).

Shared by the reward and pipeline tests:

- :func:`tiny_tokenizer` writes a character-level CLIP BPE vocabulary (``vocab.json`` + ``merges.txt``)
  into a folder and loads it with ``CLIPTokenizer.from_pretrained`` (in transformers 5,
  ``CLIPTokenizer(vocab_file=..., merges_file=...)`` silently gives a 2-token tokenizer);
- :func:`tiny_clip_text_model` is a ``CLIPTextModel`` for that tokenizer (a Stable Diffusion text encoder);
- :func:`tiny_clip` saves a whole tiny ``CLIPModel`` with its ``CLIPProcessor`` (that tokenizer and a
  ``CLIPImageProcessor`` of a small size) into a folder, ready for ``from_pretrained(folder)``;
- :func:`tiny_unet` is a small ``UNet2DModel`` denoiser;
- :func:`tiny_esm` is an ``EsmForMaskedLM`` with ESM-2's 33-token vocabulary and its ``EsmTokenizer``;
  :func:`tiny_bert` a ``BertForMaskedLM`` with a ``BertTokenizer`` over letters (both seeded, random).
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import torch

TEXT_HIDDEN = 32
CONTEXT = 16  # tokens per prompt (max_position_embeddings)


def tiny_tokenizer(folder):
    """A CLIP tokenizer over lowercase letters, digits and spaces (one token per character; a word's last
    character carries ``</w>``), saved in ``folder`` and loaded from there. Ids: 0 = start, 1 = end/pad."""
    from transformers import CLIPTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in string.ascii_lowercase + string.digits:
        vocab.setdefault(char, len(vocab))
        vocab.setdefault(char + "</w>", len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer.from_pretrained(folder)


def tiny_clip_text_config(vocab_size: int, **overrides):
    """A ``CLIPTextConfig`` of width 32, 2 layers, a context of 16 tokens; end token id 1 (pooling)."""
    from transformers import CLIPTextConfig

    config = dict(
        vocab_size=vocab_size,
        hidden_size=TEXT_HIDDEN,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=CONTEXT,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    return CLIPTextConfig(**(config | overrides))


def tiny_clip_text_model(tokenizer, seed: int = 0, **overrides):
    """A ``CLIPTextModel`` (hidden size 32) for ``tokenizer``, seeded, in eval mode."""
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    return CLIPTextModel(tiny_clip_text_config(len(tokenizer), **overrides)).eval()


def tiny_clip_config(vocab_size: int, *, image_size: int = 16, projection_dim: int = 24):
    """A ``CLIPConfig``: the tiny text tower, a 2-layer ViT on ``image_size`` images with 4×4 patches."""
    from transformers import CLIPConfig

    vision = dict(
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=image_size,
        patch_size=4,
    )
    return CLIPConfig(
        text_config=tiny_clip_text_config(vocab_size).to_dict(), vision_config=vision, projection_dim=projection_dim
    )


def tiny_clip(
    folder, *, seed: int = 0, image_size: int = 16, projection_dim: int = 24, logit_scale: float | None = None
):
    """Save a tiny ``CLIPModel`` and its ``CLIPProcessor`` (shortest edge and crop ``image_size``) in
    ``folder``; return the folder's path as a string (for ``from_pretrained``)."""
    from transformers import CLIPImageProcessor, CLIPModel, CLIPProcessor

    folder = Path(folder)
    tokenizer = tiny_tokenizer(folder / "tokenizer")
    torch.manual_seed(seed)
    model = CLIPModel(tiny_clip_config(len(tokenizer), image_size=image_size, projection_dim=projection_dim))
    if logit_scale is not None:
        with torch.no_grad():
            model.logit_scale.fill_(logit_scale)
    images = CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    model.save_pretrained(folder)
    CLIPProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(folder)
    return str(folder)


def tiny_unet(channels: int = 3, size: int = 8, seed: int = 0):
    """A seeded ``UNet2DModel`` (16/32 channels, one layer per block) on ``channels``×``size``×``size``."""
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    return UNet2DModel(
        sample_size=size,
        in_channels=channels,
        out_channels=channels,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
    ).eval()


from tilted.pretrained.peptides import AMINO_ACIDS as AMINO_ACIDS  # noqa: E402  (re-exported for the tests)
from tilted.pretrained.peptides import ESM_VOCAB  # noqa: E402  (ESM-2's vocabulary, in its order)


def tiny_esm(folder, seed: int = 0, hidden: int = 32, initializer_range: float = 0.02):
    """(EsmForMaskedLM with 2 layers of width ``hidden``, its EsmTokenizer), ESM-2's vocabulary, seeded, eval.

    A larger ``initializer_range`` gives peaked, context-dependent conditionals (0.02: nearly uniform)."""
    from transformers import EsmConfig, EsmForMaskedLM, EsmTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(ESM_VOCAB))
    tokenizer = EsmTokenizer(str(folder / "vocab.txt"))
    torch.manual_seed(seed)
    config = EsmConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=2 * hidden, max_position_embeddings=64, pad_token_id=1, mask_token_id=32,
        position_embedding_type="rotary", token_dropout=True, initializer_range=initializer_range,
    )  # fmt: skip
    return EsmForMaskedLM(config).eval(), tokenizer


def tiny_bert(folder, seed: int = 0):
    """(BertForMaskedLM, 2 layers of width 32, its BertTokenizer over [PAD] [UNK] [CLS] [SEP] [MASK] a–z)."""
    from transformers import BertConfig, BertForMaskedLM, BertTokenizer

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text(
        "\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *string.ascii_lowercase])
    )
    tokenizer = BertTokenizer(str(folder / "vocab.txt"))
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
        max_position_embeddings=64,
    )  # fmt: skip
    return BertForMaskedLM(config).eval(), tokenizer
