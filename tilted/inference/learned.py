"""Soft values learned by Monte-Carlo regression on pretrained chains (value learning, Uehara et al. §6).

:class:`LearnedSoftValue` is a twist ψ_φ(x, k) ≈ ψ_k(x) = log E[exp(Σ_j r_j(x_0)/α_j) | x_k = x], the exact
soft value in units of the tilt, fitted once per model and reused by every run (an amortised cost).
Training pairs (x_k, y) come from C chains of the pretrained model: every state x_k of a chain is paired
with y = Σ_j r_j(x_0)/α_j of that chain's own end point, so E[exp(y) | x_k] = exp(ψ_k(x_k)). The loss

    ℓ(f, y) = exp(y − f) − (y − f) − 1 ≥ 0,

the Bregman divergence of exp, is minimised for each x by f = log E[exp(y) | x_k = x]: its expected
derivative 1 − E[exp(y)] e^{−f} vanishes exactly there. The regression so targets the soft value
itself, in log space (least squares on y would give E[y | x_k], the α → ∞ value; least squares on exp(y)
the same minimiser, badly conditioned). For u = y − f above ``U_MAX`` the loss continues along its
tangent, so one early, badly underestimated pair cannot overflow; it binds only for pairs whose reward
exceeds the current value by more than 30 nats.

Used as the potential of :class:`~tilted.inference.SMC` the engine stays exact (ψ only shapes the
variance; ψ_0 is the exact reward), and a good fit makes the weights nearly constant. On the DAS ring toy
at N = 16 it brings SMC from 0.25 to 0.014 ± 0.010 above the EMD floor (30 repetitions,
docs/benchmarks.md); in d = 64 its errors across levels make it a worse potential than r(x̂_0)
(docs/engines.md).
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from pathlib import Path

import torch

from tilted._progress import progress_bar
from tilted._random import Seed, as_generator
from tilted.distributions.gaussian import GaussianDiffusion
from tilted.errors import ModelError, NonFiniteError
from tilted.inference.potentials import Twist
from tilted.plan import read_plan

#: the loss follows its tangent for u = y − f above this many nats
U_MAX = 30.0
#: held-out evaluations during a fit (early stopping keeps the best of them)
CHECKS = 20


def soft_value_loss(f: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean of ℓ(f, y) = exp(u) − u − 1, u = y − f (tangent continuation above ``U_MAX``)."""
    u = y - f
    # a where, not clamp-and-add: exp(u) + e^U_MAX − e^U_MAX would cancel exp(u)'s gradient in float32
    tangent = math.expm1(U_MAX) + math.exp(U_MAX) * (u - U_MAX)
    return (torch.where(u <= U_MAX, torch.expm1(u.clamp(max=U_MAX)), tangent) - u).mean()


class ValueMLP(torch.nn.Module):
    """f(z, t): an MLP on the flattened standardised state z and a sinusoidal embedding of t = k/K ∈ [0, 1]."""

    def __init__(self, dim: int, hidden: int = 128, depth: int = 3, frequencies: int = 8):
        super().__init__()
        self.config = {"dim": dim, "hidden": hidden, "depth": depth, "frequencies": frequencies}
        self.register_buffer("scales", math.pi / 2 * 2.0 ** torch.arange(frequencies))
        sizes = [dim + 2 * frequencies] + [hidden] * depth
        layers: list[torch.nn.Module] = []
        for a, b in zip(sizes[:-1], sizes[1:], strict=True):
            layers += [torch.nn.Linear(a, b), torch.nn.SiLU()]
        self.layers = torch.nn.Sequential(*layers, torch.nn.Linear(sizes[-1], 1))

    def forward(self, z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        angles = t[:, None] * self.scales
        return self.layers(torch.cat([z.flatten(1), angles.sin(), angles.cos()], -1)).squeeze(-1)


class LearnedSoftValue(Twist):
    """ψ_φ(x, k) = f(standardise_k(x), k/K) + c: a learned soft value, built by :meth:`fit` or :meth:`load`.

    The state is standardised per level and coordinate with the training chains' mean and standard
    deviation, and c = log mean exp(y) over the training chains is a fixed offset (so f starts near 0).
    At level 0 the value is the exact Σ_j r_j(x)/α_j. The factors' tempering schedules are not applied
    (λ ≡ 1). Evaluations are not counted as denoiser calls: the network is not the denoiser. The cost
    of fitting is in :attr:`training` (chains, denoiser and reward calls, optimiser steps, seconds).
    """

    def __init__(
        self,
        plan,
        net: torch.nn.Module,
        mean,
        std,
        shift: float,
        training: dict | None = None,
        batch_size: int | None = None,
    ):
        super().__init__(self.value)
        self.plan, self.net, self.shift = plan, net, float(shift)
        self.mean, self.std = mean, std  # (K, *E): level k at row k − 1
        self.training = dict(training or {})
        self.batch_size = batch_size

    def __repr__(self) -> str:
        return f"LearnedSoftValue(net={type(self.net).__name__}, chains={self.training.get('chains')})"

    # -- evaluation -------------------------------------------------------------------------------
    def value(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """ψ_φ(x, k) for states (R, N, *E), float64; differentiable in x."""
        process, k = self.plan.process, int(k)
        if not 0 <= k <= process.num_steps:
            raise ModelError(f"level {k} is outside 0 … {process.num_steps}")
        if k == 0:
            return self.plan.log_factor(self.plan.rewards(x).to(torch.float64))
        event = process.event_shape
        flat = x.reshape((-1,) + event).to(self.mean.dtype)
        level = torch.full((flat.shape[0],), k - 1, device=flat.device)
        return self._chunked(flat, level).to(torch.float64).reshape(x.shape[: x.ndim - len(event)])

    # -- fitting ----------------------------------------------------------------------------------
    @classmethod
    def fit(
        cls,
        model,
        *args,
        num_chains: int = 4096,
        steps: int = 3000,
        minibatch: int = 4096,
        lr: float = 1e-3,
        net: torch.nn.Module | None = None,
        hidden: int = 128,
        depth: int = 3,
        validation: float = 0.1,
        seed: Seed = 0,
        batch_size: int | None = None,
        progress: bool | None = None,
        **kwargs,
    ) -> LearnedSoftValue:
        """Simulate ``num_chains`` pretrained chains and fit ψ_φ by ``steps`` Adam steps on the loss ℓ.

        ``net(z, t)`` maps standardised states (B, *E) and t = k/K (B,) to (B,) (default: a
        :class:`ValueMLP` with ``hidden`` units and ``depth`` layers). Each step draws ``minibatch``
        (chain, level) pairs from the training chains; the last ``validation`` fraction of chains is held
        out: its loss is evaluated ``CHECKS`` times during the fit and the weights with the lowest one are kept
        (early stopping; ``training["validation_history"]``, ``training["best_step"]``). That loss is
        ``training["validation_loss"]``, beside the loss of the constant value c, ``training["constant_loss"]``;
        a fit that does no better than the constant warns.
        ``batch_size`` bounds the chains simulated (and particles evaluated) at once. Cost:
        ``num_chains``·K denoiser calls and ``num_chains`` reward calls per factor, once.
        """
        plan = read_plan(model, *args, **kwargs)
        process = _check_process(plan.process)
        for name, value in {"num_chains": num_chains, "steps": steps, "minibatch": minibatch}.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ModelError(f"{name} must be a positive integer, got {value!r}")
        if num_chains < 2 or not 0 < validation < 1:
            raise ModelError(f"need num_chains ≥ 2 and 0 < validation < 1, got {num_chains} and {validation}")
        if not lr > 0:
            raise ModelError(f"lr must be positive, got {lr}")
        start = time.perf_counter()
        device, K, event = process.device, process.num_steps, process.event_shape
        gen = as_generator(seed, device)
        states, y = _simulate(plan, num_chains, gen, batch_size or num_chains, progress)  # (K, C, *E), (C,)
        held = max(1, int(round(validation * num_chains)))
        train, val = slice(0, num_chains - held), slice(num_chains - held, num_chains)
        mean, std = states[:, train].mean(1), states[:, train].std(1).clamp_min(1e-6)
        shift = float(torch.logsumexp(y[train], 0) - math.log(num_chains - held))
        if net is None:
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                torch.manual_seed(int(torch.randint(0, 2**62, (), generator=gen, device=device)))
                net = ValueMLP(event.numel(), hidden, depth)
        value = cls(plan, net.to(device), mean, std, shift, batch_size=batch_size)
        optimiser = torch.optim.Adam(net.parameters(), lr)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, steps)
        train_states, train_y = states[:, train], y[train]
        C = train_states.shape[1]
        bar = progress_bar(range(steps), progress=progress, desc="LearnedSoftValue.fit", leave=False)
        checks = set(torch.linspace(0, steps, CHECKS + 1).round().long()[1:].tolist())
        history, best = [], (math.inf, None, 0)
        for step in bar:
            chain = torch.randint(0, C, (minibatch,), generator=gen, device=device)
            level = torch.randint(0, K, (minibatch,), generator=gen, device=device)
            f = value._regress(train_states[level, chain], level)
            loss = soft_value_loss(f, train_y[chain])
            if not torch.isfinite(loss):
                raise NonFiniteError("the soft-value loss became non-finite; lower lr or check the network")
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
            if step + 1 in checks:  # early stopping: keep the weights with the lowest held-out loss
                history.append((step + 1, value._validate(states[:, val], y[val])[0]))
                if history[-1][1] < best[0]:
                    best = (history[-1][1], copy.deepcopy(net.state_dict()), step + 1)
        if best[1] is None:
            raise NonFiniteError("the held-out soft-value loss was never finite; check the network and the rewards")
        net.load_state_dict(best[1])
        val_loss, constant = value._validate(states[:, val], y[val])
        if not val_loss < constant:
            warnings.warn(
                f"the fitted soft value does no better than a constant on held-out chains (loss {val_loss:.4g} "
                f"against {constant:.4g}): SMC stays exact but gains nothing from it. Use more chains, a smaller "
                "network or fewer steps",
                stacklevel=2,
            )
        value.training = {
            "chains": num_chains,
            "held_out": held,
            "denoiser_calls": num_chains * K,
            "reward_calls": num_chains * len(plan.factors),
            "steps": steps,
            "minibatch": minibatch,
            "validation_loss": val_loss,
            "constant_loss": constant,
            "best_step": best[2],
            "validation_history": history,
            "seconds": time.perf_counter() - start,
        }
        return value

    def _regress(self, states: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        """f + c at training pairs: states (B, *E) at levels ``level`` + 1 (B,)."""
        z = (states - self.mean[level]) / self.std[level]
        return self.net(z, (level + 1).to(z.dtype) / self.plan.process.num_steps) + self.shift

    def _chunked(self, states: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        """:meth:`_regress` in micro-batches of ``batch_size`` states."""
        size = self.batch_size or states.shape[0]
        return torch.cat(
            [self._regress(states[i : i + size], level[i : i + size]) for i in range(0, len(states), size)]
        )

    @torch.no_grad()
    def _validate(self, states: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
        """Held-out loss of ψ_φ and of the constant c, over every level of the held-out chains."""
        K, C = states.shape[:2]
        level = torch.arange(K, device=states.device).repeat_interleave(C)
        f = self._chunked(states.reshape((K * C,) + states.shape[2:]), level)
        targets = y.repeat(K)
        return float(soft_value_loss(f, targets)), float(soft_value_loss(torch.full_like(targets, self.shift), targets))

    # -- persistence ------------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Write the network's weights, the standardisation, the offset and the training record."""
        config = getattr(self.net, "config", None)
        torch.save(
            {
                "net": self.net.state_dict(),
                "config": config,
                "mean": self.mean.cpu(),
                "std": self.std.cpu(),
                "shift": self.shift,
                "training": self.training,
            },
            path,
        )

    @classmethod
    def load(
        cls, path: str | Path, model, *args, net: torch.nn.Module | None = None, batch_size: int | None = None, **kwargs
    ) -> LearnedSoftValue:
        """A value saved by :meth:`save`, for the same model (``net``: the architecture of a custom network)."""
        saved = torch.load(path, map_location="cpu", weights_only=True)
        plan = read_plan(model, *args, **kwargs)
        process = _check_process(plan.process)
        expected = (process.num_steps,) + tuple(process.event_shape)
        if tuple(saved["mean"].shape) != expected:
            raise ModelError(
                f"{path} was fitted for K and event shape {tuple(saved['mean'].shape)}, the model has {expected}"
            )
        if net is None:
            if saved["config"] is None:
                raise ModelError(f"{path} holds a custom network: pass its architecture as net=")
            net = ValueMLP(**saved["config"])
        net.load_state_dict(saved["net"])
        device = process.device
        return cls(
            plan,
            net.to(device),
            saved["mean"].to(device),
            saved["std"].to(device),
            saved["shift"],
            saved["training"],
            batch_size,
        )


def _check_process(process) -> GaussianDiffusion:
    if not isinstance(process, GaussianDiffusion):
        raise ModelError(f"LearnedSoftValue needs a GaussianDiffusion process, got {type(process).__name__}")
    if len(process.batch_shape):
        raise ModelError(
            "LearnedSoftValue fits one value for one target; a process with groups (one chain per prompt) has "
            "one target per group: fit one value per prompt, or use the default Tweedie potential"
        )
    return process


@torch.no_grad()
def _simulate(plan, num_chains: int, gen, batch_size: int, progress) -> tuple[torch.Tensor, torch.Tensor]:
    """States x_k of ``num_chains`` pretrained chains (K, C, *E), level k at row k − 1, and y (C,) float32."""
    process = plan.process
    states, ys = [], []
    bar = progress_bar(progress=progress, total=num_chains, desc="pretrained chains", leave=False)
    for first in range(0, num_chains, batch_size):
        n = min(batch_size, num_chains - first)
        x = process.draw_initial((n,), gen)
        path = [x]
        for k in process.levels:
            x = process.draw_transition(x, k, gen)
            path.append(x)
        states.append(torch.stack(path[:-1][::-1]).float())  # x_1 … x_K
        ys.append(plan.log_factor(plan.rewards(x).to(torch.float64)))
        bar.update(n)
    bar.close()
    y = torch.cat(ys)
    if not torch.isfinite(y).all():
        raise NonFiniteError(f"{int((~torch.isfinite(y)).sum())} pretrained chains have non-finite rewards")
    return torch.cat(states, 1), y.float()
