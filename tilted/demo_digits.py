"""``tilted demo digits``: the trained digits DDPM tilted toward one class by every kind of engine.

Model: :func:`tilted.pretrained.digits` (a UNet trained on scikit-learn's 8×8 digits), K = 50 DDPM
steps. Reward: r(x) = log p(y | x) under the shipped CNN classifier, α = 1, so the tilted target
p_θ(x) p(y | x)/Z is the model's class-conditional law p_θ(x | y) (Bayes). Every engine returns
``images`` independent draws; SMC, best-of-N and SVDD spend N = 8 denoiser calls per step and draw
(N·K per image); DPS follows one chain (K calls and K gradients per image). Scored by the target
reward, by a classifier the engines never see (logistic regression on the pixels), and by diversity
(mean pairwise RMS distance between the draws), next to the held-out real images of that class.
"""

from __future__ import annotations

import time
from pathlib import Path

import pyro
import torch

import tilted
from tilted.inference import DPS, SMC, SVDD, BestOfN
from tilted.pretrained import digits, digits_classifier, digits_data, digits_logistic
from tilted.rewards import ClassLogProb


def diversity(x: torch.Tensor) -> float:
    """Mean pairwise RMS pixel distance between the images x (n, 1, 8, 8)."""
    flat = x.reshape(len(x), -1).double()
    d = torch.cdist(flat, flat) / flat.shape[1] ** 0.5
    n = len(x)
    return float(d.sum() / (n * (n - 1)))


def score(x: torch.Tensor, label: int, classifier, logistic) -> dict:
    """Target reward, class rate (CNN), cross agreement (logistic regression) and diversity of images x."""
    with torch.no_grad():
        log_p = classifier(x).log_softmax(-1)
        return {
            "reward": float(log_p[:, label].mean()),
            "class_rate": float((log_p.argmax(-1) == label).double().mean()),
            "cross_agreement": float((logistic(x).argmax(-1) == label).double().mean()),
            "diversity": diversity(x),
        }


def run_digits_demo(
    out: str = "outputs", seed: int = 0, label: int = 3, images: int = 16, particles: int = 8, steps: int = 50
) -> dict:
    """Draw ``images`` images with each engine; print the table and save ``out/digits.png``."""
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    prior = digits(steps)
    classifier, logistic = digits_classifier(), digits_logistic()
    reward = ClassLogProb(classifier, label)

    def model():
        x = pyro.sample("x", prior)
        tilted.factor("class", reward, x, temperature=1.0)

    engines = {
        "SMC, prior": SMC(model, particles, num_runs=images),
        "SMC, gradient": SMC(model, particles, proposal="gradient", num_runs=images),
        "DPS (scale 0.1)": DPS(model, 1, scale=0.1, num_runs=images),
        "best-of-N": BestOfN(model, 1, num_candidates=particles, num_runs=images),
        "SVDD": SVDD(model, 1, num_candidates=particles, num_runs=images),
    }
    real, labels = digits_data("test")
    real = real[labels == label][:images]
    rows = [{"engine": f"held-out real {label}s", **score(real, label, classifier, logistic), "calls": None}]
    t0 = time.perf_counter()
    with torch.no_grad():
        draws = {"pretrained (unguided)": prior.sample((images,), generator=seed)}
    rows.append(_row("pretrained (unguided)", draws["pretrained (unguided)"], label, classifier, logistic, steps, t0))
    for name, engine in engines.items():
        t0 = time.perf_counter()
        res = engine.run(seed=seed)
        x = res.sample(1, seed=seed)["x"][:, 0]
        draws[name] = x
        rows.append(_row(name, x, label, classifier, logistic, res.counts.denoiser_calls // images, t0))
    _print(rows, label, images, particles, steps)
    path = _grid({f"held-out real {label}s": real, **draws}, Path(out), label)
    print(f"\nfigure: {path}")
    return {"rows": rows, "figure": str(path)}


def _row(name, x, label, classifier, logistic, calls, t0):
    return {
        "engine": name,
        **score(x, label, classifier, logistic),
        "calls": calls,
        "seconds": time.perf_counter() - t0,
    }


def _print(rows, label, images, particles, steps):
    print(
        f"digits DDPM, {steps} steps; reward log p({label} | x) (CNN), α = 1: target p_θ(x | {label}); "
        f"{images} draws per engine, N = {particles}"
    )
    print("cross = share of draws the logistic-regression classifier (never seen by the engines) calls a " + str(label))
    head = f"{'engine':<24}{'reward':>8}{'CNN rate':>10}{'cross':>8}{'diversity':>11}{'calls/image':>13}{'seconds':>9}"
    print(head)
    print("-" * len(head))
    for r in rows:
        calls = "" if r["calls"] is None else f"{r['calls']:,}"
        secs = f"{r['seconds']:.1f}" if "seconds" in r else ""
        print(
            f"{r['engine']:<24}{r['reward']:>8.2f}{r['class_rate']:>10.2f}{r['cross_agreement']:>8.2f}"
            f"{r['diversity']:>11.3f}{calls:>13}{secs:>9}"
        )


def _grid(draws: dict, out: Path, label: int) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    cols = max(len(x) for x in draws.values())
    fig, axes = plt.subplots(len(draws), cols, figsize=(cols * 0.55 + 1.8, len(draws) * 0.62))
    for row, (name, x) in zip(axes, draws.items(), strict=True):
        for j, ax in enumerate(row):
            if j < len(x):
                ax.imshow(x[j, 0].clamp(-1, 1).numpy(), cmap="gray_r", vmin=-1, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
        row[0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
    fig.suptitle(f"digits DDPM tilted toward class {label} (α = 1)", fontsize=9)
    fig.subplots_adjust(left=0.2, right=0.99, top=0.93, bottom=0.01, wspace=0.05, hspace=0.05)
    path = out / "digits.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
