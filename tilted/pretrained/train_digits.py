"""Train the digits DDPM and its two classifiers, then measure them for the model card (docs/pretrained.md).

    python -m tilted.pretrained.train_digits                       # writes tilted/pretrained/weights/digits
    python -m tilted.pretrained.train_digits --out DIR --figures docs/figures
    python -m tilted.pretrained.train_digits --card-only           # re-measure shipped weights

Seeded (``--seed``, default 0) and single-process: on 2 CPU cores the whole script takes about 10
minutes (``training.json`` records the time of each part). Everything trains on the 1,437 training
images of :func:`~tilted.pretrained.sklearn_digits.digits_data`; the 360 held-out images are used only to
measure.

- Classifier (:class:`~tilted.pretrained.sklearn_digits.DigitsCNN`): Adam, 40 epochs, batches of 64, inputs
  shifted by up to one pixel and perturbed by Gaussian noise of standard deviation 0.1 (a reward is
  evaluated on x̂₀, which is never a clean image).
- Cross classifier (:class:`~tilted.pretrained.sklearn_digits.PixelLogistic`): scikit-learn's
  ``LogisticRegression`` (L2, C = 0.1) on the pixels.
- DDPM: ε-prediction MSE with t uniform on 0 … 999, AdamW (lr 10⁻³, 200 warm-up steps, cosine decay),
  batches of 128, 4,000 steps, EMA of the weights (decay 0.999); the EMA weights are shipped.

The card measures 1,000 unguided DDPM samples (100 steps): the classifier's confidence and predicted
class histogram, agreement with the logistic classifier, and the distance of every sample to its
nearest training image, against the same distance for held-out images (samples much closer than
held-out images would mean memorised training images).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from tilted.pretrained import sklearn_digits as D


def train_classifier(x, y, generator, epochs: int = 40, batch: int = 64) -> D.DigitsCNN:
    model = D.DigitsCNN()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    n = x.shape[0]
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator)
        for i in range(0, n, batch):
            idx = order[i : i + batch]
            xb = _shift(x[idx], generator) + 0.1 * torch.randn(x[idx].shape, generator=generator)
            loss = F.cross_entropy(model(xb), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def _shift(x, generator):
    """Each image moved by a random offset in {−1, 0, 1}² (background −1 fills the border)."""
    padded = F.pad(x, (1, 1, 1, 1), value=-1.0)
    dx, dy = torch.randint(0, 3, (2, x.shape[0]), generator=generator)
    return torch.stack([padded[i, :, dy[i] : dy[i] + 8, dx[i] : dx[i] + 8] for i in range(x.shape[0])])


def train_logistic(x, y) -> D.PixelLogistic:
    from sklearn.linear_model import LogisticRegression

    fit = LogisticRegression(C=0.1, max_iter=5000).fit(x.reshape(len(x), -1).numpy(), y.numpy())
    model = D.PixelLogistic()
    linear = model.net[1]
    with torch.no_grad():
        linear.weight.copy_(torch.as_tensor(fit.coef_, dtype=torch.float32))
        linear.bias.copy_(torch.as_tensor(fit.intercept_, dtype=torch.float32))
    return model.eval()


def train_ddpm(x, generator, steps: int = 4000, batch: int = 128, log_every: int = 50):
    from diffusers import DDPMScheduler, UNet2DModel

    unet = UNet2DModel(**D.UNET_CONFIG)
    scheduler = DDPMScheduler(**D.SCHEDULER_CONFIG)
    ema = copy.deepcopy(unet).requires_grad_(False)
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-3, weight_decay=1e-4)
    warmup = 200
    lr = lambda i: min(1.0, (i + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * i / steps))  # noqa: E731
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr)
    ac = scheduler.alphas_cumprod
    curve, running = [], []
    unet.train()
    for i in range(steps):
        x0 = x[torch.randint(0, x.shape[0], (batch,), generator=generator)]
        t = torch.randint(0, scheduler.config.num_train_timesteps, (batch,), generator=generator)
        eps = torch.randn(x0.shape, generator=generator)
        a = ac[t].view(-1, 1, 1, 1)
        loss = F.mse_loss(unet(a.sqrt() * x0 + (1 - a).sqrt() * eps, t).sample, eps)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        sched.step()
        decay = min(0.999, (1 + i) / (10 + i))
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), unet.parameters(), strict=True):
                pe.lerp_(p, 1 - decay)
        running.append(loss.item())
        if (i + 1) % log_every == 0:
            curve.append([i + 1, sum(running) / len(running)])
            running = []
            if (i + 1) % (log_every * 10) == 0:
                print(f"  ddpm step {i + 1}/{steps}: loss {curve[-1][1]:.4f}", flush=True)
    return ema.eval(), scheduler, curve


def accuracy(model, x, y) -> float:
    with torch.no_grad():
        return float((model(x).argmax(-1) == y).float().mean())


def save(out: Path, unet, scheduler, classifier, logistic) -> None:
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    unet.save_pretrained(out / "unet", safe_serialization=True)
    scheduler.save_pretrained(out / "scheduler")
    save_file({k: v.contiguous() for k, v in classifier.state_dict().items()}, out / "classifier.safetensors")
    save_file({k: v.contiguous() for k, v in logistic.state_dict().items()}, out / "logistic.safetensors")


def card(folder: Path, figures: Path | None, seed: int, num_samples: int = 1000) -> dict:
    """Sample quality of the trained model (module docstring); figures to ``figures`` when given."""
    classifier, logistic = D.digits_classifier(folder), D.digits_logistic(folder)
    x_train, _ = D.digits_data("train")
    x_test, y_test = D.digits_data("test")
    prior = D.digits(100, path=folder)
    t0 = time.perf_counter()
    with torch.no_grad():
        samples = torch.cat(
            [prior.sample((250,), generator=torch.Generator().manual_seed(seed + i)) for i in range(num_samples // 250)]
        )
    sample_seconds = time.perf_counter() - t0
    with torch.no_grad():
        probs = classifier(samples).softmax(-1)
        pred = probs.argmax(-1)
        pred_logistic = logistic(samples).argmax(-1)
        test_probs = classifier(x_test).softmax(-1)

    def nearest(x):  # RMS pixel distance (in [−1, 1] units) to the nearest training image
        return torch.cdist(x.reshape(len(x), -1), x_train.reshape(len(x_train), -1)).min(-1).values / 8.0

    d_samples, d_test = nearest(samples), nearest(x_test)
    result = {
        "num_samples": len(samples),
        "sample_seconds": sample_seconds,
        "classifier_confidence_samples": float(probs.max(-1).values.mean()),
        "classifier_confidence_test": float(test_probs.max(-1).values.mean()),
        "class_histogram": torch.bincount(pred, minlength=10).tolist(),
        "logistic_agreement": float((pred == pred_logistic).float().mean()),
        "nearest_train_rms_samples": _quantiles(d_samples),
        "nearest_train_rms_test": _quantiles(d_test),
        "fraction_samples_closer_than_test_min": float((d_samples < d_test.min()).float().mean()),
        "pixel_range_samples": [float(samples.min()), float(samples.max())],
    }
    if figures is not None:
        _figures(figures, samples, pred, d_samples, x_train, x_test, d_test, folder)
    return result


def _quantiles(d):
    q = torch.quantile(d, torch.tensor([0.05, 0.5, 0.95]))
    return {"q05": float(q[0]), "median": float(q[1]), "q95": float(q[2]), "min": float(d.min())}


def _figures(figures, samples, pred, d_samples, x_train, x_test, d_test, folder):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures.mkdir(parents=True, exist_ok=True)
    log = json.loads((folder / "training.json").read_text())
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
    steps, loss = zip(*log["ddpm_loss_curve"], strict=True)
    axes[0].plot(steps, loss)
    axes[0].set_yscale("log")
    axes[0].set(xlabel="training step", ylabel="ε-MSE (mean over 50 steps)", title="DDPM training loss")
    axes[1].bar(range(10), torch.bincount(pred, minlength=10).tolist())
    axes[1].set(xlabel="class (CNN classifier)", ylabel="unguided samples", title=f"{len(pred)} unguided samples")
    axes[1].set_xticks(range(10))
    bins = torch.linspace(0, float(max(d_samples.max(), d_test.max())), 40)
    axes[2].hist(d_test.numpy(), bins=bins.numpy(), density=True, alpha=0.6, label="held-out images")
    axes[2].hist(d_samples.numpy(), bins=bins.numpy(), density=True, alpha=0.6, label="unguided samples")
    axes[2].set(xlabel="RMS distance to nearest training image", ylabel="density", title="memorisation check")
    axes[2].legend()
    fig.tight_layout()
    fig.savefig(figures / "digits_training.png", dpi=100)
    plt.close(fig)

    # closest samples next to their nearest training images
    order = d_samples.argsort()[:8]
    flat = x_train.reshape(len(x_train), -1)
    nn_idx = torch.cdist(samples[order].reshape(8, -1), flat).argmin(-1)
    fig, axes = plt.subplots(3, 10, figsize=(10, 3.4))
    for i in range(10):
        axes[0, i].imshow(samples[(pred == i).nonzero()[0, 0]][0], cmap="gray_r", vmin=-1, vmax=1)
        axes[0, i].set_title(str(i), fontsize=9)
    for j in range(8):
        axes[1, j].imshow(samples[order[j]][0], cmap="gray_r", vmin=-1, vmax=1)
        axes[2, j].imshow(x_train[nn_idx[j]][0], cmap="gray_r", vmin=-1, vmax=1)
        axes[1, j].set_title(f"d={float(d_samples[order[j]]):.2f}", fontsize=8)
    for ax in axes.flat:
        ax.axis("off")
    fig.text(0.01, 0.85, "one sample per class", fontsize=8)
    fig.text(0.01, 0.52, "closest samples", fontsize=8)
    fig.text(0.01, 0.2, "their nearest training images", fontsize=8)
    fig.tight_layout(rect=(0.16, 0, 1, 1))
    fig.savefig(figures / "digits_samples.png", dpi=100)
    plt.close(fig)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=D.WEIGHTS)
    p.add_argument("--figures", type=Path, default=None, help="folder for the model card's figures")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=4000, help="DDPM training steps")
    p.add_argument("--card-only", action="store_true", help="only measure the weights in --out")
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    if not args.card_only:
        torch.manual_seed(args.seed)  # initial weights (and dropout) of the networks
        generator = torch.Generator().manual_seed(args.seed)
        x, y = D.digits_data("train")
        x_test, y_test = D.digits_data("test")
        times = {}
        t0 = time.perf_counter()
        classifier = train_classifier(x, y, generator)
        times["classifier_seconds"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        logistic = train_logistic(x, y)
        times["logistic_seconds"] = time.perf_counter() - t0
        print(f"classifier held-out accuracy {accuracy(classifier, x_test, y_test):.4f}", flush=True)
        t0 = time.perf_counter()
        unet, scheduler, curve = train_ddpm(x, generator, steps=args.steps)
        times["ddpm_seconds"] = time.perf_counter() - t0
        save(args.out, unet, scheduler, classifier, logistic)
        log = {
            "seed": args.seed,
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "train_images": len(x),
            "test_images": len(x_test),
            "ddpm_steps": args.steps,
            "ddpm_parameters": sum(p.numel() for p in unet.parameters()),
            "classifier_test_accuracy": accuracy(classifier, x_test, y_test),
            "classifier_train_accuracy": accuracy(classifier, x, y),
            "logistic_test_accuracy": accuracy(logistic, x_test, y_test),
            "logistic_train_accuracy": accuracy(logistic, x, y),
            **times,
            "ddpm_loss_curve": curve,
        }
        (args.out / "training.json").write_text(json.dumps(log, indent=1))
    result = card(args.out, args.figures, args.seed)
    (args.out / "card.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
