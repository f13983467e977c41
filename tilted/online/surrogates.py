"""Surrogates of a black-box reward with an uncertainty estimate, and their optimistic value.

A surrogate is fitted to every query so far, (x_i, y_i), i = 1 … n, and gives a differentiable
optimistic reward r̂⁺(x) that the next round's tilted target p_θ(x) exp(r̂⁺(x)/α) uses:

- :class:`Ensemble`: M small MLPs, each fitted to a bootstrap resample of the training queries;
  r̂⁺ = mean_m f_m(x) + κ · std_m f_m(x) (``optimism="ucb"``), or max_m f_m(x) (``"max"``), or the
  mean alone (``"mean"``: optimism off).
- :class:`NeuralLinear`: one MLP f(x) = wᵀφ(x) + b; with Φ the last-layer features of the training
  queries and Σ = ΦᵀΦ, r̂⁺ = f(x) + min(C, β √(φ(x)ᵀ (Σ + λI)⁻¹ φ(x))) (the bonus of SEIKO's
  neural-linear UCB; ``beta=0`` turns optimism off). β and C are in units of the standardised values
  (standard deviations of the observed y).

Both read ``features(x)`` when given (a frozen encoder, for example a classifier's penultimate layer)
and the flattened x otherwise; inputs are standardised with the training queries' mean and standard
deviation, values with theirs. Fitting: Adam on the mean squared error, a validation split
(``val_fraction`` of the queries, at least one, drawn once per fit), early stopping when the
validation error has not improved for ``patience`` epochs (the best weights are kept), and a warm
start: a refit starts from the previous round's weights (same feature dimension), not from scratch.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
from torch import nn

from tilted.errors import ModelError, ShapeError
from tilted.rewards.base import Reward

F32 = torch.float32


def mlp(dim: int, hidden: int, layers: int) -> nn.Sequential:
    """``layers`` hidden SiLU layers of width ``hidden`` and a scalar output."""
    mods, width = [], dim
    for _ in range(layers):
        mods += [nn.Linear(width, hidden), nn.SiLU()]
        width = hidden
    return nn.Sequential(*mods, nn.Linear(width, 1))


class Surrogate(Reward):
    """Base: standardisation, features, the training loop with validation and early stopping.

    Subclasses build their networks in :meth:`_build`, fit them in :meth:`_fit` (with
    :meth:`train_net`) and return (mean, uncertainty bonus) in standardised units from :meth:`_predict`.
    Calling the surrogate gives the optimistic value r̂⁺(x) in the units of y (a differentiable reward).
    """

    differentiable = True
    input = "any"

    def __init__(
        self,
        *,
        features: Callable[[torch.Tensor], torch.Tensor] | None = None,
        event_dim: int | None = None,
        hidden: int = 64,
        layers: int = 2,
        epochs: int = 300,
        lr: float = 3e-3,
        weight_decay: float = 1e-4,
        val_fraction: float = 0.2,
        patience: int = 30,
        warm_start: bool = True,
    ):
        if not 0 < val_fraction < 1:
            raise ModelError(f"val_fraction must be in (0, 1), got {val_fraction}")
        for name, value in (("hidden", hidden), ("layers", layers), ("epochs", epochs), ("patience", patience)):
            if isinstance(value, bool) or not isinstance(value, int) or value < (0 if name == "layers" else 1):
                raise ModelError(f"{name} must be a positive integer, got {value!r}")
        self.features, self.event_dim = features, event_dim
        self.hidden, self.layers, self.epochs, self.lr = hidden, layers, epochs, lr
        self.weight_decay, self.val_fraction, self.patience, self.warm_start = (
            weight_decay,
            val_fraction,
            patience,
            warm_start,
        )
        self.fitted = False
        self.history: list[dict] = []  # one record per fit: sizes, epochs run, validation error

    # -- inputs ---------------------------------------------------------------------------------
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """features(x) (or x) flattened to (*batch, F), float32."""
        z = self.features(x) if self.features is not None else x
        if self.event_dim is None:
            raise ModelError("the surrogate needs event_dim (set by fit) to know the batch dimensions of x")
        fdim = self._feature_dim if self.features is not None else self.event_dim
        batch = z.shape[: z.ndim - fdim]
        return z.reshape(batch + (-1,)).to(F32)

    def _standard_inputs(self, x: torch.Tensor) -> torch.Tensor:
        return (self.embed(x) - self.x_mean) / self.x_std

    # -- fitting --------------------------------------------------------------------------------
    def fit(self, x: torch.Tensor, y: torch.Tensor, *, event_dim: int, generator: torch.Generator | None = None):
        """Fit to queries x (n, *event) with values y (n,); NaN values are left out. Returns self."""
        if x.shape[0] != y.shape[0] or y.ndim != 1:
            raise ShapeError(f"fit takes x (n, *event) and y (n,), got {tuple(x.shape)} and {tuple(y.shape)}")
        ok = torch.isfinite(y)
        x, y = x[ok], y[ok].to(F32)
        if len(y) < 2:
            raise ModelError(f"a surrogate needs at least 2 finite values to fit, got {len(y)}")
        self.event_dim = event_dim
        if self.features is not None:
            with torch.no_grad():
                probe = self.features(x[:1])
            self._feature_dim = probe.ndim - 1
        with torch.no_grad():
            z = self.embed(x)
        self.x_mean, self.x_std = z.mean(0), z.std(0).clamp_min(1e-6)
        self.y_mean, self.y_std = y.mean(), y.std().clamp_min(1e-6)
        zs, ys = (z - self.x_mean) / self.x_std, (y - self.y_mean) / self.y_std
        dim = zs.shape[1]
        if not (self.fitted and self.warm_start and getattr(self, "_dim", None) == dim):
            self._build(dim, generator)
        self._dim = dim
        n_val = max(1, round(self.val_fraction * len(ys)))
        order = torch.randperm(len(ys), generator=generator, device=torch.device("cpu")).to(zs.device)
        val, train = order[:n_val], order[n_val:]
        self.split = {"train": train, "val": val}  # row indices among the finite queries of this fit
        self._fit(zs, ys, train, val, generator)
        self.fitted = True
        return self

    def train_net(self, net, z, y, train, val, generator) -> dict:
        """Adam on the MSE of ``net`` on rows ``train``, early stopping on rows ``val``; best weights kept."""
        opt = torch.optim.Adam(net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        best, best_state, wait, ran = math.inf, copy.deepcopy(net.state_dict()), 0, 0
        batch = 64
        while ran < self.epochs:
            ran += 1
            net.train()
            perm = train[torch.randperm(len(train), generator=generator).to(train.device)]
            for i in range(0, len(perm), batch):
                idx = perm[i : i + batch]
                loss = (net(z[idx]).squeeze(-1) - y[idx]).pow(2).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
            net.eval()
            with torch.no_grad():
                err = float((net(z[val]).squeeze(-1) - y[val]).pow(2).mean())
            if err < best - 1e-6:
                best, best_state, wait = err, copy.deepcopy(net.state_dict()), 0
            else:
                wait += 1
                if wait >= self.patience:
                    break
        net.load_state_dict(best_state)
        return {"epochs": ran, "val_mse": best}

    # -- prediction -----------------------------------------------------------------------------
    def predict(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, uncertainty bonus) of x in the units of y, shape x's batch shape."""
        if not self.fitted:
            raise ModelError(f"{type(self).__name__} is not fitted yet: call fit(x, y, event_dim=...) first")
        mean, bonus = self._predict(self._standard_inputs(x))
        return self.y_mean + self.y_std * mean, self.y_std * bonus

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The optimistic value r̂⁺(x) = mean + bonus."""
        mean, bonus = self.predict(x)
        return mean + bonus

    def _build(self, dim: int, generator) -> None:
        raise NotImplementedError

    def _fit(self, z, y, train, val, generator) -> None:
        raise NotImplementedError

    def _predict(self, z) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError


class Ensemble(Surrogate):
    """A bootstrap ensemble of M MLPs (module docstring); ``optimism`` "ucb" (with ``kappa``), "max" or "mean"."""

    def __init__(self, num_heads: int = 5, *, optimism: str = "ucb", kappa: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        if optimism not in ("ucb", "max", "mean"):
            raise ModelError(f"optimism must be 'ucb', 'max' or 'mean', got {optimism!r}")
        if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads < 2:
            raise ModelError(f"num_heads must be an integer ≥ 2 (an ensemble needs a spread), got {num_heads!r}")
        if not kappa >= 0:
            raise ModelError(f"kappa must be ≥ 0, got {kappa}")
        self.num_heads, self.optimism, self.kappa = num_heads, optimism, float(kappa)

    def _build(self, dim, generator):
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.heads = nn.ModuleList(mlp(dim, self.hidden, self.layers) for _ in range(self.num_heads))

    def _fit(self, z, y, train, val, generator):
        self.heads.to(z.device).requires_grad_(True)
        records = []
        for head in self.heads:  # each head: a bootstrap resample of the training rows
            boot = train[torch.randint(0, len(train), (len(train),), generator=generator).to(train.device)]
            records.append(self.train_net(head, z, y, boot, val, generator))
        self.heads.requires_grad_(False)
        self.history.append({"queries": len(y), "val_size": len(val), "heads": records})

    def _predict(self, z):
        out = torch.stack([head(z).squeeze(-1) for head in self.heads])  # (M, *batch)
        mean = out.mean(0)
        if self.optimism == "max":
            return mean, out.max(0).values - mean
        if self.optimism == "mean":
            return mean, torch.zeros_like(mean)
        return mean, self.kappa * out.std(0)

    def __repr__(self) -> str:
        return f"Ensemble(num_heads={self.num_heads}, optimism={self.optimism!r}, kappa={self.kappa})"


class NeuralLinear(Surrogate):
    """A neural-linear UCB (module docstring): bonus min(C, β √(φᵀ(Σ + λI)⁻¹φ)) on last-layer features."""

    def __init__(self, *, beta: float = 1.0, lam: float = 1.0, cap: float = 2.0, **kwargs):
        super().__init__(**kwargs)
        if self.layers < 1:
            raise ModelError("NeuralLinear needs at least one hidden layer (its features)")
        for name, value in (("beta", beta), ("cap", cap)):
            if not value >= 0:
                raise ModelError(f"{name} must be ≥ 0, got {value}")
        if not lam > 0:
            raise ModelError(f"lam must be > 0 (it regularises the feature covariance), got {lam}")
        self.beta, self.lam, self.cap = float(beta), float(lam), float(cap)

    def _build(self, dim, generator):
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.net = mlp(dim, self.hidden, self.layers)

    def phi(self, z: torch.Tensor) -> torch.Tensor:
        """Last-layer features φ(z): the network without its output layer."""
        return self.net[:-1](z)

    def _fit(self, z, y, train, val, generator):
        self.net.to(z.device).requires_grad_(True)
        record = self.train_net(self.net, z, y, train, val, generator)
        self.net.requires_grad_(False)
        with torch.no_grad():
            phi = self.phi(z).double()
            cov = phi.T @ phi + self.lam * torch.eye(phi.shape[1], dtype=phi.dtype, device=phi.device)
            self.precision = torch.linalg.inv(cov).to(F32)
        self.history.append({"queries": len(y), "val_size": len(val), **record})

    def _predict(self, z):
        phi = self.phi(z)
        quad = ((phi @ self.precision) * phi).sum(-1).clamp_min(0)
        bonus = (self.beta * (quad + 1e-12).sqrt()).clamp(max=self.cap)
        return self.net[-1](phi).squeeze(-1), bonus

    def __repr__(self) -> str:
        return f"NeuralLinear(beta={self.beta}, lam={self.lam}, cap={self.cap})"
