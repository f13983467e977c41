"""Sequence rewards: values on known strings, relaxed (probability-vector) forms that agree with ids on one-hot
input and give gradients, another masked LM's pseudo-log-likelihood against a direct loop over positions,
a learned regressor that fits a property, batch shapes, and clear errors for wrong token ranges."""

import pyro
import pytest
import torch
from tiny_models import AMINO_ACIDS, tiny_esm

import tilted
from tilted.distributions import from_masked_lm
from tilted.errors import ModelError, ShapeError
from tilted.inference import SMC
from tilted.rewards import (
    Composition,
    Motif,
    PseudoLogLikelihood,
    PWMScore,
    SequenceRegressor,
    hydrophobic_fraction,
    net_charge,
)

F64 = torch.float64


def ids(*strings):
    return torch.tensor([[AMINO_ACIDS.index(c) for c in s] for s in strings])


def test_composition_rewards_on_known_strings_and_their_relaxed_form():
    hyd, charge = hydrophobic_fraction(AMINO_ACIDS), net_charge(AMINO_ACIDS)
    x = ids("AILMKK", "DEDEKR", "GGGGGG")
    torch.testing.assert_close(hyd(x), torch.tensor([4 / 6, 0, 0], dtype=F64))
    torch.testing.assert_close(charge(x), torch.tensor([2.0, -2.0, 0.0], dtype=F64))
    assert net_charge(AMINO_ACIDS, histidine=0.1)(ids("HHKDAA")).item() == pytest.approx(0.2)
    onehot = torch.nn.functional.one_hot(x, 20).double()
    torch.testing.assert_close(hyd(onehot), hyd(x))
    # relaxed: the multilinear extension, ∂r/∂P_ij = w_j / L
    P = torch.softmax(torch.randn(2, 6, 20, dtype=F64), -1).requires_grad_(True)
    (g,) = torch.autograd.grad(hyd(P).sum(), P)
    w = torch.tensor([1.0 if a in "AILMFVC" else 0.0 for a in AMINO_ACIDS], dtype=F64)
    torch.testing.assert_close(g, (w / 6).expand(2, 6, 20))
    assert hyd(x.reshape(3, 1, 6).expand(3, 2, 6)).shape == (3, 2)  # any batch shape
    with pytest.raises(ModelError, match="not in the alphabet"):
        Composition("ACD", {"Z": 1.0})


def test_pwm_score_is_the_smooth_maximum_of_window_scores():
    g = torch.Generator().manual_seed(0)
    M = torch.randn(3, 20, generator=g, dtype=F64)
    pwm = PWMScore(AMINO_ACIDS, M)
    x = ids("ACDEFG", "WWWWWW")
    want = torch.stack(
        [torch.logsumexp(torch.stack([sum(M[w, row[s + w]] for w in range(3)) for s in range(4)]), 0) for row in x]
    )
    torch.testing.assert_close(pwm(x), want)
    torch.testing.assert_close(pwm(torch.nn.functional.one_hot(x, 20).double()), want)
    P = torch.softmax(torch.randn(6, 20, dtype=F64), -1).requires_grad_(True)
    (grad,) = torch.autograd.grad(pwm(P), P)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    with pytest.raises(ShapeError, match="longer than the sequences"):
        pwm(ids("AC"))
    with pytest.raises(ModelError, match="log-odds"):
        PWMScore(AMINO_ACIDS, torch.zeros(3, 19))


def test_motif_counts_regex_matches_and_refuses_relaxed_input():
    glyco = Motif(AMINO_ACIDS, "N[^P][ST]")  # the N-glycosylation sequon
    torch.testing.assert_close(glyco(ids("NASNPT", "NGTNAS", "AAAAAA")), torch.tensor([1.0, 2.0, 0.0], dtype=F64))
    assert not glyco.differentiable
    with pytest.raises(ModelError, match="use proposal='prior'"):
        glyco(torch.rand(2, 6, 20, dtype=F64))
    with pytest.raises(ModelError, match="invalid motif"):
        Motif(AMINO_ACIDS, "N[")


def test_wrong_token_ranges_are_clear_errors():
    hyd = hydrophobic_fraction(AMINO_ACIDS)
    with pytest.raises(ShapeError, match="masks are not sequences"):
        hyd(torch.tensor([[0, 20, 3]]))  # the mask id V = 20
    with pytest.raises(ShapeError, match="must be in 0..19"):
        hyd(torch.tensor([[-1, 2]]))
    with pytest.raises(ShapeError, match=r"\(\.\.\., L, 20\)"):
        hyd(torch.rand(2, 3, 21))


def test_pseudo_log_likelihood_matches_a_direct_loop_over_positions(tmp_path):
    model, tok = tiny_esm(tmp_path, seed=3)
    other = from_masked_lm(model, tokens=AMINO_ACIDS, length=5, tokenizer=tok)
    pll = PseudoLogLikelihood(other, batch_size=7)  # chunks that cut sequences apart
    x = ids("ACDEF", "KKLLW", "MMMMM")
    columns = torch.tensor(tok.convert_tokens_to_ids(list(AMINO_ACIDS)))
    want = torch.zeros(3, dtype=F64)
    for b, s in enumerate(["ACDEF", "KKLLW", "MMMMM"]):
        for i in range(5):
            masked = tok(s)["input_ids"]
            masked[1 + i] = tok.mask_token_id
            inp = torch.tensor([masked])
            with torch.no_grad():
                logits = model(input_ids=inp, attention_mask=torch.ones_like(inp)).logits[0, 1 + i, columns]
            want[b] += torch.log_softmax(logits.double(), -1)[AMINO_ACIDS.index(s[i])]
    torch.testing.assert_close(pll(x), want, atol=1e-5, rtol=0)
    assert pll(x.reshape(3, 1, 5)).shape == (3, 1)
    with pytest.raises(ModelError, match="no relaxed form"):
        pll(torch.rand(1, 5, 20))
    with pytest.raises(ModelError, match="needs a MaskedDiffusion"):
        PseudoLogLikelihood(model)


def test_a_learned_regressor_fits_a_property_and_steers_smc_through_the_taylor_proposal(tmp_path):
    g = torch.Generator().manual_seed(0)
    train, test = (torch.randint(0, 20, (n, 8), generator=g) for n in (512, 256))
    hyd = hydrophobic_fraction(AMINO_ACIDS)
    reg = SequenceRegressor(AMINO_ACIDS, length=8).fit(train, hyd(train), epochs=300)
    r2 = 1 - (reg(test) - hyd(test)).pow(2).mean() / hyd(test).var()
    assert r2 > 0.9, r2  # an additive property: a 2-layer CNN with mean pooling represents it
    P = torch.softmax(torch.randn(3, 8, 20, dtype=F64), -1).requires_grad_(True)
    (grad,) = torch.autograd.grad(reg(P).sum(), P)
    assert torch.isfinite(grad).all() and not any(p.requires_grad for p in reg.network.parameters())
    model, tok = tiny_esm(tmp_path)
    prior = from_masked_lm(model, tokens=AMINO_ACIDS, length=8, tokenizer=tok, num_steps=8)

    def steered():
        tilted.factor("hyd", reg, pyro.sample("x", prior), temperature=0.05)

    res = SMC(steered, 32, proposal="gradient").run(seed=0)
    base = prior.sample((256,), generator=1)
    tilted_mean = float((res.weights * hyd(res.particles["x"])).sum())
    assert tilted_mean > float(hyd(base).mean()) + 0.1  # α = 0.05 moves the hydrophobic fraction up
    with pytest.raises(ShapeError, match="fitted to length 8"):
        reg(ids("ACD"))
