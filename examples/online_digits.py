"""Online black-box optimisation on the digits DDPM: a budget of queries to an expensive "assay".

    python examples/online_digits.py                 # 6 rounds of 16 queries, into online-digits/
    python examples/online_digits.py --rounds 10     # continue the same run for 4 more rounds

The assay is simulated: the log-odds of class 3 under the logistic-regression classifier, which fails
(returns NaN) on 10 % of the queries. The surrogate (a bootstrap ensemble with UCB optimism) reads
the CNN's penultimate features, and each round SMC samples the next batch from
p_θ(x) · exp(r̂⁺(x)/α). Every query is kept in the store folder, so stopping the script (Ctrl-C) and
starting it again loses nothing. It writes the progress plot and the best images to that folder.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from tilted.online import Ensemble, optimize  # noqa: E402
from tilted.pretrained import digits, digits_classifier, digits_logistic  # noqa: E402


def assay(x: torch.Tensor) -> torch.Tensor:
    """The black box: log p/(1 − p) of class 3 under a classifier the surrogate never sees; 10 % fail."""
    with torch.no_grad():
        logp = ASSAY_MODEL(x).log_softmax(-1)[:, 3]
    y = (logp - torch.log1p(-logp.exp().clamp(max=1 - 1e-12))).double()
    fails = torch.rand(len(x), generator=FAILURES) < 0.1
    return y.masked_fill(fails, float("nan"))


ASSAY_MODEL, FAILURES = digits_logistic(), torch.Generator().manual_seed(1)


def main(argv=None, out: str = "online-digits"):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=50, help="DDPM steps of the sampler")
    p.add_argument("--temperature", type=float, default=0.5, help="α, the KL weight")
    p.add_argument("--out", default=out)
    args = p.parse_args(argv)
    folder = Path(args.out)
    encoder = digits_classifier().features  # a frozen encoder: the surrogate's inputs
    history = optimize(
        digits(args.steps),
        assay,
        rounds=args.rounds,
        batch_size=args.batch_size,
        temperature=args.temperature,
        seed=0,
        surrogate=Ensemble(features=encoder),
        store=folder / "queries",
        callback=lambda h: print(
            f"round {h.num_rounds - 1}: best {float(h.best()[-1]):.2f}, batch mean {float(h.mean()[-1]):.2f}"
        ),
    )
    ax = history.plot()
    ax.set_title("digits: log-odds of a 3 under an unseen classifier")
    ax.figure.savefig(folder / "progress.png", dpi=110, bbox_inches="tight")
    y, x = torch.cat(history.y), torch.cat(history.x)
    top = torch.nan_to_num(y, nan=-torch.inf).topk(8).indices
    fig, axes = plt.subplots(1, 8, figsize=(8, 1.3))
    for a, i in zip(axes, top, strict=True):
        a.imshow(x[i, 0].numpy(), cmap="gray_r", vmin=-1, vmax=1)
        a.set_title(f"{float(y[i]):.1f}", fontsize=8)
        a.axis("off")
    fig.savefig(folder / "best.png", dpi=110, bbox_inches="tight")
    print(
        f"{int(history.queries[-1])} queries ({int(y.isnan().sum())} failed), {history.resumed} rounds resumed; wrote {folder}"
    )
    return history


if __name__ == "__main__":
    main()
