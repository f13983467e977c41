"""Train the peptide ESM on its synthetic law and measure it for the model card (docs/pretrained.md).

    python -m tilted.pretrained.train_peptides                 # writes tilted/pretrained/weights/peptides
    python -m tilted.pretrained.train_peptides --out DIR

Seeded (``--seed``, default 0), single process, about two minutes on 2 CPU cores. The objective is the
masked-diffusion (MDLM) loss: a mask ratio t ~ U(0, 1) per sequence, each position masked with
probability t, cross-entropy of the model's logits over the 20 amino acids at the masked positions,
averaged over masked positions; AdamW (lr 2·10⁻³, cosine decay), batches of 128 fresh draws of the law.

The card (``training.json``) records the held-out loss, the data law's own loss on the same masks (the
floor: the law's exact conditionals; computed by enumeration over phases), and, for 4,000 samples of the
16-step chain, the mean log-likelihood under the data law and the total-variation distance of the
core-residue count histogram from the data's.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from tilted.pretrained import peptides as P


def build(seed: int):
    from transformers import EsmConfig, EsmForMaskedLM, EsmTokenizer

    torch.manual_seed(seed)
    config = EsmConfig(
        vocab_size=len(P.ESM_VOCAB), hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
        intermediate_size=128, max_position_embeddings=P.LENGTH + 2, pad_token_id=1, mask_token_id=32,
        position_embedding_type="rotary", token_dropout=False, emb_layer_norm_before=False,
    )  # fmt: skip
    return EsmForMaskedLM(config), EsmTokenizer


def masked_batch(x: torch.Tensor, gen: torch.Generator, columns: torch.Tensor, tok) -> tuple:
    """(model input ids with <cls>/<eos>, the mask) for a batch of amino-acid ids, t ~ U(0, 1) per row."""
    t = torch.rand(x.shape[0], 1, generator=gen)
    mask = torch.rand(x.shape, generator=gen) < t
    mask[mask.sum(-1) == 0, 0] = True  # at least one masked position per row
    ids = torch.where(mask, tok.mask_token_id, columns[x])
    ends = torch.full((x.shape[0], 1), tok.cls_token_id), torch.full((x.shape[0], 1), tok.eos_token_id)
    return torch.cat([ends[0], ids, ends[1]], 1), mask


def loss_of(model, x, inp, mask, columns):
    logits = model(input_ids=inp).logits[:, 1:-1][..., columns]
    return F.cross_entropy(logits[mask], x[mask])


def law_loss(x: torch.Tensor, mask: torch.Tensor) -> float:
    """The data law's cross-entropy at the masked positions: −log p(x_i | visible x) by enumeration over phases."""
    core = P.core_positions(torch.arange(7), x.shape[-1])  # (7, L)
    logp = P.emission_probs().log()[(~core).long()]  # (7, L, 20)
    seen = logp[None].expand(x.shape[0], -1, -1, -1).gather(-1, x[:, None, :, None].expand(-1, 7, -1, 1))[..., 0]
    visible = torch.where(mask[:, None], 0.0, seen)  # (B, 7, L): log p(x_i | φ) at visible positions
    post = torch.log_softmax(visible.sum(-1), -1)  # p(φ | visible)
    per = torch.logsumexp(post[..., None, None] + logp[None], 1)  # (B, L, 20): p(x_i | visible)
    return float(-per.gather(-1, x[..., None])[..., 0][mask].mean())


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=P.WEIGHTS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=3000)
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    start = time.perf_counter()
    model, tokenizer_class = build(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "vocab.txt").write_text("\n".join(P.ESM_VOCAB))
    tok = tokenizer_class(str(args.out / "vocab.txt"))
    columns = torch.tensor(tok.convert_tokens_to_ids(list(P.AMINO_ACIDS)))
    gen = torch.Generator().manual_seed(args.seed)
    opt = torch.optim.AdamW(model.parameters(), 2e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.steps)
    model.train()
    for step in range(args.steps):
        x = P.peptide_data(128, gen)
        inp, mask = masked_batch(x, gen, columns, tok)
        loss = loss_of(model, x, inp, mask, columns)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 500 == 0:
            print(f"step {step}: loss {float(loss.detach()):.3f}", flush=True)
    model.eval()
    model.save_pretrained(args.out, safe_serialization=True)
    tok.save_pretrained(args.out)
    card = {"seed": args.seed, "steps": args.steps, "train_seconds": time.perf_counter() - start}
    held = torch.Generator().manual_seed(10_000 + args.seed)
    x = P.peptide_data(4096, held)
    inp, mask = masked_batch(x, held, columns, tok)
    with torch.no_grad():
        card["held_out_loss"] = float(loss_of(model, x, inp, mask, columns))
    card["law_loss"] = law_loss(x, mask)
    prior = P.peptide_lm(path=args.out)
    samples = prior.sample((4000,), generator=1)
    data = P.peptide_data(4000, torch.Generator().manual_seed(2))
    card["sample_log_prob"] = float(P.log_prob(samples).mean())
    card["data_log_prob"] = float(P.log_prob(data).mean())
    core = torch.tensor([a in P.CORE for a in P.AMINO_ACIDS])

    def hist(s):
        return torch.bincount(core[s].sum(-1), minlength=P.LENGTH + 1).double() / len(s)

    card["core_count_tv"] = 0.5 * float((hist(samples) - hist(data)).abs().sum())
    again = P.peptide_data(4000, torch.Generator().manual_seed(3))
    card["core_count_tv_floor"] = 0.5 * float((hist(again) - hist(data)).abs().sum())
    card["parameters"] = sum(p.numel() for p in model.parameters())
    card["seconds"] = time.perf_counter() - start
    (args.out / "training.json").write_text(json.dumps(card, indent=1))
    print(json.dumps(card, indent=1))
    assert math.isfinite(card["held_out_loss"])
    return card


if __name__ == "__main__":
    main()
