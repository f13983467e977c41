# %% [markdown]
# # 02 · DAS Figure 1: every engine against the exact tilted target
#
# Figure 1 of DAS (Kim, Kim & Ye, ICLR 2025) tilts nine Gaussians on the grid $\{-4, 0, 4\}^2$
# (covariance $0.3\,I$) by $r(x, y) = -x^2/100 - y^2$ at $\alpha = 1$: the target
# $p_{\rm tar} \propto p_\theta\, e^{r/\alpha}$ keeps only the middle row of modes, with the centre slightly
# preferred. A Gaussian mixture tilted by a quadratic reward is again a Gaussian mixture, component by
# component ($\mathcal N(\mu_c, \Sigma_c)\, e^{r/\alpha} = Z_c\, \mathcal N(\mu_c', \Sigma_c')$, new weights
# $\propto w_c Z_c$), so `tilted.reference.tilt_mixture` gives the exact target to compare with.
#
# Every engine gets the same compute per output point: $N = 16$ pretrained chains' worth of denoiser calls
# ($16 \times K$), and each of $R = 400$ independent runs returns **one** point (a draw from its weighted
# particles; for search engines one of their outputs). The $R$ points are then independent draws of the
# engine's output law, compared with exact draws by the earth mover's distance (EMD) next to its
# **sampling floor**, the EMD between two exact samples of the same size.
#
# Two kinds of engine:
#
# - **asymptotically exact** (SMC with any potential and proposal, importance sampling, nested IS, particle
#   Gibbs, tree sampling): they target $p_{\rm tar}$ as the particles (or sweeps) grow; at $N = 16$ a single
#   draw still carries a finite-$N$ bias.
# - **approximate** (SVDD value decoding, beam search, best-of-N, DPS, MPGD, FreeDoM guidance): optimisers or
#   heuristic samplers with no sampling claim.

# %%
import tilted  # first: tilted imports tqdm quietly (through pyro it warns in a kernel without ipywidgets)

# isort: split
import math
import time

import matplotlib.pyplot as plt
import torch
from IPython.display import Markdown, display

from tilted.diagnostics.toys import das_toy
from tilted.distributions import GaussianDiffusion, GaussianMixture
from tilted.inference import (
    DPS,
    MPGD,
    SMC,
    SVDD,
    BeamSearch,
    BestOfN,
    FreeDoM,
    Importance,
    NestedIS,
    ParticleGibbs,
    TreeSearch,
    das,
    fk_steering,
)
from tilted.metrics import emd
from tilted.reference import tilt_mixture
from tilted.rewards import Quadratic

torch.set_num_threads(1)  # tensors of a toy: one thread is the fastest
print("tilted", tilted.__version__)

# %% [markdown]
# ## The model and the exact target
#
# `tilted.diagnostics.toys.das_toy` builds the model (a DDPM with the mixture's exact denoiser); we use
# $K = 50$ steps to keep this notebook fast. The same data law and reward give the exact target.

# %%
K, N, R, alpha = 50, 16, 400, 1.0
model = das_toy(num_steps=K, temperature=alpha)
grid = torch.tensor([-4.0, 0.0, 4.0])
data = GaussianMixture(torch.cartesian_prod(grid, grid), 0.3)
prior = GaussianDiffusion(data=data, num_steps=K)
reward = Quadratic(A=torch.diag(torch.tensor([-0.01, -1.0])))
target, log_z = tilt_mixture(data, reward, alpha)
print(
    f"exact log Z = {float(log_z):.4f}; tilted mode weights (rows y = -4, 0, 4):",
    target.weights.reshape(3, 3).sum(0).numpy().round(5),
)

# %% [markdown]
# ## The engines
#
# Each entry builds an engine with a budget of $N \cdot K = 800$ denoiser calls per point (guidance follows
# one chain per point and costs what it costs). How each is called is in docs/engines.md, docs/guidance.md and
# docs/search.md; these are the settings of the benchmark suite (benchmarks/engines.py).

# %%
engines = {
    "importance sampling": (True, lambda: Importance(model, N, num_runs=R, progress=False)),
    "SMC, bootstrap": (True, lambda: SMC(model, N, num_runs=R, progress=False)),
    "SMC, gradient": (True, lambda: SMC(model, N, proposal="gradient", num_runs=R, progress=False)),
    "DAS": (True, lambda: das(model, N, num_steps=K, num_runs=R, progress=False)),
    "FK steering": (True, lambda: fk_steering(model, N, num_steps=K, num_runs=R, progress=False)),
    "nested IS (4 × 4)": (True, lambda: NestedIS(model, 4, num_candidates=4, num_runs=R, progress=False)),
    "particle Gibbs (8 × 2 sweeps)": (True, lambda: ParticleGibbs(model, 8, 2, burn_in=1, num_runs=R, progress=False)),
    "tree sampling (DTS)": (
        True,
        lambda: TreeSearch(model, 1, mode="sample", budget=N * K * R, num_runs=R, progress=False),
    ),
    "SVDD (16 candidates)": (False, lambda: SVDD(model, 1, num_candidates=N, num_runs=R, progress=False)),
    "beam search (4 × 4)": (False, lambda: BeamSearch(model, 4, num_candidates=4, num_runs=R, progress=False)),
    "best-of-16": (False, lambda: BestOfN(model, 1, num_candidates=N, num_runs=R, progress=False)),
    "DPS (ζ = 1)": (False, lambda: DPS(model, 1, num_runs=R, progress=False)),
    "MPGD (ζ = 1)": (False, lambda: MPGD(model, 1, num_runs=R, progress=False)),
    "FreeDoM": (False, lambda: FreeDoM(model, 1, num_runs=R, progress=False)),
}


def one_point_per_run(name, result):
    """The output point of each run: a weighted draw, the best beam, or a chain's last retained state."""
    x = result.particles["x"]
    if name.startswith("beam"):
        return x[:, 0]  # beams are sorted best first
    if name.startswith("particle Gibbs"):
        return x[:, -1]  # (chains, retained sweeps, 2): the last state of each chain
    return result.sample(1, seed=1)["x"][:, 0]


points, results, seconds = {}, {}, {}
points["pretrained"] = prior.sample((R,), generator=0)
for name, (_, build) in engines.items():
    start = time.perf_counter()
    results[name] = build().run(seed=0)
    seconds[name] = time.perf_counter() - start
    points[name] = one_point_per_run(name, results[name]).double()
print(f"{sum(seconds.values()):.1f} s for {len(engines)} engines")

# %% [markdown]
# ## The figure: one panel per engine

# %%
exact_points = target.sample(R, torch.Generator().manual_seed(1))
panels = {"exact tilted target": exact_points, **points}
fig, axes = plt.subplots(4, 4, figsize=(13, 13), sharex=True, sharey=True)
for ax, (name, x) in zip(axes.flat, panels.items(), strict=True):
    x = x.double()
    inside = (x.abs() <= 7).all(-1)
    color = "k" if name == "exact tilted target" else ("#c0392b" if engines.get(name, (True,))[0] else "#2980b9")
    ax.scatter(x[inside, 0], x[inside, 1], s=3, alpha=0.4, color=color)
    outside = int((~inside).sum())
    ax.set_title(name + (f"\n({outside} points outside)" if outside else ""), fontsize=10)
    ax.set_xlim(-7, 7)
    ax.set_ylim(-7, 7)
    ax.set_aspect("equal")
fig.suptitle(
    f"DAS toy, K = {K}: one point per run, {R} runs (red: asymptotically exact engines, blue: approximate)", y=0.995
)
fig.tight_layout()

# %% [markdown]
# ## Distance to the exact target
#
# `tilted.metrics.emd` is the exact EMD of two equally weighted point sets (an optimal-transport linear
# program). Each engine's $R$ points are compared with 3 fresh exact samples of size $R$ (mean ± standard
# error), and the **floor** is the mean EMD between two independent exact samples (8 pairs): an engine whose
# output law is the target has EMD − floor ≈ 0 (within its standard error). The mean reward is compared with
# the exact $\mathbb{E}_{\rm tar}[r]$ (from 200,000 exact draws).

# %%
gen = torch.Generator().manual_seed(3)


def exact_sample():
    return target.sample(R, gen).double()


def mean_se(values):
    t = torch.tensor(values, dtype=torch.float64)
    return float(t.mean()), float(t.std() / math.sqrt(len(t)))


floor, floor_se = mean_se([emd(exact_sample(), exact_sample()) for _ in range(8)])
expected_reward = float(reward(target.sample(200_000, torch.Generator().manual_seed(2)).double()).mean())
rows = []
for name, x in points.items():
    distance, distance_se = mean_se([emd(x, exact_sample()) for _ in range(3)])
    res = results.get(name)
    weighted = name in engines and engines[name][0] and bool(torch.isfinite(res.log_evidence).all())
    weighted = weighted and not name.startswith("particle Gibbs")  # a chain's log Ẑ is its first sweep's
    rows.append(
        {
            "engine": name,
            "emd": distance,
            "gap_se": math.hypot(distance_se, floor_se),
            "reward": float(reward(x).mean()),
            "reward_se": float(reward(x).std() / math.sqrt(R)),
            "log_z": float(torch.logsumexp(res.log_evidence, 0) - math.log(R)) if weighted else None,
            "calls": (res.counts.denoiser_calls / R) if res is not None else K,
            "seconds": seconds.get(name),
        }
    )

lines = [
    "| engine | EMD | EMD − floor | mean reward | log Ẑ (mean Ẑ over runs) | denoiser calls / point | s |",
    "|---|---|---|---|---|---|---|",
    f"| exact target (floor) | {floor:.3f} ± {floor_se:.3f} | 0 | {expected_reward:.3f} | {float(log_z):.3f} | | |",
]
for r in rows:
    lz = "" if r["log_z"] is None else f"{r['log_z']:.3f}"
    secs = "" if r["seconds"] is None else f"{r['seconds']:.2f}"
    lines.append(
        f"| {r['engine']} | {r['emd']:.3f} | {r['emd'] - floor:+.3f} ± {r['gap_se']:.3f} | "
        f"{r['reward']:.3f} ± {r['reward_se']:.3f} | {lz} | {r['calls']:.0f} | {secs} |"
    )
display(Markdown("\n".join(lines)))

# %% [markdown]
# What the table says (EMDs within about 0.1 of each other are not distinguishable at $R = 400$):
#
# - The **asymptotically exact engines** sit at or near the floor. Their mean rewards are above the data law's
#   $-0.291$ mostly because the 50-step chain's own tilted mean is higher (about $-0.269$, checked below): 50 steps
#   draw slightly narrower modes, which $-y^2$ prefers (docs/reference.md). For the same reason their $\log \hat Z$,
#   an estimate of the *chain's* $\log Z$, is above the data law's exact value. One draw from 16 particles may still
#   carry a finite-$N$ bias, which the weighted estimates pooled over runs do not have.
# - **Beam search and best-of-N** are optimisers: their points pile up on the reward's maximum (mean reward near
#   0) and the EMD shows the lost spread. **SVDD** with the model's $\alpha$ is close to a sampler but
#   over-tilts, and returns no evidence.
# - **Guidance** (DPS, MPGD, FreeDoM) follows one chain with a gradient nudge and has no weights. DPS at
#   $\zeta = 1$ squeezes the modes into thin stripes; MPGD's step on $\hat x_0$ is $(\zeta/\sqrt{\bar\alpha})\nabla r$, so
#   for $r = -y^2$ it sends $y \to y(1 - 2\zeta/\sqrt{\bar\alpha})$, a reflection or worse at $\zeta = 1$: it never
#   settles in the middle row. Guidance scales must be tuned per reward; SMC's gradient proposal uses the same
#   gradient inside a trust region and corrects for it in its weights.

# %% [markdown]
# ## Checks
#
# **Exactness, against the chain.** The engines target the tilt of the 50-step chain's law, which
# `Importance(model, M)` with $M = 50{,}000$ pretrained draws estimates with little error: a self-normalised
# estimate $\sum_m \bar w_m r(x_m)$ with delta-method standard error. For each weighted engine, its runs pooled by
# their evidence, $\sum_r \hat Z_r \sum_i \bar W_{ri} r(x_{ri}) / \sum_r \hat Z_r$ (consistent in $R$ at fixed $N$;
# delta-method standard error over runs), must agree with it within $z = 4$ standard errors of the difference
# (6 engines: a family-wise false-alarm rate of about $6 \times 6 \cdot 10^{-5}$).
#
# **Power.** The EMD must be able to see a wrong law: the pretrained model's points must be more than 4 standard
# errors above the floor.

# %%
reference = Importance(model, 50_000, progress=False).run(seed=4)
w = reference.log_weights.double().exp()
r_ref = float((w * reference.rewards["r"]).sum())
r_ref_se = float(((w * (reference.rewards["r"] - r_ref)) ** 2).sum().sqrt())
print(f"chain reference: E_tar[r] = {r_ref:.4f} ± {r_ref_se:.4f} (importance ESS {float(reference.ess):.0f} of 50,000)")


def pooled_mean(res, f):
    """Σ_r Ẑ_r Σ_i W_ri f_ri / Σ_r Ẑ_r over runs, and its delta-method standard error."""
    u = (res.log_evidence - res.log_evidence.max()).exp()
    phi = (res.log_weights.double().exp() * f).sum(-1)
    est = float((u * phi).sum() / u.sum())
    n = len(u)
    return est, float(((u * (phi - est)) ** 2).sum().mul(n / (n - 1)).sqrt() / u.sum())


weighted_engines = ["importance sampling", "SMC, bootstrap", "SMC, gradient", "DAS", "FK steering", "nested IS (4 × 4)"]
for name in weighted_engines:
    est, se = pooled_mean(results[name], results[name].rewards["r"].double())
    z = (est - r_ref) / math.hypot(se, r_ref_se)
    print(f"{name:<22} pooled E_tar[r] = {est:.4f} ± {se:.4f}   z = {z:+.2f}")
    assert abs(z) <= 4, (name, est, se, r_ref, r_ref_se)

pre = next(r for r in rows if r["engine"] == "pretrained")
print(f"pretrained: EMD − floor = {pre['emd'] - floor:.3f} ± {pre['gap_se']:.3f}")
assert pre["emd"] - floor > 4 * pre["gap_se"]
