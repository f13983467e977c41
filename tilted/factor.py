"""The reward factor statement: ``tilted.factor(name, reward, x, temperature=α, tempering=...)``.

Under plain Pyro it adds the log-factor r(x)/α to the trace (a ``pyro.factor`` site), so the
model's unnormalised density is p_θ(x) · exp(r(x)/α). Under a tilted engine the statement is not
evaluated: the engine reads it into a plan and evaluates the reward on x̂_0 at every step.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import pyro
import torch
from pyro.poutine.runtime import _PYRO_STACK

from tilted.errors import ModelError, NonFiniteError, ShapeError
from tilted.tempering import Tempering, as_tempering


@dataclass(frozen=True)
class Factor:
    """One reward statement, as read into a plan: r(site value) / temperature, tempered by a schedule."""

    name: str
    reward: Callable[..., torch.Tensor]
    site: str
    temperature: float
    tempering: Tempering

    def __call__(self, x: torch.Tensor, event_dim: int) -> torch.Tensor:
        """r(x), validated: one finite value per particle (shape ``x.shape[:-event_dim]``)."""
        return evaluate_reward(self.name, self.reward, (x,), x.shape[: x.ndim - event_dim])


def evaluate_reward(name: str, reward, values, batch_shape=None) -> torch.Tensor:
    """``reward(*values)``, checked: finite, and of shape ``batch_shape`` where that is known."""
    r = reward(*values)
    if not isinstance(r, torch.Tensor):
        r = torch.as_tensor(r, dtype=torch.get_default_dtype())
    if batch_shape is not None and r.shape != torch.Size(batch_shape):
        raise ShapeError(
            f"reward {name!r} returned shape {tuple(r.shape)} for a batch of shape {tuple(batch_shape)}; "
            "a reward returns one value per particle (reduce over the event dimensions)"
        )
    bad = ~torch.isfinite(r)
    if bad.any():
        raise NonFiniteError(
            f"reward {name!r} returned {int(bad.sum())} non-finite value(s) (NaN or ±inf) out of {r.numel()}; "
            "rewards must be finite: express hard constraints as large finite penalties"
        )
    return r


def check_temperature(name: str, temperature) -> float:
    try:
        alpha = float(temperature)
    except (TypeError, ValueError):
        raise ModelError(f"factor {name!r}: temperature must be a positive number, got {temperature!r}") from None
    if not (math.isfinite(alpha) and alpha > 0):
        raise ModelError(
            f"factor {name!r}: temperature must be a finite number > 0, got {temperature!r}; "
            "α → 0 is reward maximisation (use a search engine), α = ∞ is the pretrained model"
        )
    return alpha


def factor(
    name: str,
    reward: Callable[..., torch.Tensor],
    *sites: torch.Tensor,
    temperature: float = 1.0,
    tempering: Tempering | str | None = None,
) -> None:
    """State that the model's density is multiplied by exp(reward(*sites) / temperature).

    Parameters
    ----------
    name
        Name of the factor (a Pyro site name).
    reward
        Callable on the site values returning one value per particle (shape = the batch shape).
    *sites
        Values returned by ``pyro.sample`` of sequential sites (the reward's arguments).
    temperature
        α > 0: small α follows the reward closely, large α stays near the pretrained model.
    tempering
        How engines bring the reward in over the steps (:mod:`tilted.tempering`); ``None`` = λ ≡ 1.
    """
    if not isinstance(name, str) or not name:
        raise ModelError("factor name must be a non-empty string")
    if not callable(reward):
        raise ModelError(f"factor {name!r}: reward must be callable, got {type(reward).__name__}")
    if not sites:
        raise ModelError(f"factor {name!r}: name at least one site value, e.g. tilted.factor({name!r}, r, x)")
    alpha = check_temperature(name, temperature)
    schedule = as_tempering(tempering)
    for handler in reversed(_PYRO_STACK):
        handle = getattr(handler, "handle_tilted_factor", None)
        if handle is not None and handle(name, reward, sites, alpha, schedule):
            return
    r = evaluate_reward(name, reward, sites)
    pyro.factor(name, r / alpha, has_rsample=True)
