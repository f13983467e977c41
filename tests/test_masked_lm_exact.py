"""SMC and IS on a tiny ESM masked LM with a reward agree with an independent reference.

The reference is importance sampling over M = 2^16 chains of a sampling loop written here from the
documented masked-diffusion step (tilted/distributions/masked.py), calling the transformers model
directly: at step k each masked position is filled with probability u_k = (α_{k-1} − α_k)/(1 − α_k)
by a draw from the softmax of the model's logits over the chosen tokens, and stays masked otherwise.
Weights exp(r(x_0)/α) give Z = mean exp(r/α) and the tilted law of a summary statistic s(x_0) (the
number of hydrophobic tokens, 0..L, not the reward).

Tolerances. Reference: the self-normalised histogram h_b = Σ w_i 1[s_i = b] / Σ w_i has delta-method
variance Σ w_i² (1[s_i = b] − h_b)² / (Σ w_i)². Engines: R independent runs; Σ_r Ẑ_r h_r / Σ_r Ẑ_r is
consistent for the target as R → ∞ at fixed N (Ẑ_r Σ w f is unbiased for Z·E f), with the same delta-method
variance over runs, and mean_r Ẑ_r is unbiased for Z with variance var(Ẑ_r)/R. Every comparison is
|difference| ≤ 4.5 √(se_ref² + se_engine²): L + 2 = 6 comparisons per engine and 3 engines, each false with
probability 6.8e-6 under the normal approximation, so the family-wise false-alarm rate is below 2e-4.
The test can fail: the untilted chain's histogram is far outside these bounds (checked).
"""

import math

import pyro
import pytest
import torch
from tiny_models import tiny_esm

import tilted
from tilted.distributions import from_masked_lm
from tilted.inference import SMC, Importance
from tilted.rewards import hydrophobic_fraction, net_charge

TOKENS, L, K, ALPHA, M = "AKLE", 4, 4, 0.5, 2**16
F64 = torch.float64
pytestmark = pytest.mark.slow


def independent_chains(model, tok, n, gen):
    """n chains of the documented step, from the transformers model itself (−1 marks a masked position)."""
    cols = torch.tensor(tok.convert_tokens_to_ids(list(TOKENS)))
    alphas = [1 - k / K for k in range(K + 1)]  # the linear schedule α(t) = 1 − t at t = k/K
    x = torch.full((n, L), -1)
    for k in range(K, 0, -1):
        ids = torch.where(x < 0, tok.mask_token_id, cols[x.clamp(min=0)])
        ends = torch.full((n, 1), tok.cls_token_id), torch.full((n, 1), tok.eos_token_id)
        inp = torch.cat([ends[0], ids, ends[1]], 1)
        with torch.no_grad():
            probs = torch.softmax(model(input_ids=inp).logits[:, 1:-1][..., cols].double(), -1)
        u = (alphas[k - 1] - alphas[k]) / (1 - alphas[k])
        fill = (torch.rand(n, L, generator=gen, dtype=F64) < u) & (x < 0)
        draw = torch.multinomial(probs.reshape(-1, len(TOKENS)), 1, generator=gen).reshape(n, L)
        x = torch.where(fill, draw, x)
    assert (x >= 0).all()  # u_1 = 1: x_0 has no mask
    return x


def histogram(s, w):
    """Self-normalised weighted histogram of s ∈ 0..L and its delta-method standard errors."""
    w = w / w.sum()
    onehot = torch.nn.functional.one_hot(s, L + 1).to(F64)
    h = (w[:, None] * onehot).sum(0)
    return h, ((w[:, None] ** 2) * (onehot - h) ** 2).sum(0).sqrt()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    model, tok = tiny_esm(tmp_path_factory.mktemp("esm"), seed=1, initializer_range=0.15)
    prior = from_masked_lm(model, tokens=TOKENS, length=L, tokenizer=tok, num_steps=K)
    charge, hyd = net_charge(TOKENS), hydrophobic_fraction(TOKENS)  # hydrophobic: A and L
    x = independent_chains(model, tok, M, torch.Generator().manual_seed(0))
    w = (charge(x) / ALPHA).exp()
    stat = (hyd(x) * L).round().long()
    ref = {"hist": histogram(stat, w), "prior": histogram(stat, torch.ones(M, dtype=F64))[0]}
    ref["Z"], ref["Z_se"] = float(w.mean()), float(w.std() / math.sqrt(M))

    def model_fn():
        tilted.factor("charge", charge, pyro.sample("x", prior), temperature=ALPHA)

    return model_fn, hyd, ref


@pytest.mark.parametrize(
    "engine",
    [
        lambda m: SMC(m, 16, num_runs=400),
        lambda m: SMC(m, 16, num_runs=400, proposal="gradient"),
        lambda m: Importance(m, 16, num_runs=400),
    ],
    ids=["smc", "smc-taylor", "importance"],
)
def test_engines_match_importance_sampling_over_independent_chains(setup, engine):
    model_fn, hyd, ref = setup
    res = engine(model_fn).run(seed=0)
    z = res.log_evidence.exp()  # (R,)
    stat = (hyd(res.particles["x"]) * L).round().long()  # (R, N)
    per_run = torch.stack([histogram(s, w)[0] for s, w in zip(stat, res.weights, strict=True)])  # (R, L+1)
    est = (z[:, None] * per_run).sum(0) / z.sum()
    se = ((z[:, None] ** 2) * (per_run - est) ** 2).sum(0).sqrt() / z.sum()
    h_ref, se_ref = ref["hist"]
    bound = 4.5 * (se**2 + se_ref**2).sqrt()
    assert ((est - h_ref).abs() <= bound).all(), (est, h_ref, bound)
    z_se = float(z.std() / math.sqrt(len(z)))
    assert abs(float(z.mean()) - ref["Z"]) <= 4.5 * math.hypot(z_se, ref["Z_se"]), (float(z.mean()), ref["Z"])
    # the test can fail: the untilted chain's histogram is far from the tilted one
    assert ((ref["prior"] - h_ref).abs() > 5 * bound).any()
    tv = 0.5 * float((est - h_ref).abs().sum())
    assert tv <= 0.5 * float(bound.sum())
