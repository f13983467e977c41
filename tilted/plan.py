"""Reading a model into a plan: its sequential site, its factors, temperatures and schedules.

``read_plan(model, *args, **kwargs)`` runs the model once under :class:`PlanReader`, an effect
handler that stops at the sequential site (returning a placeholder instead of running the chain)
and records each ``tilted.factor`` statement as a :class:`~tilted.factor.Factor` without evaluating
it. Engines then evaluate the factors on x̂_0 at every step, and :meth:`Plan.replay` runs the model
with the engine's final particles so every site of the user's model has a value.
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
from tilted.errors import ModelError
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
    def temperatures(self) -> torch.Tensor:
        return torch.tensor([f.temperature for f in self.factors], dtype=torch.float64)

    def rewards(self, x: torch.Tensor) -> torch.Tensor:
        """Every factor's reward at x: shape (num_factors, *batch), validated finite."""
        batch = x.shape[: x.ndim - self.event_dim]
        if not self.factors:
            return x.new_zeros((0,) + batch)
        return torch.stack([evaluate_reward(f.name, f.reward, (x,), batch) for f in self.factors])

    def log_factor(self, rewards: torch.Tensor) -> torch.Tensor:
        """Σ_j r_j / α_j from :meth:`rewards` output: the exact terminal log-potential."""
        alpha = self.temperatures.to(rewards.dtype).reshape((-1,) + (1,) * (rewards.ndim - 1))
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
    return Plan(model, site, process, tuple(reader.factors), tuple(args), dict(kwargs))
