"""Sample-quality metrics against an exact target: Earth mover's distance with its sampling floor."""

from __future__ import annotations

import math

import torch

from tilted._random import Seed, as_generator


def emd(x: torch.Tensor, y: torch.Tensor) -> float:
    """Exact Earth mover's (Wasserstein-1) distance between two equally weighted point clouds.

    Solved as an optimal-transport linear program (POT's ``ot.emd2``) on Euclidean distances.
    """
    import ot

    x, y = x.detach().to(torch.float64).reshape(len(x), -1), y.detach().to(torch.float64).reshape(len(y), -1)
    cost = torch.cdist(x, y).numpy()
    a = torch.full((len(x),), 1.0 / len(x), dtype=torch.float64).numpy()
    b = torch.full((len(y),), 1.0 / len(y), dtype=torch.float64).numpy()
    return float(ot.emd2(a, b, cost, numItermax=10_000_000))


def emd_to_target(points: torch.Tensor, draw_target, repeats: int = 5, seed: Seed = 0) -> dict[str, float]:
    """EMD of ``points`` to fresh exact draws, and the floor: EMD between two exact draws of that size.

    ``draw_target(n, generator)`` returns n exact draws. Returns mean and standard error of both over
    ``repeats`` independent target draws.
    """
    gen = as_generator(seed)
    n = len(points)
    d, f = [], []
    for _ in range(repeats):
        d.append(emd(points, draw_target(n, gen)))
        f.append(emd(draw_target(n, gen), draw_target(n, gen)))

    def stats(v):
        t = torch.tensor(v, dtype=torch.float64)
        se = float(t.std() / math.sqrt(len(v))) if len(v) > 1 else float("nan")
        return float(t.mean()), se

    (dm, ds), (fm, fs) = stats(d), stats(f)
    return {"emd": dm, "emd_se": ds, "floor": fm, "floor_se": fs}
