"""Diffusion tree sampling and search (Jain et al., 2025): Monte-Carlo tree search over the denoising chain.

A tree is grown over the chain x_K → … → x_0 of the pretrained model. A node is a state x_k at level
k; its children are draws from the pretrained kernel p_k(· | x_k); its leaves are clean samples x_0,
scored by the exact log-tilt ψ(x_0) = Σ_j r_j(x_0)/α_j. Every node carries a *soft value*, the
log-mean-exp of its children's values,

    v(x_0) = ψ(x_0),        v(x_k) = log (1/M) Σ_{c ∈ children(x_k)} exp(v(c)),

a Monte-Carlo estimate of V_k(x_k) = log E_{p_θ}[exp ψ(x_0) | x_k] (README, Guarantees; in units of the tilt),
refined as the tree grows. An iteration (run as ``num_parallel`` descents per run, batched):

1. **select**: from the root, step into a child by the selection rule, until a node is to grow;
2. **expand**: draw one new child x_{k-1} ~ p_k(· | x_k) (progressive widening decides when);
3. **roll out**: run the pretrained sampler from the new child down to x_0, *keeping every state of
   the roll-out in the tree* (each gets one child), so all leaves are at level 0;
4. **evaluate** ψ(x_0) exactly (never a Tweedie proxy) and **back up** v and the visit counts along
   the path.

``mode="sample"`` (DTS) selects children with probability ∝ exp(v(c)) and returns draws from the
tree's descent law (asymptotically the tilted target); ``mode="search"`` (DTS★) selects by a UCT rule
on the soft values and returns the best leaves found.

Roots. Gaussian paths start from x_K ~ N(0, I), which has no parent: the root is a *virtual* node at
level K + 1 whose children are draws of x_K (so the tree also searches over initial noise). A masked
model starts from the all-mask sequence: the root is that state at level K.

Cost. Every node at a level k ≥ 1 makes one denoiser call, once, when it is created (its x̂_0 is kept
for all later expansions, and gives the kernel moments); every leaf makes one reward call per factor.
An expansion at a node of level k therefore costs k − 1 denoiser calls and F reward calls (plus, for a
masked model, one call per run for the root's x̂_0). Nothing else is evaluated: the search uses no
intermediate value estimates, so rewards need no gradient and are only called on clean samples.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch

from tilted._progress import progress_bar
from tilted._random import Seed, as_generator
from tilted.distributions.gaussian import GaussianPath
from tilted.distributions.masked import MaskedDiffusion
from tilted.errors import ModelError
from tilted.inference.budget import Budget, BudgetError, as_budget
from tilted.inference.candidates import expand
from tilted.inference.result import Counts, Result, collect
from tilted.inference.values import Values
from tilted.inference.walk import ChainEngine, non_negative, positive_int
from tilted.plan import Plan, read_plan

F64 = torch.float64
MODES = ("sample", "search")
SELECTIONS = ("boltzmann", "uct", "prior")


class Tree:
    """The search trees of R runs in one node store: flat arrays indexed by node id.

    Attributes (per node)
    ---------------------
    level
        k (K + 1 for the virtual root of a Gaussian path).
    parent, run
        The parent's id (−1 at a root) and the run the node belongs to.
    children
        Child ids, in creation order.
    visits
        n, the number of leaves below the node (= roll-outs that passed through it).
    value
        The soft value v (ψ at a leaf), float64.
    fixed
        Whether the step from the node is deterministic (at most one child).
    open
        Whether the node can still take work: it can grow, or a child is open.
    x, x0
        The state and the denoiser's x̂_0 (levels ≥ 1); ``rewards`` (n, F) the exact rewards of leaves.
    """

    def __init__(self, max_children: int | None, capacity: int = 1024):
        self.max_children = max_children
        self.size = 0
        self.capacity = capacity
        self.level = np.zeros(capacity, np.int64)
        self.parent = np.full(capacity, -1, np.int64)
        self.run = np.zeros(capacity, np.int64)
        self.visits = np.zeros(capacity, np.int64)
        self.pending = np.zeros(capacity, np.int64)
        self.value = np.zeros(capacity, np.float64)
        self.fixed = np.zeros(capacity, bool)
        self.open = np.zeros(capacity, bool)
        self.children: list[list[int]] = []
        self.roots: list[int] = []
        self.x: torch.Tensor | None = None
        self.x0: torch.Tensor | None = None
        self.rewards: torch.Tensor | None = None

    # -- storage ------------------------------------------------------------------------------
    def _reserve(self, n: int) -> None:
        need = self.size + n
        if need <= self.capacity:
            return
        cap = max(need, 2 * self.capacity)
        for name in ("level", "parent", "run", "visits", "pending", "value", "fixed", "open"):
            old = getattr(self, name)
            new = np.zeros(cap, old.dtype) if name != "parent" else np.full(cap, -1, old.dtype)
            new[: self.size] = old[: self.size]
            setattr(self, name, new)
        for name in ("x", "x0", "rewards"):
            old = getattr(self, name)
            if old is not None:
                new = old.new_zeros((cap,) + old.shape[1:])
                new[: self.size] = old[: self.size]
                setattr(self, name, new)
        self.capacity = cap

    @staticmethod
    def _store(store: torch.Tensor | None, ids: np.ndarray, values: torch.Tensor, capacity: int) -> torch.Tensor:
        if store is None:
            store = values.new_zeros((capacity,) + values.shape[1:])
        store[torch.as_tensor(ids, device=store.device)] = values
        return store

    def add(self, parents, level: int, runs, x: torch.Tensor, fixed) -> np.ndarray:
        """Add one node per parent (−1: a root) at ``level`` with states x (n, *E); return their ids."""
        n = len(runs)
        self._reserve(n)
        ids = np.arange(self.size, self.size + n)
        self.size += n
        self.level[ids] = level
        self.parent[ids] = parents
        self.run[ids] = runs
        self.visits[ids] = 0
        self.value[ids] = 0.0
        self.fixed[ids] = fixed
        self.open[ids] = level > 0
        self.children.extend([] for _ in range(n))
        for i, p in zip(ids.tolist(), np.asarray(parents).tolist(), strict=True):
            if p >= 0:
                self.children[p].append(i)
        self.x = self._store(self.x, ids, x, self.capacity)
        return ids

    def set_predictions(self, ids: np.ndarray, x0: torch.Tensor) -> None:
        self.x0 = self._store(self.x0, ids, x0, self.capacity)

    def set_leaves(self, ids: np.ndarray, psi: np.ndarray, rewards: torch.Tensor) -> None:
        """Leaves get v = ψ, one visit and their exact rewards (n, F)."""
        self.value[ids] = psi
        self.visits[ids] = 1
        self.rewards = self._store(self.rewards, ids, rewards, self.capacity)

    # -- structure ----------------------------------------------------------------------------
    def can_grow(self, node: int) -> bool:
        """A node at level ≥ 1 below its cap (1 for a deterministic step), counting children promised."""
        if self.level[node] == 0:
            return False
        cap = 1 if self.fixed[node] else self.max_children
        return cap is None or len(self.children[node]) + self.pending[node] < cap

    def refresh(self, node: int) -> None:
        """Recompute the soft value and the open flag of a node from its children."""
        kids = self.children[node]
        if kids:
            v = self.value[kids]
            top = v.max()
            self.value[node] = top + math.log(np.exp(v - top).mean())
        self.open[node] = self.can_grow(node) or bool(self.open[kids].any())

    def refresh_path(self, path) -> None:
        for node in reversed(path):
            self.refresh(node)

    def num_children(self) -> np.ndarray:
        return np.fromiter((len(c) for c in self.children), np.int64, self.size)

    def descent_log_probs(self) -> np.ndarray:
        """log P(reach node) when descending from its root with P(c | x) ∝ exp(v(c)), for every node.

        Each edge contributes v(c) − log Σ_{c'} exp(v(c')) = v(c) − v(x) − log M(x); along a path the
        terms telescope, so a leaf's log-probability is ψ(x_0) − v(root) − Σ_{ancestors} log M.
        """
        n = self.size
        logp = np.zeros(n)
        parent = self.parent[:n]
        level = self.level[:n]
        log_m = np.log(np.maximum(self.num_children(), 1))
        for lvl in range(int(level.max()) - 1, -1, -1):
            ids = np.nonzero((level == lvl) & (parent >= 0))[0]
            p = parent[ids]
            logp[ids] = logp[p] + self.value[ids] - self.value[p] - log_m[p]
        return logp

    def leaves(self, run: int) -> np.ndarray:
        """Ids of the leaves (x_0) of one run, in creation order."""
        n = self.size
        return np.nonzero((self.level[:n] == 0) & (self.run[:n] == run))[0]

    def nodes(self, run: int) -> int:
        """The number of nodes of one run's tree (its virtual root included)."""
        return int((self.run[: self.size] == run).sum())


class TreeSearch(ChainEngine):
    """Diffusion tree sampling (DTS, ``mode="sample"``) and search (DTS★, ``mode="search"``), anytime.

    The engine grows one tree per run (module docstring) until the next iteration would overrun the
    budget, then returns N draws from the tree (sampling) or its N best distinct leaves (search).

    Update rule. An iteration runs P = ``num_parallel`` descents in every run before any network call.
    A descent enters the root and, at each node x with n visits and M children (counting children
    promised by earlier descents of the iteration):

    - **expand** when the node can grow and M < ⌈(n + 1)^β⌉ (progressive widening, β = ``widening``;
      at most ``max_children`` children, and one at a deterministic step: σ_k = 0, or a masked
      sequence with no mask left), or when none of its children can take more work;
    - otherwise **select** one of the children that can: with probability ∝ exp(v(c)) (sample mode)
      or the maximiser of v(c) + c_uct √(log n / n_c) (search mode, c_uct = ``exploration``).

    New children never need a prior value: a child exists only together with its roll-out, so it has
    one leaf and v(c) = ψ of that leaf from its creation on; the prior enters through the draw itself
    (a new child is a fresh draw from p_k(· | x_k)), which progressive widening interleaves with the
    Boltzmann (or UCT) choice among the existing ones. The new children of all R·P descents are then
    rolled out together, level by level (one batched denoiser call per level), every roll-out state
    is kept as a node, the R·P leaves are scored in one batched reward call, and v and n are backed up.
    The iteration's cost is known exactly from the descents (a new child at level j costs j denoiser
    calls and F reward calls), so the engine stops *before* an iteration the budget cannot cover.

    Targets. Sample mode: the tilted target p_tar(x_0) ∝ p_θ(x_0) exp ψ(x_0), asymptotically as the
    budget grows (Notes). Search mode: nothing — an optimiser of ψ that returns the best x_0 it has
    evaluated; not guaranteed to beat best-of-N, though sharing the prefixes of the chain makes its
    leaves cheaper (a leaf costs k − 1 denoiser calls when it branches at level k, not K).

    Parameters
    ----------
    model
        A Pyro model with one sequential site (a :class:`~tilted.distributions.gaussian.GaussianPath`
        or :class:`~tilted.distributions.MaskedDiffusion`, without group dimension) and factors.
    num_particles
        N, particles returned per run: draws from the tree (sample mode, with replacement) or its N
        best distinct leaves, best first (search mode; repeated in order, with a warning, when the
        tree has fewer).
    mode
        ``"sample"`` (DTS) or ``"search"`` (DTS★).
    budget
        Denoiser calls (int) or a :class:`~tilted.inference.budget.Budget` (required; anytime).
    max_children
        A cap on the children of any node (``None``, default: progressive widening alone). A finite
        cap makes the tree finite: the search then ends when it is complete, and sampling is no longer
        asymptotically exact (the root needs unboundedly many children).
    widening
        β ∈ (0, 1]: a node with n visits may hold ⌈(n + 1)^β⌉ children (default 0.5). β = 1 expands
        the root at every descent, which is importance sampling with the prior as proposal.
    exploration
        c_uct ≥ 0 of the UCT rule, in units of ψ (default 1.0); used by ``selection="uct"`` only.
    selection
        How a descent chooses among existing children while the tree grows: ``"boltzmann"``
        (∝ exp v(c), DTS; the default in sample mode), ``"uct"`` (DTS★; the default in search mode)
        or ``"prior"`` (uniformly, i.e. by the pretrained kernel's own draws: the tree's shape then
        does not depend on the rewards, and the descent law is plain nested importance sampling with
        no adaptivity bias; compute is not steered towards high values).
    num_parallel
        P ≥ 1 descents per run and iteration (default 8): the batch of every denoiser call is R·P.
    num_runs, batch_size, progress
        As for :class:`~tilted.inference.walk.ChainEngine` (the bar counts iterations).

    Notes
    -----
    *The descent law is self-normalised nested importance sampling.* Let the tree be fixed, v computed
    by the backups, and descend with P(c | x) = exp(v(c)) / Σ_{c'} exp(v(c')). Since
    Σ_{c'} exp(v(c')) = M(x) exp(v(x)), the probability of reaching a leaf ℓ telescopes:

        P(ℓ) = Π_{edges x → c} exp(v(c) − v(x)) / M(x) = w_ℓ exp ψ(ℓ) / exp v(root),
        w_ℓ = Π_{ancestors a of ℓ} 1/M(a),      exp v(root) = Σ_ℓ w_ℓ exp ψ(ℓ).

    Every child of a node x_k is an independent draw from p_k(· | x_k), so Σ_ℓ w_ℓ δ_ℓ is the
    hierarchical Monte-Carlo estimate of p_θ(x_0) (each node averages its children's estimates of
    the law below it; for a fixed tree shape it is unbiased), and the descent law is this estimate
    reweighted by exp ψ and normalised: self-normalised importance sampling of p_tar, with
    exp v(root) an estimate of Z (reported as ``config["root_value"]`` = v(root), per run). At each
    node, the choice ∝ exp(v(c)) among M draws from p_k is the sampling-importance-resampling
    approximation of the optimal kernel p*_k(c | x) = p_k(c | x) exp(V_{k-1}(c) − V_k(x)), with V
    replaced by its tree estimate v. As the budget grows, progressive widening gives the root
    unboundedly many children (⌈n^β⌉) and the visits of all but a vanishing fraction of the nodes
    below it grow without bound, so each v → V and the weighted measure converges to p_θ: the descent
    law converges to p_tar (DTS, Jain et al. 2025). The selection rule used *while growing* the tree
    only decides where leaves are added; it does not enter the identity above. At a finite budget the
    law is biased: SNIS bias O(1/n), plus, with value-driven selection, the adaptive tree shape (a node
    whose first roll-outs score low is visited, hence widened, less, so its low estimate persists; v
    and log Ẑ are biased downwards). Measured on a masked target with 27 states (K = 4): with
    ``"boltzmann"`` the pooled law of 32 trees of ≈ 1,200 leaves is off by TV ≈ 0.05 and v(root) by
    −0.06; with ``"prior"`` by TV ≈ 0.03 (the Monte-Carlo noise) and +0.003, at equal per-tree error.

    Search mode keeps the same tree and backups; UCT on the soft values concentrates the roll-outs
    below high-value nodes, and the result is the set of evaluated leaves ranked by their exact ψ.

    Result: unweighted particles (uniform ``log_weights``, NaN ``log_evidence``, exact rewards:
    :mod:`tilted.inference.walk`), a trace of K + 1 unweighted rows, and in ``config`` the mode,
    budget, number of iterations, tree sizes and v(root). The trees stay on the engine as
    :attr:`tree` (a :class:`Tree`) after :meth:`run`; :attr:`iteration_counts` lists what every
    iteration spent.
    """

    processes = (GaussianPath, MaskedDiffusion)

    def __init__(
        self,
        model,
        num_particles: int,
        *,
        mode: str = "sample",
        budget: int | Budget | dict,
        max_children: int | None = None,
        widening: float = 0.5,
        exploration: float = 1.0,
        selection: str | None = None,
        num_parallel: int = 8,
        num_runs=None,
        batch_size=None,
        progress=None,
    ):
        super().__init__(model, num_particles, num_runs=num_runs, batch_size=batch_size, progress=progress)
        if mode not in MODES:
            raise ModelError(f"mode must be one of {MODES}, got {mode!r}")
        if budget is None:
            raise ModelError("TreeSearch is anytime: give budget= (denoiser calls, or a tilted.inference.Budget)")
        if selection is None:
            selection = "boltzmann" if mode == "sample" else "uct"
        if selection not in SELECTIONS:
            raise ModelError(f"selection must be one of {SELECTIONS} or None, got {selection!r}")
        positive_int("max_children", max_children, optional=True)
        positive_int("num_parallel", num_parallel)
        beta = non_negative("widening", widening)
        if not 0 < beta <= 1:
            raise ModelError(f"widening must be in (0, 1], got {widening!r}")
        self.mode, self.selection = mode, selection
        self.budget = as_budget(budget)
        self.max_children = max_children
        self.widening = beta
        self.exploration = non_negative("exploration", exploration)
        self.num_parallel = num_parallel

    # -- checks --------------------------------------------------------------------------------
    def check(self, plan: Plan) -> None:
        super().check(plan)
        if plan.grouped:
            raise ModelError(
                "TreeSearch runs processes without a group dimension; run one search per prompt (or use num_runs)"
            )
        F, masked = len(plan.factors), isinstance(plan.process, MaskedDiffusion)
        free = {"denoiser_calls": masked and plan.process.num_steps == 1, "reward_calls": F == 0}
        if all(free[name] for name, limit in self.budget.as_dict().items() if limit is not None):
            raise BudgetError(
                f"the budget {self.budget.as_dict()} limits nothing a tree iteration spends (K = "
                f"{plan.process.num_steps}, {F} factors); limit another count"
            )

    # -- the tree ------------------------------------------------------------------------------
    def _fixed(self, process, level: int, x: torch.Tensor) -> np.ndarray:
        """Whether the step from each state x (n, *E) at ``level`` is deterministic."""
        n = x.shape[0]
        if level == 0 or level > process.num_steps:
            return np.zeros(n, bool)
        if isinstance(process, MaskedDiffusion):
            return (x != process.mask_id).all(-1).cpu().numpy()
        return np.full(n, process.is_deterministic(level))

    def _allowed(self, visits: int) -> int:
        return math.ceil((visits + 1) ** self.widening - 1e-12)

    def _select(self, tree: Tree, node: int, kids: list[int], u: float) -> int:
        if self.selection == "prior":
            return kids[min(int(u * len(kids)), len(kids) - 1)]
        v = tree.value[kids]
        if self.selection == "boltzmann":
            p = np.exp(v - v.max()).cumsum()
            return kids[min(int(np.searchsorted(p, u * p[-1], side="right")), len(kids) - 1)]
        n = tree.visits[kids]
        score = v + self.exploration * np.sqrt(math.log(max(tree.visits[node], 1)) / n)
        return kids[int(np.argmax(score))]

    def _descend(self, tree: Tree, root: int, u: np.ndarray) -> tuple[int, list[int]]:
        """One descent from ``root``: (the node to expand, the path to it); visits counted on the way."""
        node, path = root, []
        while True:
            path.append(node)
            before = int(tree.visits[node])
            tree.visits[node] += 1
            kids = [c for c in tree.children[node] if tree.open[c]]
            grow = tree.can_grow(node)
            held = len(tree.children[node]) + int(tree.pending[node])
            if grow and (not kids or held < self._allowed(before)):
                tree.pending[node] += 1
                tree.refresh_path(path)  # the promised child may close the node
                return node, path
            node = self._select(tree, node, kids, float(u[min(len(path) - 1, len(u) - 1)]))

    def _init(self, plan: Plan, values: Values, R: int) -> Tree:
        process = plan.process
        tree = Tree(self.max_children)
        x = process.draw_initial((R,))
        if isinstance(process, MaskedDiffusion):
            K = process.num_steps
            roots = tree.add(np.full(R, -1), K, np.arange(R), x, self._fixed(process, K, x))
            tree.set_predictions(roots, values.predict(x[None], K)[0])
        else:
            roots = tree.add(np.full(R, -1), process.num_steps + 1, np.arange(R), x, np.zeros(R, bool))
        tree.roots = roots.tolist()
        return tree

    def _iterate(self, plan: Plan, values: Values, tree: Tree, generator) -> Counts | None:
        """One iteration in every run; ``None`` (and nothing spent) when the budget cannot cover it."""
        process, R, P = plan.process, len(tree.roots), self.num_parallel
        depth = process.num_steps + 1
        u = torch.rand((R, P, depth), generator=generator, dtype=F64, device=process.device).cpu().numpy()
        targets, paths = [], []
        for r, root in enumerate(tree.roots):
            for p in range(P):
                if not tree.open[root]:
                    break
                node, path = self._descend(tree, root, u[r, p])
                targets.append(node)
                paths.append(path)
        if not targets:
            return None
        cost = Counts(
            denoiser_calls=int(sum(tree.level[t] - 1 for t in targets)),
            reward_calls=len(plan.factors) * len(targets),
        )
        if not self.budget.allows(self.counts, cost):
            for path in paths:
                tree.visits[path] -= 1
                tree.pending[path[-1]] = 0
            for path in paths:
                tree.refresh_path(path)
            return None
        spent = Counts(**self.counts.as_dict())
        self._grow(plan, values, tree, targets, paths, generator)
        done = Counts(**{k: v - getattr(spent, k) for k, v in self.counts.as_dict().items()})
        if done != cost:  # the bookkeeping of the budget rests on this identity
            raise RuntimeError(f"tree iteration spent {done.as_dict()}, expected {cost.as_dict()}")
        return cost

    def _grow(self, plan: Plan, values: Values, tree: Tree, targets, paths, generator) -> None:
        """Expand every target, roll the new children out to x_0 (batched per level), score, back up."""
        process = plan.process
        targets = np.asarray(targets, np.int64)
        top = int(tree.level[targets].max())
        new_nodes: list[np.ndarray] = []
        arrivals = np.zeros(0, np.int64)  # nodes created at the current level, without x̂_0 yet
        leaves = np.zeros(0, np.int64)
        for k in range(top, 0, -1):
            if arrivals.size:
                x = tree.x[torch.as_tensor(arrivals)]
                tree.set_predictions(arrivals, values.predict(x[None], k)[0])
            stepping = np.concatenate([targets[tree.level[targets] == k], arrivals])
            if not stepping.size:
                arrivals = np.zeros(0, np.int64)
                continue
            idx = torch.as_tensor(stepping)
            if k > process.num_steps:  # the virtual root: x_K ~ N(0, I)
                child = process.draw_initial((1, stepping.size), generator)[0]
            else:
                child = expand(process, tree.x[idx][None], tree.x0[idx][None], k, 1, generator)[0, :, 0]
            ids = tree.add(stepping, k - 1, tree.run[stepping], child, self._fixed(process, k - 1, child))
            tree.pending[stepping] = 0
            if k == 1:
                leaves = ids
            else:
                new_nodes.append(ids)
            arrivals = ids
        x0 = tree.x[torch.as_tensor(leaves)]
        rewards = values.rewards(x0[None])[:, 0]  # (F, n)
        tree.set_leaves(leaves, values.score(rewards[:, None])[0].cpu().numpy(), rewards.T)
        created = np.concatenate(new_nodes) if new_nodes else np.zeros(0, np.int64)
        tree.visits[created] = 1
        stale = set(created.tolist())
        for path in paths:
            stale.update(path)
        for node in sorted(stale, key=lambda i: tree.level[i]):
            tree.refresh(node)

    # -- the loop ------------------------------------------------------------------------------
    def run(self, *args, seed: Seed = None, **kwargs) -> Result:
        """Grow the trees within the budget on ``model(*args, **kwargs)``; return a :class:`Result`."""
        plan = read_plan(self.model, *args, **kwargs)
        self.check(plan)
        generator = as_generator(seed, plan.process.device)
        R = plan.runs(self.num_runs)
        self.counts = Counts()
        values = Values(plan, self.counts, self.batch_size, None, generator)
        if isinstance(plan.process, MaskedDiffusion) and not self.budget.allows(Counts(denoiser_calls=R)):
            raise BudgetError(f"the budget {self.budget.as_dict()} does not cover the roots' x̂_0 ({R} calls)")
        self.tree = tree = self._init(plan, values, R)
        self.iteration_counts: list[Counts] = []
        with progress_bar(progress=self.progress, desc=type(self).__name__, unit="it", leave=False) as bar:
            while True:
                cost = self._iterate(plan, values, tree, generator)
                if cost is None:
                    break
                self.iteration_counts.append(cost)
                bar.update(1)
        if not self.iteration_counts:
            R_, P, K = R, self.num_parallel, plan.process.num_steps
            first = Counts(denoiser_calls=R_ * P * K, reward_calls=R_ * P * len(plan.factors))
            raise BudgetError(
                f"the budget {self.budget.as_dict()} does not cover one tree iteration (the first costs "
                f"{first.as_dict()}); raise the budget or lower num_parallel / num_runs"
            )
        ids = self._sample(tree, generator) if self.mode == "sample" else self._best(tree)
        index = torch.as_tensor(ids)
        x = tree.x[index]  # (R, N, *E)
        rewards = tree.rewards[index].movedim(-1, 0)
        N, device = self.num_particles, x.device
        result = collect(
            plan,
            x,
            rewards,
            torch.full((R, N), -math.log(N), dtype=F64, device=device),
            torch.full((R,), math.nan, dtype=F64, device=device),
            [self.info(plan, R) for _ in range(plan.process.num_steps + 1)],
            self.counts,
            self.config(),
            batched=self.num_runs is not None,
        )
        result.config.update(
            iterations=len(self.iteration_counts),
            tree_nodes=[tree.nodes(r) for r in range(R)],
            tree_leaves=[int(tree.leaves(r).size) for r in range(R)],
            root_value=[float(tree.value[root]) for root in tree.roots],
            seed=seed if isinstance(seed, int) else None,
        )
        return result

    def _sample(self, tree: Tree, generator) -> np.ndarray:
        """N leaf ids per run (R, N), drawn from the descent law P(c | x) ∝ exp(v(c))."""
        logp = tree.descent_log_probs()
        R = len(tree.roots)
        per_run = [tree.leaves(r) for r in range(R)]
        width = max(ids.size for ids in per_run)
        table = torch.full((R, width), -math.inf, dtype=F64)
        ids = np.zeros((R, width), np.int64)
        for r, leaf in enumerate(per_run):
            table[r, : leaf.size] = torch.from_numpy(logp[leaf])
            ids[r, : leaf.size] = leaf
        probs = torch.softmax(table, -1)
        if generator is not None:
            probs = probs.to(generator.device)
        pick = torch.multinomial(probs, self.num_particles, replacement=True, generator=generator).cpu().numpy()
        return np.take_along_axis(ids, pick, 1)

    def _best(self, tree: Tree) -> np.ndarray:
        """The N best distinct leaves of each run (R, N), by exact ψ, best first."""
        out = []
        for r in range(len(tree.roots)):
            leaf = tree.leaves(r)
            order = leaf[np.argsort(-tree.value[leaf], kind="stable")]
            x = tree.x[torch.as_tensor(order)].reshape(order.size, -1)
            _, inverse = torch.unique(x, dim=0, return_inverse=True)
            first = {}
            for i, key in enumerate(inverse.tolist()):
                first.setdefault(key, i)
            distinct = order[sorted(first.values())]
            if distinct.size < self.num_particles:
                warnings.warn(
                    f"run {r}: the tree has {distinct.size} distinct leaves for {self.num_particles} particles; "
                    "the best are repeated (raise the budget or lower num_particles)",
                    stacklevel=3,
                )
                distinct = np.resize(distinct, self.num_particles)
            out.append(distinct[: self.num_particles])
        return np.stack(out)

    def config(self) -> dict:
        return {
            **super().config(),
            "mode": self.mode,
            "selection": self.selection,
            "budget": self.budget.as_dict(),
            "max_children": self.max_children,
            "widening": self.widening,
            "exploration": self.exploration,
            "num_parallel": self.num_parallel,
        }
