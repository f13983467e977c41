"""Rewards: the protocol and its composition, analytic and classifier rewards, and the image rewards
(CLIP score, PickScore, LAION aesthetic, JPEG) on tiny CLIP models saved to disk and loaded back
through ``from_pretrained``, offline.

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
from tiny_models import tiny_clip, tiny_unet

import tilted
from tilted.errors import MissingWeightsError, ModelError, NonFiniteError, ShapeError
from tilted.rewards import (
    AestheticHead,
    ClassifierLogProb,
    CLIPScore,
    JPEGCompressibility,
    LAIONAesthetic,
    LogDensity,
    PickScore,
    Quadratic,
    Reward,
    WeightedSum,
    as_reward,
)

U = 2.0**-8  # bfloat16 unit roundoff


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return tiny_clip(tmp_path_factory.mktemp("clip"), logit_scale=2.5)


@pytest.fixture(scope="module")
def clip_model(clip_dir):
    from transformers import CLIPModel, CLIPProcessor

    return CLIPModel.from_pretrained(clip_dir).eval(), CLIPProcessor.from_pretrained(clip_dir)


def images(*batch, size=(20, 24), seed=0):
    return torch.rand(*batch, 3, *size, generator=torch.Generator().manual_seed(seed))


def reference_cosine(clip_model, pixels, prompts):
    """cos(image, text) for every (image, prompt) pair by calling CLIPModel by hand: (B, P)."""
    model, processor = clip_model
    tokens = processor.tokenizer(prompts, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"], pixel_values=pixels)
    return out.logits_per_image / model.logit_scale.exp()


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


# -- CLIP preprocessing, CLIP score and PickScore -------------------------------------------------


def test_preprocessing_matches_the_clip_image_processor(clip_dir, clip_model):
    """Our torch preprocessing against CLIPImageProcessor's PIL path on 8-bit images: identical without
    a resize. With a resize both use PIL's antialiased bicubic kernel, but PIL rounds (and clamps) the
    resized pixels to 8 bits after each of its two passes: on smooth images they differ by ≤ 1 level
    (measured 1.06), so ≤ 2/255 in [0, 1] units, ÷ std ≥ 0.26 → atol 0.03. (On pixel noise PIL's
    clamped intermediate pass differs more, by up to 16 levels at a few overshooting pixels.)"""
    processor = clip_model[1]
    encoder = CLIPScore.from_pretrained(clip_dir, prompts="a").encoder
    for shape, atol in [((16, 16), 1e-6), ((40, 30), 0.03), ((18, 50), 0.03), ((64, 64), 0.03)]:
        smooth = torch.nn.functional.interpolate(images(1, size=(6, 6)), size=shape, mode="bilinear")[0]
        u8 = (smooth * 255).round().to(torch.uint8)
        ref = processor.image_processor(images=u8.permute(1, 2, 0).numpy(), return_tensors="pt")["pixel_values"]
        mine = encoder.pixels(u8[None].float() / 255)
        assert mine.shape == ref.shape == (1, 3, 16, 16)
        torch.testing.assert_close(mine, ref, rtol=0, atol=atol)


@pytest.mark.parametrize("scale", [100.0, "logit_scale"])
def test_clip_score_equals_clip_model_by_hand(clip_dir, clip_model, scale):
    prompts = ["a red cat", "dog", "a photo of 3 birds"]
    r = CLIPScore.from_pretrained(clip_dir, prompts="a red cat", scale=scale)
    x = images(2, 3)
    pixels = r.encoder.pixels(x.reshape(6, 3, 20, 24))
    cos = reference_cosine(clip_model, pixels, prompts)  # (6, 3)
    s = clip_model[0].logit_scale.exp().item() if scale == "logit_scale" else scale
    value = r(x)
    assert value.shape == (2, 3) and value.dtype == torch.float32
    torch.testing.assert_close(value, s * cos[:, 0].reshape(2, 3), rtol=1e-5, atol=1e-5 * s)
    # a list of prompts pairs prompt i with image i along the last batch dimension
    paired = CLIPScore.from_pretrained(clip_dir, prompts=prompts, scale=scale)
    expected = s * cos.reshape(2, 3, 3).diagonal(dim1=-2, dim2=-1)
    torch.testing.assert_close(paired(x), expected, rtol=1e-5, atol=1e-5 * s)
    # ... or along another batch dimension
    along_first = CLIPScore.from_pretrained(clip_dir, prompts=prompts, scale=scale, prompt_dim=0)
    xt = x.transpose(0, 1)  # (3 prompts, 2, ...)
    torch.testing.assert_close(along_first(xt), expected.T, rtol=1e-5, atol=1e-5 * s)


def test_clip_score_shapes_broadcasting_and_bad_input(clip_dir):
    one = CLIPScore.from_pretrained(clip_dir, prompts="cat")
    x = images(2, 2, 4)
    assert one(x).shape == (2, 2, 4)
    assert one(x[0, 0, 0]).shape == ()
    torch.testing.assert_close(one(x)[1, 0], one(x[1, 0]))  # batch elements do not interact
    two = CLIPScore.from_pretrained(clip_dir, prompts=["cat", "dog"])
    with pytest.raises(ShapeError, match=r"2 prompts.*\(\.\.\., 2, 3, H, W\)"):
        two(x)
    with pytest.raises(ShapeError, match="2 prompts"):
        two(x[0, 0, 0])
    with pytest.raises(ShapeError, match=r"\(\*batch, 3, H, W\)"):
        one(torch.rand(2, 4, 16, 16))
    with pytest.raises(ShapeError, match="uint8"):
        one((x * 255).to(torch.uint8))
    bad = x.clone()
    bad[0, 1, 2, 0, 3, 3] = float("nan")
    with pytest.raises(NonFiniteError, match="1 NaN"):
        one(bad)
    with pytest.raises(ModelError, match="prompts"):
        CLIPScore.from_pretrained(clip_dir, prompts=[])


def test_clip_score_gradients_reach_images_only(clip_dir):
    r = CLIPScore.from_pretrained(clip_dir, prompts=["cat", "dog"])
    x = images(3, 2).requires_grad_(True)
    r(x).sum().backward()
    assert torch.isfinite(x.grad).all() and (x.grad.abs().sum((-3, -2, -1)) > 0).all()
    assert not r.model.training
    assert all(not p.requires_grad and p.grad is None for p in r.model.parameters())


def test_text_embeddings_are_computed_once(clip_dir, monkeypatch):
    r = CLIPScore.from_pretrained(clip_dir, prompts=["cat", "dog"])

    def fail(*args, **kwargs):
        raise AssertionError("text tower called at reward time")

    monkeypatch.setattr(r.model, "get_text_features", fail)
    assert r(images(2)).shape == (2,)


def test_pickscore_uses_the_model_logit_scale(clip_dir, clip_model):
    r = PickScore.from_pretrained(clip_dir, prompts="cat", processor=clip_dir)
    x = images(4)
    cos = reference_cosine(clip_model, r.encoder.pixels(x), ["cat"])[:, 0]
    assert r.scale == pytest.approx(torch.tensor(2.5).exp().item())
    torch.testing.assert_close(r(x), r.scale * cos, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_clip_score_half_precision(clip_dir, dtype):
    full = CLIPScore.from_pretrained(clip_dir, prompts=["cat", "dog"], scale=1.0)
    half = CLIPScore.from_pretrained(clip_dir, prompts=["cat", "dog"], scale=1.0, dtype=dtype)
    assert next(half.model.parameters()).dtype == dtype
    x = images(8, 2).requires_grad_(True)
    try:
        value = half(x)
    except RuntimeError as error:  # some CPU builds lack float16 kernels (conv, layer norm, bicubic)
        pytest.skip(f"{dtype} is not supported on this CPU: {error}")
    assert value.dtype == torch.float32
    reference = full(x.detach())
    torch.testing.assert_close(value, reference, rtol=0, atol=4 * U)
    assert reference.max() - reference.min() > 8 * U
    value.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


# -- LAION aesthetic ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def head_file(tmp_path_factory):
    torch.manual_seed(1)
    head = AestheticHead(24)
    with torch.no_grad():  # weights larger than PyTorch's default init, so that scores vary across images
        for layer in head.layers:
            if isinstance(layer, torch.nn.Linear):
                layer.weight.normal_(0.0, 2.0 / layer.in_features**0.5)
    path = tmp_path_factory.mktemp("aesthetic") / "head.pth"
    torch.save(head.state_dict(), path)
    return path


def test_aesthetic_equals_head_on_normalised_clip_features(clip_dir, clip_model, head_file):
    r = LAIONAesthetic.from_pretrained(clip_dir, head=head_file)
    head = AestheticHead(24)
    head.load_state_dict(torch.load(head_file, weights_only=True))
    assert sorted(head.state_dict()) == sorted(
        f"layers.{i}.{p}" for i in (0, 2, 4, 6, 7) for p in ("weight", "bias")
    )  # the keys of the published file
    x = images(2, 3).requires_grad_(True)
    value = r(x)
    with torch.no_grad():
        features = (
            clip_model[0].get_image_features(pixel_values=r.encoder.pixels(x.reshape(6, 3, 20, 24))).pooler_output
        )
        expected = head.eval()(features / features.norm(dim=-1, keepdim=True))[:, 0].reshape(2, 3)
    assert value.shape == (2, 3) and value.dtype == torch.float32
    torch.testing.assert_close(value, expected, rtol=1e-5, atol=1e-6)
    value.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in list(r.model.parameters()) + list(r.head.parameters()))
    assert not r.head.training


def test_aesthetic_bfloat16(clip_dir, head_file):
    full = LAIONAesthetic.from_pretrained(clip_dir, head=head_file)
    half = LAIONAesthetic.from_pretrained(clip_dir, head=head_file, dtype=torch.bfloat16)
    x = images(8)
    value, reference = half(x), full(x)
    assert value.dtype == torch.float32 and half.head.layers[0].weight.dtype == torch.bfloat16
    bound = 16 * U * reference.abs().max().item()
    torch.testing.assert_close(value, reference, rtol=0, atol=bound)
    assert reference.max() - reference.min() > 2 * bound


def test_aesthetic_head_must_fit_the_clip_model(clip_dir, tmp_path):
    path = tmp_path / "head768.pth"
    torch.save(AestheticHead(768).state_dict(), path)
    with pytest.raises(ModelError, match="24-dimensional"):
        LAIONAesthetic.from_pretrained(clip_dir, head=path)


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


# -- loading errors -------------------------------------------------------------------------------


def test_missing_local_folder_names_what_to_download(tmp_path):
    missing = tmp_path / "no-such-folder"
    with pytest.raises(MissingWeightsError) as info:
        CLIPScore.from_pretrained(missing, prompts="cat")
    message = str(info.value)
    assert str(missing) in message
    assert (
        'hf download openai/clip-vit-large-patch14 --exclude "*.h5" --exclude "*.msgpack" '
        "--local-dir models/clip-vit-large-patch14" in message
    )
    assert "CLIPScore.from_pretrained('models/clip-vit-large-patch14', ...)" in message
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(MissingWeightsError, match="lacks files"):
        CLIPScore.from_pretrained(empty, prompts="cat")


@pytest.mark.parametrize(
    "load, names",
    [
        (lambda kw: CLIPScore.from_pretrained(prompts="cat", **kw), ["hf download openai/clip-vit-large-patch14"]),
        (lambda kw: PickScore.from_pretrained(prompts="cat", **kw), ["hf download yuvalkirstain/PickScore_v1"]),
        (
            lambda kw: CLIPScore.from_pretrained("someone/some-clip", prompts="cat", **kw),
            ["hf download someone/some-clip"],
        ),
    ],
)
def test_hub_ids_offline_name_what_to_download(load, names, tmp_path):
    # an empty cache: whatever this machine has cached, nothing can be found, and HF_HUB_OFFLINE=1
    with pytest.raises(MissingWeightsError) as info:
        load({"cache_dir": tmp_path})
    message = str(info.value)
    assert "is not a local folder, and as a hub id it is neither in the local Hugging Face cache" in message
    for name in names:
        assert name in message


def test_missing_processor_and_head_name_what_to_download(clip_dir, tmp_path):
    with pytest.raises(MissingWeightsError) as info:
        PickScore.from_pretrained(clip_dir, prompts="cat", cache_dir=tmp_path)  # default processor id
    message = str(info.value)
    assert 'hf download laion/CLIP-ViT-H-14-laion2B-s32B-b79K --include "*.json" --include "*.txt"' in message
    assert "PickScore.from_pretrained(..., processor='models/CLIP-ViT-H-14-laion2B-s32B-b79K')" in message
    with pytest.raises(MissingWeightsError) as info:
        LAIONAesthetic.from_pretrained(clip_dir, head=tmp_path / "sac+logos+ava1-l14-linearMSE.pth")
    message = str(info.value)
    assert (
        "https://github.com/christophschuhmann/improved-aesthetic-predictor/raw/main/sac+logos+ava1-l14-linearMSE.pth"
        in message
    )
    assert "head='path/to/sac+logos+ava1-l14-linearMSE.pth'" in message


# -- end to end -----------------------------------------------------------------------------------


def test_smc_with_a_clip_score_factor(clip_dir):
    """A reward object plugs into an engine: SMC with the gradient proposal on a tiny image UNet."""
    from tilted.distributions import GaussianDiffusion
    from tilted.inference import SMC

    prior = GaussianDiffusion(denoiser=tiny_unet(3, 8), event_shape=(3, 8, 8), num_steps=4, clip_sample=1.0)
    reward = CLIPScore.from_pretrained(clip_dir, prompts="a red cat").after(lambda x: (x / 2 + 0.5).clamp(0, 1))

    def model():
        x = pyro.sample("x", prior)
        tilted.factor("clip", reward, x, temperature=10.0)

    result = SMC(model, 8, proposal="gradient").run(seed=0)
    assert result.particles["x"].shape == (8, 3, 8, 8)
    assert torch.isfinite(result.log_weights).all() and torch.isfinite(torch.as_tensor(result.log_evidence))
    assert result.counts.reward_calls > 0 and result.counts.gradient_evaluations > 0
