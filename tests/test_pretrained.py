"""The shipped digits DDPM and classifiers: loading without pickle, quality, and the class-conditional tilt."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pyro
import pytest
import torch

import tilted
from tilted.distributions import GaussianDiffusion
from tilted.errors import MissingWeightsError, ModelError
from tilted.inference import SMC
from tilted.pretrained import digits, digits_classifier, digits_data, digits_logistic
from tilted.pretrained.sklearn_digits import WEIGHTS
from tilted.rewards import ClassifierLogProb, ClassLogProb, Symmetry


@pytest.fixture(scope="module")
def classifier():
    return digits_classifier()


def test_weights_are_small_safetensors_and_load_without_pickle():
    files = sorted(p for p in WEIGHTS.rglob("*") if p.is_file())
    weights = [p for p in files if p.suffix in (".safetensors", ".bin", ".pt", ".pth", ".ckpt")]
    assert weights and all(p.suffix == ".safetensors" for p in weights)
    assert sum(p.stat().st_size for p in files) <= 5 * 2**20
    # the loader never reaches torch.load (which unpickles): make it fail if called
    original = torch.load
    try:
        torch.load = lambda *a, **k: pytest.fail("torch.load called")
        prior = digits(10)
        digits_classifier(), digits_logistic()
    finally:
        torch.load = original
    assert isinstance(prior, GaussianDiffusion)
    assert prior.event_shape == (1, 8, 8) and prior.num_steps == 10


def test_digits_passes_keyword_arguments_to_the_process():
    prior = digits(20, eta=0.5, clip_sample=1.0)
    assert prior.eta == 0.5 and prior.clip_sample == 1.0 and prior.num_steps == 20
    assert digits(20).eta == 1.0 and digits(20).clip_sample is None
    with pytest.raises(ModelError, match="eta"):
        digits(20, eta=-1)


def test_missing_weights_folder_says_how_to_train(tmp_path):
    with pytest.raises(MissingWeightsError, match="train_digits"):
        digits(10, path=tmp_path / "nowhere")


def test_data_split_is_stratified_and_scaled():
    x_train, y_train = digits_data("train")
    x_test, y_test = digits_data("test")
    assert x_train.shape == (1437, 1, 8, 8) and x_test.shape == (360, 1, 8, 8)
    assert float(x_train.min()) == -1.0 and float(x_train.max()) == 1.0
    assert torch.bincount(y_test).min() >= 35  # 20 % of each class (≥ 174 images per class)
    with pytest.raises(ModelError):
        digits_data("validation")


def test_classifiers_generalise_to_held_out_images(classifier):
    x, y = digits_data("test")
    with torch.no_grad():
        cnn = float((classifier(x).argmax(-1) == y).double().mean())
        logistic = float((digits_logistic()(x).argmax(-1) == y).double().mean())
    # the numbers of the model card (docs/pretrained.md); a retrained model must match them
    log = json.loads((WEIGHTS / "training.json").read_text())
    assert cnn == pytest.approx(log["classifier_test_accuracy"]) and cnn >= 0.97
    assert logistic >= 0.93
    # any batch shape
    assert classifier(x[:6].reshape(2, 3, 1, 8, 8)).shape == (2, 3, 10)


def test_class_log_prob_is_log_softmax_of_the_label_and_differentiable(classifier):
    assert ClassLogProb is ClassifierLogProb
    x = digits_data("test")[0][:5].clone().requires_grad_(True)
    r = ClassLogProb(classifier, 7)(x)
    assert torch.allclose(r, classifier(x).log_softmax(-1)[:, 7])
    r.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_symmetry_reward():
    x = torch.randn(4, 1, 8, 8, dtype=torch.float64)
    sym = (x + x.flip(-1)) / 2
    assert torch.all(Symmetry()(sym) == 0)
    expected = -((x - x.flip(-1)) ** 2).mean(dim=(-3, -2, -1))
    assert torch.allclose(Symmetry()(x).double(), expected, rtol=1e-6)
    assert Symmetry()(x.reshape(2, 2, 1, 8, 8)).shape == (2, 2)
    x.requires_grad_(True)
    Symmetry()(x).sum().backward()
    assert torch.allclose(x.grad, -4 * (x - x.flip(-1)) / 64)
    with pytest.raises(ModelError):
        Symmetry(event_dim=0)


@pytest.mark.slow
def test_unguided_samples_are_digits_of_every_class(classifier):
    """Of 500 unguided 50-step draws, the CNN recognises every class at least 4 % of the time, confidently."""
    with torch.no_grad():
        x = digits(50).sample((500,), generator=0)
        probs = classifier(x).softmax(-1)
    counts = torch.bincount(probs.argmax(-1), minlength=10)
    # each class holds ≈ 10 % of the data; 4 % of 500 = 20 is > 4 binomial s.e. (√(500·0.1·0.9) ≈ 6.7) below 50
    assert counts.min() >= 20, counts.tolist()
    assert float(probs.max(-1).values.mean()) >= 0.85


def _distances(x):
    """RMS pixel distances d_ij between the images x."""
    flat = x.reshape(len(x), -1).double()
    return torch.cdist(flat, flat) / math.sqrt(flat.shape[1])


def _mean_pairwise(d, w):
    """Σ_{i≠j} w_i w_j d_ij / Σ_{i≠j} w_i w_j: the mean distance between two independent draws of Σ w_i δ_{x_i}."""
    ww = w[:, None] * w[None, :]
    ww.fill_diagonal_(0)
    return float((ww * d).sum() / ww.sum())


def _bootstrap_se(d, w, generator, repeats=200):
    """Bootstrap standard error of :func:`_mean_pairwise` over the points (resampled with replacement)."""
    n = len(w)
    values = []
    for _ in range(repeats):
        counts = torch.bincount(torch.randint(0, n, (n,), generator=generator), minlength=n).double()
        values.append(_mean_pairwise(d, w * counts))
    return torch.tensor(values).std().item()


@pytest.mark.slow
def test_smc_at_temperature_one_gives_the_class_conditional_law(classifier):
    """SMC on log p(y | x) at α = 1 samples p_θ(x | y): the class and the diversity of that class.

    The reference is independent of SMC: M = 3000 unguided draws x_m of the same chain weighted by
    w_m = p(y | x_m) (self-normalised importance sampling: exactly p_θ(x | y) as M → ∞). Compared
    statistics: the CNN's rate of class y, and the mean pairwise distance (diversity). SMC gives one
    draw from each of R = 96 runs of N = 16 particles. Tolerances: 4 × the combined Monte-Carlo standard
    errors (the reference's from its ESS, the SMC rate's binomial, the diversity's from a bootstrap of
    the draws), plus the class rate's small-N bias bound 0.03 (SMC with N = 16 is consistent, not unbiased).
    """
    label, steps = 3, 25
    prior = digits(steps)
    reward = ClassLogProb(classifier, label)
    with torch.no_grad():
        pool = torch.cat([prior.sample((1000,), generator=s) for s in range(3)])
        log_w = reward(pool).double()
    w = torch.softmax(log_w, 0)
    ess = float(1 / (w**2).sum())
    is_y = (classifier(pool).argmax(-1) == label).double()
    ref_rate = float((w * is_y).sum())

    def model():
        x = pyro.sample("x", prior)
        tilted.factor("class", reward, x, temperature=1.0)

    runs = 96
    res = SMC(model, 16, num_runs=runs).run(seed=1)
    x = res.sample(1, seed=2)["x"][:, 0]
    with torch.no_grad():
        rate = float((classifier(x).argmax(-1) == label).double().mean())
    se_rate = math.sqrt(ref_rate * (1 - ref_rate) / runs + ref_rate * (1 - ref_rate) / ess) + 1 / runs
    assert abs(rate - ref_rate) <= 4 * se_rate + 0.03, (rate, ref_rate, se_rate)
    assert rate >= 0.9

    # diversity: mean pairwise distance under the weighted pool and among the SMC draws, bootstrap s.e.
    g = torch.Generator().manual_seed(3)
    d_pool, d_smc = _distances(pool), _distances(x)
    ones = torch.ones(runs, dtype=torch.float64)
    div_ref, div_smc = _mean_pairwise(d_pool, w), _mean_pairwise(d_smc, ones)
    se_div = math.hypot(_bootstrap_se(d_pool, w, g), _bootstrap_se(d_smc, ones, g))
    assert abs(div_smc - div_ref) <= 4 * se_div, (div_smc, div_ref, se_div)
    # The model's own class-conditional law is about 10 % less diverse than the real 3s (0.48 against 0.54
    # on the 146 training 3s, docs/pretrained.md): a gap of the trained network, not of the engine. Bound
    # it loosely so that a retrained, collapsed model fails here.
    real, labels = digits_data("train")
    real = real[labels == label]
    div_real = _mean_pairwise(_distances(real), torch.ones(len(real), dtype=torch.float64))
    assert abs(div_ref - div_real) <= 0.2 * div_real, (div_ref, div_real)


def test_digits_weights_folder_is_the_package_data():
    assert WEIGHTS == Path(tilted.__file__).parent / "pretrained" / "weights" / "digits"
    assert (WEIGHTS / "unet" / "diffusion_pytorch_model.safetensors").is_file()


def test_the_peptide_esm_loads_from_its_folder_and_samples_the_heptad_law():
    """The shipped peptide ESM: a MaskedLM over 20 amino acids; its 16-step chain's samples have the data's
    hydrophobic pattern (core-count TV within 3× the floor of two data sets: the card's 0.028 vs 0.027 at
    n = 4000; here n = 1000, floor ≈ 0.05) and a mean data log-density near the data's (−41.3; card: −42.5)."""
    from tilted.distributions import MaskedLM
    from tilted.pretrained import peptide_data, peptide_lm
    from tilted.pretrained import peptides as P

    prior = peptide_lm()
    assert isinstance(prior, MaskedLM) and prior.length == 16 and "".join(prior.alphabet) == P.AMINO_ACIDS
    torch.testing.assert_close(P.emission_probs().sum(-1), torch.ones(2, dtype=torch.float64))
    x = prior.sample((1000,), generator=0)
    data = peptide_data(1000, torch.Generator().manual_seed(1))
    again = peptide_data(1000, torch.Generator().manual_seed(2))
    core = torch.tensor([a in P.CORE for a in P.AMINO_ACIDS])

    def hist(s):
        return torch.bincount(core[s].sum(-1), minlength=17).double() / len(s)

    floor = 0.5 * float((hist(again) - hist(data)).abs().sum())
    assert 0.5 * float((hist(x) - hist(data)).abs().sum()) < 3 * floor + 0.02
    assert float(P.log_prob(x).mean()) > float(P.log_prob(data).mean()) - 2.5
    # log_prob is a normalised density: it sums to 1 over a length-2 law (400 sequences)
    pairs = torch.cartesian_prod(torch.arange(20), torch.arange(20))
    assert abs(float(P.log_prob(pairs).exp().sum()) - 1) < 1e-12
