"""Rewards: the protocol and its composition, analytic and classifier rewards, JPEG compressibility.

Values are compared with a direct computation (CLIPModel called by hand on the same pixels); float32
paths agree to float32 rounding (rtol 1e-5). Half precision: bfloat16 keeps 8 significant bits (unit
roundoff u = 2⁻⁸); the network then runs in bfloat16 and the reward is upcast, so the difference from
float32 is rounding accumulated over the layers. Bounds, in units of u times the size of the values:
cosines (|cos| ≤ 1) within 4u (measured 0.6u), the log-probabilities of a one-layer classifier within
4u·(1 + |r|) (measured 0.3u), the aesthetic score (two ViT layers, projection, five head layers) within
16u·max|r| (measured 5.5u). Each test also checks that the rewards spread over more than the bound, so
the comparison can fail.
"""

from __future__ import annotations

import io

import pyro
import pytest
import torch
from PIL import Image

import tilted
from tilted.errors import ModelError, ShapeError
from tilted.rewards import (
    ClassifierLogProb,
    JPEGCompressibility,
    LogDensity,
    Quadratic,
    Reward,
    WeightedSum,
    as_reward,
)

U = 2.0**-8  # bfloat16 unit roundoff


# -- protocol and composition ---------------------------------------------------------------------


def test_composition_is_exact_arithmetic():
    x = torch.randn(4, 5, 2, dtype=torch.float64)
    q = Quadratic(A=[[1.0, 0.5], [0.5, -2.0]], b=[0.3, -1.0], c=0.25)
    f = lambda x: x.sin().sum(-1)  # noqa: E731
    g = LogDensity(
        torch.distributions.MultivariateNormal(torch.zeros(2, dtype=torch.float64), torch.eye(2, dtype=torch.float64))
    )
    composite = 2.0 * q + f - g / 4 + 1.5
    assert isinstance(composite, WeightedSum) and len(composite.terms) == 3
    expected = 2.0 * q(x) + f(x) - g(x) / 4 + 1.5
    torch.testing.assert_close(composite(x), expected, rtol=0, atol=0)
    torch.testing.assert_close((-q)(x), -q(x), rtol=0, atol=0)
    torch.testing.assert_close((f - q)(x), f(x) - q(x), rtol=0, atol=0)
    torch.testing.assert_close(sum([q, g])(x), q(x) + g(x), rtol=0, atol=0)
    # nested sums are flattened, weights multiply
    nested = 3 * (q + 2 * g)
    assert [w for w, _ in nested.terms] == [3.0, 6.0]
    torch.testing.assert_close(nested(x), 3 * q(x) + 6 * g(x), rtol=0, atol=0)


def test_after_composes_and_flags_propagate():
    q = Quadratic(b=[1.0, 2.0])
    double = q.after(lambda z: 2 * z, input="latents")
    x = torch.randn(3, 2)
    torch.testing.assert_close(double(x), q(2 * x))
    assert double.input == "latents" and double.differentiable
    assert not q.after(torch.round, differentiable=False).differentiable
    jpeg = JPEGCompressibility()
    assert jpeg.input == "images" and not jpeg.differentiable
    mixed = jpeg + 0.1 * as_reward(lambda x: x.mean((-3, -2, -1)))
    assert mixed.input == "images" and not mixed.differentiable
    with pytest.raises(ModelError, match="different inputs"):
        jpeg + double  # images + latents
    with pytest.raises(ModelError, match="callable"):
        q + "not a reward"
    with pytest.raises(ModelError, match="finite"):
        q * float("nan")
    with pytest.raises(ModelError, match="one of"):
        q.after(abs, input="pixels")


def test_rewards_plug_into_factor_under_plain_pyro():
    q = Quadratic(A=-torch.eye(2))
    x = torch.randn(6, 2)

    def model():
        tilted.factor("r", 0.5 * q + (lambda x: x[..., 0]), x, temperature=2.0)

    trace = pyro.poutine.trace(model).get_trace()
    torch.testing.assert_close(trace.nodes["r"]["fn"].log_factor, (0.5 * q(x) + x[:, 0]) / 2.0)
    assert isinstance(q, Reward) and Reward.differentiable and q.input == "any"


def test_log_density():
    dist = torch.distributions.Normal(torch.tensor([0.0, 1.0]), torch.tensor([1.0, 2.0]))
    r = LogDensity(torch.distributions.Independent(dist, 1))
    x = torch.randn(3, 4, 2, requires_grad=True)
    torch.testing.assert_close(r(x), dist.log_prob(x).sum(-1))
    r(x).sum().backward()
    torch.testing.assert_close(x.grad, -(x.detach() - dist.loc) / dist.scale**2)
    assert r.differentiable and not LogDensity(torch.distributions.Categorical(logits=torch.zeros(3))).differentiable
    with pytest.raises(ShapeError, match="event shape"):
        r(torch.randn(4, 3))
    with pytest.raises(ModelError, match="Distribution"):
        LogDensity(lambda x: x)


# -- classifier -----------------------------------------------------------------------------------


def tiny_classifier():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.Dropout(0.5), torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 5)
    )


def test_classifier_log_prob_values_shapes_and_gradients():
    net = tiny_classifier()
    r = ClassifierLogProb(net, 2, event_dim=3)
    assert not net.training and not any(p.requires_grad for p in net.parameters())
    x = torch.randn(2, 3, 3, 8, 8, requires_grad=True)
    value = r(x)
    expected = torch.log_softmax(net(x.detach().reshape(6, 3, 8, 8)), -1)[:, 2].reshape(2, 3)
    torch.testing.assert_close(value, expected)
    value.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in net.parameters())
    # one target per element of the last batch dimension, broadcasting against (2, 3)
    targets = torch.tensor([0, 4, 1])
    per = ClassifierLogProb(net, targets, event_dim=3)(x.detach())
    logp = torch.log_softmax(net(x.detach().reshape(6, 3, 8, 8)), -1).reshape(2, 3, 5)
    torch.testing.assert_close(per, logp.gather(-1, targets.expand(2, 3).unsqueeze(-1)).squeeze(-1))
    # probabilities over classes sum to one
    total = torch.stack([ClassifierLogProb(net, c, event_dim=3)(x.detach()).exp() for c in range(5)]).sum(0)
    torch.testing.assert_close(total, torch.ones(2, 3))
    with pytest.raises(ModelError, match="0..4"):
        ClassifierLogProb(net, 5, event_dim=3)(x)
    with pytest.raises(ShapeError, match="broadcast"):
        ClassifierLogProb(net, torch.tensor([0, 1]), event_dim=3)(x)
    with pytest.raises(ModelError, match="integer"):
        ClassifierLogProb(net, 1.5)


def test_classifier_bfloat16():
    net = tiny_classifier()
    x = torch.randn(4, 3, 8, 8)
    full = ClassifierLogProb(net, 1)(x)
    half = ClassifierLogProb(tiny_classifier().to(torch.bfloat16), 1)(x.to(torch.bfloat16))
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, full, rtol=4 * U, atol=4 * U)
    assert full.max() - full.min() > 8 * U * (1 + full.abs().max())


# -- JPEG -----------------------------------------------------------------------------------------


def test_jpeg_compressibility():
    r = JPEGCompressibility()
    gen = torch.Generator().manual_seed(0)
    smooth = torch.linspace(0, 1, 32).expand(3, 32, 32)
    noisy = torch.rand(3, 32, 32, generator=gen)
    x = torch.stack([smooth, noisy, smooth * 0 + 0.5]).reshape(3, 1, 3, 32, 32).requires_grad_(True)
    value = r(x)
    assert value.shape == (3, 1) and value.dtype == torch.float32 and not value.requires_grad
    assert value[0, 0] > value[1, 0] and value[2, 0] > value[1, 0]
    # the DDPO computation by hand
    buffer = io.BytesIO()
    pixels = (noisy * 255).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=95)
    assert value[1, 0].item() == pytest.approx(-buffer.tell() / 1000)
    assert r(noisy).shape == ()
    assert r(noisy * 3 - 1).item() == r((noisy * 3 - 1).clamp(0, 1)).item()  # out-of-range values are clamped
    with pytest.raises(ModelError, match="quality"):
        JPEGCompressibility(quality=0)
