"""Reading a model into a plan: its sequential site, its factors, temperatures and schedules.

``read_plan(model, *args, **kwargs)`` runs the model once under :class:`PlanReader`, an effect
handler that stops at the sequential site (returning a placeholder instead of running the chain)
and records each ``tilted.factor`` statement as a :class:`~tilted.factor.Factor` without evaluating
it. Engines then evaluate the factors on x̂_0 at every step, and :meth:`Plan.replay` runs the model
with the engine's final particles so every site of the user's model has a value.

Groups. A process with a batch shape (P,) — for example one Stable Diffusion chain per prompt — is P
independent targets. Engines run each as its own run: R = M·P runs, run r = m·P + p holding group p
(M = ``num_runs`` or 1), with engine tensors laid out (R, *S, *T). The process and the rewards see
the Pyro layout instead, the group dimension right before the event: (B, P, *T).
:meth:`Plan.to_site` and :meth:`Plan.from_site` convert between the two, and :meth:`Plan.chunks`
cuts the site layout into micro-batches along B.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyro.poutine as poutine
import torch
from pyro.distributions.torch_distribution import ExpandedDistribution
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample

from tilted.distributions.process import SequentialProcess
from tilted.errors import ModelError, ShapeError
from tilted.factor import Factor, evaluate_reward


def _unwrap(fn):
    while isinstance(fn, ExpandedDistribution):
        fn = fn.base_dist
    return fn


class PlanReader(Messenger):
    """Effect handler that reads sequential sites and factor statements instead of running them."""

    def __init__(self):
        super().__init__()
        self.sites: dict[str, SequentialProcess] = {}
        self.placeholders: dict[int, str] = {}
        self.factors: list[Factor] = []

    def _pyro_sample(self, msg):
        if msg["is_observed"] or site_is_subsample(msg):  # (a pyro.plate's index site)
            return
        process = _unwrap(msg["fn"])
        if not isinstance(process, SequentialProcess):
            raise ModelError(
                f"site {msg['name']!r} samples a {type(process).__name__}; tilted engines run models whose "
                "latent sites are sequential processes (tilted.distributions). Fix other values as "
                "constants or arguments of the model, or condition on them with pyro.condition"
            )
        if self.sites:
            raise ModelError(
                f"the model has two sequential sites ({next(iter(self.sites))!r}, {msg['name']!r}); "
                "engines run one diffusion chain per model: stack the two states into one process"
            )
        value = process.placeholder()
        self.sites[msg["name"]] = process
        self.placeholders[id(value)] = msg["name"]
        msg["value"] = value
        msg["done"] = True
        msg["stop"] = True

    def handle_tilted_factor(self, name, reward, sites, temperature, tempering) -> bool:
        names = []
        for value in sites:
            site = self.placeholders.get(id(value))
            if site is None:
                raise ModelError(
                    f"factor {name!r} is given a value that is not the value of a sequential site; pass the "
                    "value returned by pyro.sample(...) itself and do any transformation inside the reward"
                )
            names.append(site)
        if len(sites) != 1:
            raise ModelError(f"factor {name!r} names {len(sites)} values; a factor takes one sequential site")
        if any(f.name == name for f in self.factors):
            raise ModelError(f"two factors are named {name!r}; factor names must be unique")
        self.factors.append(Factor(name, reward, names[0], temperature, tempering))
        return True


class _Replayer(Messenger):
    """Supplies precomputed rewards to factor statements while the model is replayed."""

    def __init__(self, rewards: dict[str, torch.Tensor]):
        super().__init__()
        self.rewards = rewards

    def handle_tilted_factor(self, name, reward, sites, temperature, tempering) -> bool:
        if name not in self.rewards:
            return False
        import pyro

        pyro.factor(name, self.rewards[name] / temperature, has_rsample=True)
        return True


@dataclass(frozen=True)
class Plan:
    """A model read for an engine: one sequential site, its process and its reward factors."""

    model: Callable[..., Any]
    site: str
    process: SequentialProcess
    factors: tuple[Factor, ...]
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)

    @property
    def event_dim(self) -> int:
        return len(self.process.event_shape)

    @property
    def groups(self) -> int:
        """P, the number of independent groups of the process (its batch shape; 1 without one)."""
        return self.process.batch_shape.numel()

    @property
    def grouped(self) -> bool:
        return len(self.process.batch_shape) > 0

    def runs(self, num_runs: int | None) -> int:
        """R = M·P runs for ``num_runs`` = M (or 1) repetitions of the P groups."""
        return (num_runs or 1) * self.groups

    def to_site(self, x: torch.Tensor, batch_ndim: int, lead: int = 0) -> torch.Tensor:
        """Engine layout (*L, R, *S, *T) → site layout (*L, B, P, *T), B = M·|S| (no P without groups).

        ``lead`` dimensions L are kept in front; ``batch_ndim`` = 1 + len(S) counts R and S.
        """
        L, batch, rest = x.shape[:lead], x.shape[lead : lead + batch_ndim], x.shape[lead + batch_ndim :]
        if not self.grouped:
            return x.reshape(L + (batch.numel(),) + rest)
        P = self.groups
        if batch[0] % P:
            raise ShapeError(f"{batch[0]} runs are not a multiple of the process's {P} groups")
        y = x.reshape(L + (batch[0] // P, P) + batch[1:] + rest).movedim(lead + 1, lead + batch_ndim)
        return y.reshape(L + (batch.numel() // P, P) + rest)

    def from_site(self, y: torch.Tensor, batch: tuple[int, ...], lead: int = 0) -> torch.Tensor:
        """Site layout (*L, B, P, *T) → engine layout (*L, *batch, *T): the inverse of :meth:`to_site`."""
        batch = tuple(batch)
        L = y.shape[:lead]
        if not self.grouped:
            return y.reshape(L + batch + y.shape[lead + 1 :])
        P, rest = self.groups, y.shape[lead + 2 :]
        z = y.reshape(L + (batch[0] // P,) + batch[1:] + (P,) + rest).movedim(lead + len(batch), lead + 1)
        return z.reshape(L + batch + rest)

    def chunks(self, x: torch.Tensor, batch_ndim: int, batch_size: int | None) -> tuple[torch.Tensor, ...]:
        """The site layout of x cut into micro-batches of about ``batch_size`` particles along B."""
        flat = self.to_site(x, batch_ndim)
        rows = flat.shape[0] if batch_size is None else max(1, batch_size // self.groups)
        return flat.split(max(rows, 1))

    @property
    def temperatures(self) -> torch.Tensor:
        return torch.tensor([f.temperature for f in self.factors], dtype=torch.float64)

    def rewards(self, x: torch.Tensor) -> torch.Tensor:
        """Every factor's reward at x: shape (num_factors, *batch), validated finite."""
        batch = x.shape[: x.ndim - self.event_dim]
        if not self.factors:
            return x.new_zeros((0,) + batch)
        return torch.stack([evaluate_reward(f.name, f.reward, (x,), batch) for f in self.factors])

    def rewards_at(self, x: torch.Tensor, batch_ndim: int, batch_size: int | None = None) -> torch.Tensor:
        """:meth:`rewards` of engine-layout states (R, *S, *E) in micro-batches, without gradients: (F, R, *S)."""
        with torch.no_grad():
            parts = [self.rewards(c) for c in self.chunks(x, batch_ndim, batch_size)]
        return self.from_site(torch.cat(parts, 1), x.shape[:batch_ndim], lead=1)

    def log_factor(self, rewards: torch.Tensor) -> torch.Tensor:
        """Σ_j r_j / α_j from :meth:`rewards` output: the exact terminal log-potential."""
        alpha = self.temperatures.to(device=rewards.device, dtype=rewards.dtype).reshape(
            (-1,) + (1,) * (rewards.ndim - 1)
        )
        return (rewards / alpha).sum(0)

    def replay(self, value: torch.Tensor, rewards: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Run the model with the sequential site set to ``value``; return every site's value.

        ``rewards`` (as from :meth:`rewards`) are reused instead of calling the reward functions again.
        """
        model = poutine.condition(self.model, data={self.site: value})
        cached = {} if rewards is None else {f.name: r for f, r in zip(self.factors, rewards, strict=True)}
        with _Replayer(cached):
            trace = poutine.trace(model).get_trace(*self.args, **self.kwargs)
        names = {f.name for f in self.factors}
        return {
            name: site["value"]
            for name, site in trace.nodes.items()
            if site["type"] == "sample" and name not in names and not site_is_subsample(site)
        }


def read_plan(model: Callable[..., Any], *args, **kwargs) -> Plan:
    """Read ``model(*args, **kwargs)`` into a :class:`Plan` (see module docstring)."""
    reader = PlanReader()
    with reader:
        model(*args, **kwargs)
    if not reader.sites:
        raise ModelError("the model has no sequential site: sample a tilted.distributions process with pyro.sample")
    site, process = next(iter(reader.sites.items()))
    if len(process.batch_shape) > 1:
        raise ModelError(
            f"site {site!r} has batch shape {tuple(process.batch_shape)}; engines run processes with at most one "
            "batch (group) dimension, e.g. one chain per prompt: flatten the groups into one dimension"
        )
    return Plan(model, site, process, tuple(reader.factors), tuple(args), dict(kwargs))
