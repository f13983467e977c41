# %% [markdown]
# # 06 · Online black-box optimisation with a query budget
#
# When the true reward is a black box — an assay, a rater, a slow simulator — it can only be *queried*, and every
# query costs. `tilted.online.optimize` spends a budget of $B$ queries per round:
#
# 1. **Round 0** draws $B$ points from the pretrained model $p_\theta$ and queries the black box.
# 2. **Round $r \ge 1$** fits a surrogate with an uncertainty estimate to every finite $(x, y)$ so far, and draws the next
#    batch from the tilted target of its optimistic value $\hat r^+_r = \mu_r + b_r$ (mean plus an uncertainty bonus),
#
# $$p_r(x) \propto p_\theta(x)\, \exp\!\big(\hat r^+_r(x)/\alpha\big),$$
#
# with an engine (default: SMC with the gradient proposal, 16 particles per query, one draw from each of $B$ runs).
#
# $p_r$ is the maximiser of $\mathbb{E}_p[\hat r^+_r] - \alpha\,\mathrm{KL}(p\,\|\,p_\theta)$ (the Gibbs variational principle). The
# surrogate is only trustworthy where queries were made, and an unconstrained maximiser of $\hat r^+$ goes where it
# is most wrong; the KL term charges $\alpha \log(p/p_\theta)$ for every move away from the pretrained model, so queries stay
# where $p_\theta$ has mass. The bonus $b_r$ (here a bootstrap ensemble's spread, an upper confidence bound) makes untested
# but plausible regions attractive and shrinks where queries have been made.

# %%
import tilted  # first: tilted imports tqdm quietly (through pyro it warns in a kernel without ipywidgets)

# isort: split
import math
import tempfile

import matplotlib.pyplot as plt
import torch

from tilted.distributions import GaussianDiffusion, GaussianMixture
from tilted.online import Ensemble, optimize

torch.set_num_threads(1)  # tensors of a toy: one thread is the fastest
print("tilted", tilted.__version__)

# %% [markdown]
# ## A pretrained model and a black box that disagree
#
# The model puts 90 % of its mass at the origin and 10 % at $(2, 2)$; the black box peaks at $(2, 2)$,
# $f(x) = e^{-\|x - (2, 2)\|^2}$. It also **fails** on about 10 % of the queries (it returns NaN), as a real assay
# might: failed queries are recorded as NaN, kept, and left out of the fit. The wrapper counts every query asked.

# %%
prior = GaussianDiffusion(
    data=GaussianMixture(torch.tensor([[0.0, 0.0], [2.0, 2.0]]), 0.25, weights=torch.tensor([0.9, 0.1])), num_steps=20
)


class Assay:
    """f(x) = exp(−‖x − (2, 2)‖²), NaN for about 10 % of the queries (a fixed pseudo-random pattern); counts queries."""

    def __init__(self, seed=0):
        self.gen, self.asked = torch.Generator().manual_seed(seed), 0

    def __call__(self, x):
        self.asked += len(x)
        y = torch.exp(-(x.double() - 2).pow(2).sum(-1))
        return y.masked_fill(torch.rand(len(x), generator=self.gen) < 0.1, math.nan)


# %% [markdown]
# ## The loop
#
# 5 rounds of 16 queries (80 in all), $\alpha = 0.05$, a 5-head bootstrap ensemble with UCB bonus $\kappa = 1$. With
# `store=` every round is on disk (the batch before the oracle is called, the answers after), so an interrupted run
# resumes without asking anything twice.

# %%
rounds, batch = 5, 16
folder = tempfile.TemporaryDirectory(prefix="tilted-online-")  # removed at the end
store = folder.name
assay = Assay(seed=0)
history = optimize(
    prior,
    assay,
    rounds=rounds,
    batch_size=batch,
    temperature=0.05,
    seed=0,
    surrogate=Ensemble(epochs=200),
    store=store,
    progress=False,
)
print("queries after each round:", history.queries.tolist(), "  asked:", assay.asked)
print("best value so far:       ", history.best().numpy().round(3))
print("mean of each round:      ", history.mean().numpy().round(3))
print("failed queries per round:", [int(torch.isnan(y).sum()) for y in history.y])
print("best point:              ", history.best_x().numpy().round(3))

# %% [markdown]
# ## Against random search with the same budget
#
# Random search spends the same 80 queries on draws from $p_\theta$ (no failures, to be generous to it).

# %%
random_x = prior.sample((rounds * batch,), generator=1)
random_y = torch.exp(-(random_x.double() - 2).pow(2).sum(-1))
random_best = torch.cummax(random_y, 0).values[batch - 1 :: batch]

fig, axes = plt.subplots(1, 2, figsize=(12, 4))
history.plot(ax=axes[0])
q = history.queries.numpy()
axes[0].plot(q, random_best.numpy(), "--", color="grey", label="random search: best so far")
axes[0].axhline(float(random_y.mean()), ls=":", color="grey", label="random search: mean")
axes[0].legend(fontsize=8)
axes[0].set_title("black-box value against queries")

grid = torch.linspace(-1.5, 3.5, 101)
gx, gy = torch.meshgrid(grid, grid, indexing="xy")
points = torch.stack([gx, gy], -1).reshape(-1, 2)
surrogate = history.surrogates[-1]  # fitted before the last round
with torch.no_grad():
    mean, bonus = surrogate.predict(points)
axes[1].contourf(gx, gy, (mean + bonus).reshape(101, 101).numpy(), levels=20, cmap="Greys", alpha=0.6)
axes[1].contour(
    gx,
    gy,
    torch.exp(-(points - 2).pow(2).sum(-1)).reshape(101, 101).numpy(),
    levels=[0.25, 0.5, 0.75],
    colors="k",
    linewidths=0.7,
)
colors = plt.cm.viridis(torch.linspace(0, 1, rounds).numpy())
for r, (x, y) in enumerate(zip(history.x, history.y, strict=True)):
    ok = torch.isfinite(y)
    axes[1].scatter(x[ok, 0], x[ok, 1], s=14, color=colors[r], label=f"round {r}")
    axes[1].scatter(x[~ok, 0], x[~ok, 1], s=30, marker="x", color=colors[r])
axes[1].set_title("queries by round (× failed)\nshading: r̂⁺ before the last round; lines: the black box", fontsize=10)
axes[1].set_aspect("equal")
axes[1].legend(fontsize=7, loc="lower right")
fig.tight_layout()

# %% [markdown]
# Round 0 queries mostly the origin (where $p_\theta$ is); from round 1 on the batches move to the small mode at $(2, 2)$,
# where the black box is high. The surrogate's optimistic value keeps rising toward the lower right, where it has no
# data and extrapolates; the queries do not follow it there, because $p_\theta$ has no mass there and the KL term charges
# for leaving it.

# %% [markdown]
# ## Resuming from the store
#
# Running `optimize` again with the same `store` reads every stored round back. With the same number of rounds it asks
# nothing; with one more round it asks exactly one batch.

# %%
again = Assay(seed=0)
resumed = optimize(
    prior,
    again,
    rounds=rounds,
    batch_size=batch,
    temperature=0.05,
    seed=0,
    surrogate=Ensemble(epochs=200),
    store=store,
    progress=False,
)
print(f"resumed {resumed.resumed} rounds, asked {again.asked} new queries")
longer = Assay(seed=0)
extended = optimize(
    prior,
    longer,
    rounds=rounds + 1,
    batch_size=batch,
    temperature=0.05,
    seed=0,
    surrogate=Ensemble(epochs=200),
    store=store,
    progress=False,
)
print(f"one more round: asked {longer.asked} new queries; best so far {extended.best().numpy().round(3)}")

# %% [markdown]
# ## Checks
#
# 1. **The loop beats random search.** The mean black-box value of the last round's batch (finite queries only) must
#    exceed the mean of random search's 80 queries by more than 4 standard errors of the difference (each from its
#    sample's spread).
# 2. **Failures are kept, not dropped.** Every query is in the history: 16 per round, NaN where the black box failed, as
#    many NaN as the black box returned.
# 3. **Resuming asks nothing twice**: the same rounds again ask 0 queries and give back the same values; one more round
#    asks exactly 16.

# %%
last = history.y[-1][torch.isfinite(history.y[-1])]
diff = float(last.mean() - random_y.mean())
se = math.sqrt(float(last.var()) / len(last) + float(random_y.var()) / len(random_y))
print(f"last round mean {float(last.mean()):.3f} vs random search {float(random_y.mean()):.3f}: {diff / se:+.1f} s.e.")
assert diff > 4 * se

assert [len(y) for y in history.y] == [batch] * rounds and assay.asked == rounds * batch
replay = Assay(seed=0)
nan_expected = sum(int(torch.isnan(replay(x)).sum()) for x in history.x)
assert sum(int(torch.isnan(y).sum()) for y in history.y) == nan_expected > 0

assert resumed.resumed == rounds and again.asked == 0
assert all(torch.allclose(a, b, equal_nan=True) for a, b in zip(history.y, resumed.y, strict=True))
assert longer.asked == batch and extended.num_rounds == rounds + 1
folder.cleanup()
