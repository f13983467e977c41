"""transformers masked LMs as MaskedDiffusion: id mapping, the model's logits restricted to the tokens,
special tokens, strings, devices and errors, on tiny ESM and BERT models built from configs (no download)."""

import pyro
import pytest
import torch
from tiny_models import AMINO_ACIDS, tiny_bert, tiny_esm

import tilted
from tilted.distributions import MaskedDiffusion, from_masked_lm
from tilted.distributions.masked_lm import MaskedLM
from tilted.errors import ModelError, ShapeError
from tilted.inference import SMC, Importance


@pytest.fixture(scope="module")
def esm(tmp_path_factory):
    return tiny_esm(tmp_path_factory.mktemp("esm"))


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    return tiny_bert(tmp_path_factory.mktemp("bert"))


def test_the_denoiser_is_the_models_softmax_over_the_tokens_at_the_sequence_positions(esm):
    model, tok = esm
    prior = from_masked_lm(model, tokens=AMINO_ACIDS, length=6, tokenizer=tok, num_steps=4)
    assert isinstance(prior, MaskedLM) and isinstance(prior, MaskedDiffusion)
    assert prior.vocab_size == 20 and prior.mask_id == 20 and prior.alphabet == list(AMINO_ACIDS)
    x = torch.tensor([[20, 0, 20, 5, 20, 20], [1, 2, 3, 4, 20, 19]])
    # the model reads <cls> + ids + <eos> with the tokenizer's mask id where the library has V
    ids = tok([prior.decode(r, mask="") for r in x], add_special_tokens=True)["input_ids"]  # no masks in letters
    got = prior.denoiser.model_ids(x)
    assert got[1].tolist() == ids[1][:5] + [tok.mask_token_id] + ids[1][5:]
    assert got[0, 0] == tok.cls_token_id and got[0, -1] == tok.eos_token_id and (got[0, [1, 3, 5, 6]] == 32).all()
    with torch.no_grad():
        logits = model(input_ids=got, attention_mask=torch.ones_like(got)).logits[:, 1:-1]
    columns = torch.tensor(tok.convert_tokens_to_ids(list(AMINO_ACIDS)))
    want = torch.softmax(logits[..., columns].double(), -1)
    probs = prior.predict(x, 3)
    masked = x == 20
    assert torch.allclose(probs[masked], want[masked], atol=1e-6)
    assert torch.equal(probs[~masked].argmax(-1), x[~masked])  # carry-over at visible positions
    assert prior.encode("ACDEFG").tolist() == [0, 1, 2, 3, 4, 5]
    assert prior.decode(torch.tensor([0, 20, 19, 1, 1, 2])) == "A_YCCD"


def test_samples_decode_to_strings_and_engines_run_on_esm_and_bert(esm, bert):
    for (model, tok), tokens in ((esm, AMINO_ACIDS), (bert, "acgt")):
        prior = from_masked_lm(model, tokens=tokens, length=5, tokenizer=tok, num_steps=5)
        x = prior.sample((4,), generator=0)
        assert x.shape == (4, 5) and (x >= 0).all() and (x < len(tokens)).all()
        strings = prior.decode(x)
        assert len(strings) == 4 and all(len(s) == 5 and set(s) <= set(tokens) for s in strings)
        assert torch.equal(prior.encode(strings), x)

        def model_fn(prior=prior):
            seq = pyro.sample("x", prior)
            tilted.factor("r", lambda ids: (ids == 0).double().sum(-1), seq, temperature=0.5)

        res = SMC(model_fn, 8).run(seed=0)
        assert res.particles["x"].shape == (8, 5) and torch.isfinite(res.log_evidence)
        assert Importance(model_fn, 4).run(seed=0).particles["x"].shape == (4, 5)


def test_bert_reads_cls_and_sep_and_ids_may_be_given_without_a_tokenizer(bert):
    model, tok = bert
    ids = tok.convert_tokens_to_ids(list("acgt"))
    prior = from_masked_lm(
        model, tokens=ids, length=4, mask_token_id=tok.mask_token_id, bos_token_id=tok.cls_token_id,
        eos_token_id=tok.sep_token_id,
    )  # fmt: skip
    with_tok = from_masked_lm(model, tokens="acgt", length=4, tokenizer=tok)
    x = torch.tensor([[4, 0, 4, 3]])
    assert torch.equal(prior.denoiser.model_ids(x), with_tok.denoiser.model_ids(x))
    assert torch.equal(prior.predict(x, 2), with_tok.predict(x, 2))
    bare = from_masked_lm(model, tokens="acgt", length=4, tokenizer=tok, bos_token_id=-1, eos_token_id=-1)
    assert bare.denoiser.model_ids(x).shape == (1, 4)
    with pytest.raises(ModelError, match="no alphabet"):
        prior.decode(x)


def test_time_conditioned_models_get_t_under_their_keyword():
    seen = []

    class TimeLM(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))
            self.config = type("C", (), {"vocab_size": 8})()

        def forward(self, input_ids, attention_mask, timesteps):
            seen.append(timesteps.clone())
            return torch.zeros(input_ids.shape + (8,))

    prior = from_masked_lm(TimeLM(), tokens=[1, 2, 3], length=3, mask_token_id=7, num_steps=4, time_keyword="timesteps")
    prior.predict(torch.full((2, 3), 3), 4)
    assert torch.allclose(seen[-1], torch.ones(2))
    assert prior.predict(torch.full((1, 3), 3), 4).shape == (1, 3, 3)


def test_bad_arguments_get_clear_errors(esm):
    model, tok = esm
    with pytest.raises(ModelError, match="tokenizer= to look"):
        from_masked_lm(model, tokens="ACD", length=3, mask_token_id=32)
    with pytest.raises(ModelError, match="no token for"):
        from_masked_lm(model, tokens=["A", "J"], length=3, tokenizer=tok)
    with pytest.raises(ModelError, match="distinct"):
        from_masked_lm(model, tokens=[5, 5], length=3, mask_token_id=32)
    with pytest.raises(ModelError, match="mask id 32 is among tokens"):
        from_masked_lm(model, tokens=[5, 32], length=3, mask_token_id=32)
    with pytest.raises(ModelError, match="outside the model's vocabulary"):
        from_masked_lm(model, tokens=[5, 99], length=3, mask_token_id=32)
    with pytest.raises(ModelError, match="mask_token_id is required"):
        from_masked_lm(model, tokens=[5, 6], length=3)
    prior = from_masked_lm(model, tokens=AMINO_ACIDS, length=4, tokenizer=tok)
    with pytest.raises(ShapeError, match="expected 4 letters"):
        prior.encode("ACDJ")
    assert all(not p.requires_grad for p in model.parameters())


def test_the_esm2_block_of_the_sequences_guide_runs_on_a_saved_tiny_esm(esm, tmp_path):
    """docs/sequences.md's ESM-2 block as written, the folder pointing at a tiny ESM saved with
    save_pretrained (the files ESM-2's folder has), on CPU with 4 steps."""
    from test_doc_blocks import run_block

    model, tok = esm
    model.save_pretrained(tmp_path / "esm")
    tok.save_pretrained(tmp_path / "esm")
    namespace = run_block(
        "docs/sequences.md",
        "esm2_t6_8M",
        (
            ("models/esm2_t6_8M_UR50D", str(tmp_path / "esm")),
            ('.to("cuda")', '.to("cpu")'),
            ("num_steps=48", "num_steps=4"),
        ),
    )
    x = namespace["x"]
    assert x.shape == (8, 48) and all(len(s) == 48 for s in namespace["prior"].decode(x))


def run_protein_example(argv):
    import runpy
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "protein_steering.py"
    return runpy.run_path(str(path), run_name="protein_example")["main"](argv)


def test_the_protein_example_steers_the_shipped_esm_and_loads_a_local_folder(esm, tmp_path, capsys):
    summary = run_protein_example(["--particles", "8", "--train", "128", "--steps", "8", "--device", "cpu"])
    printed = capsys.readouterr().out
    assert set(summary) == {"pretrained", "SMC (Taylor proposal)", "SMC (prior proposal)", "SVDD", "beam search"}
    assert summary["SMC (Taylor proposal)"]["property"] > summary["pretrained"]["property"]
    assert all(0 <= s["diversity"] <= 1 and s["pll"] < 0 for s in summary.values())
    assert "ESM PLL" in printed and "SMC (Taylor proposal): " in printed
    model, tok = esm  # --model: an ESM folder as a user has ESM-2 on disk (here the tiny one)
    model.save_pretrained(tmp_path / "esm")
    tok.save_pretrained(tmp_path / "esm")
    argv = ["--model", str(tmp_path / "esm"), "--length", "6", "--steps", "3", "--particles", "4", "--train", "32"]
    summary = run_protein_example([*argv, "--device", "cpu"])
    assert summary["pretrained"]["pll"] < 0
    from tilted.errors import MissingWeightsError

    with pytest.raises(MissingWeightsError, match="hf download facebook/esm2_t6_8M_UR50D"):
        run_protein_example(["--model", str(tmp_path / "nowhere"), "--device", "cpu"])
