"""The reward protocol and its composition.

A reward is a callable r with ``r(x) -> tensor of shape batch_shape(x)``: one value per particle, the
event dimensions reduced. Two class attributes say how engines may use it:

- ``differentiable``: whether ∇_x r(x) exists through autograd (gradient proposals, guidance need it);
- ``input``: what it expects: ``"latents"``, ``"images"`` (``(*batch, 3, H, W)`` floats in [0, 1]),
  ``"sequences"`` (token ids) or ``"any"`` (it only reduces trailing dimensions).

Composition builds new rewards without writing functions by hand:

- ``w1 * r1 + w2 * r2 - r3 + c`` is the weighted sum Σ_k w_k r_k(x) + c; it is differentiable when every
  part is, and its parts must agree on their input (``"any"`` agrees with everything);
- ``r.after(transform)`` is x ↦ r(transform(x)), for example ``aesthetic.after(prior.decode)`` where
  ``decode`` maps latents ``(…, 4, h, w)`` to images ``(…, 3, H, W)`` in [0, 1].

Plain callables remain rewards everywhere (:func:`tilted.factor` takes any callable); inside a
composition they are read by :func:`as_reward` as differentiable rewards of input ``"any"``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from tilted.errors import ModelError

INPUTS = ("latents", "images", "sequences", "any")


class Reward:
    """Base class of rewards: ``r(x)`` returns one value per element of x's batch shape.

    Subclasses implement ``__call__`` and set the class attributes ``differentiable`` (∇_x r exists
    through autograd) and ``input`` (one of ``"latents"``, ``"images"``, ``"sequences"``, ``"any"``).
    Arithmetic with numbers and other rewards (or plain callables) gives weighted sums; see
    :mod:`tilted.rewards.base`.
    """

    differentiable: bool = True
    input: str = "any"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement __call__(x)")

    def after(
        self, transform: Callable[[torch.Tensor], torch.Tensor], *, input: str = "any", differentiable: bool = True
    ) -> Reward:
        """x ↦ r(transform(x)), a reward on the transform's input.

        ``input`` names what the transform takes (for example ``"latents"`` for a VAE decoder) and
        ``differentiable`` whether autograd goes through it; the composite is differentiable when both
        the transform and this reward are.
        """
        return After(self, transform, input=input, differentiable=differentiable)

    def __add__(self, other) -> Reward:
        return WeightedSum.of([(1.0, self), (1.0, other)])

    def __radd__(self, other) -> Reward:
        return WeightedSum.of([(1.0, other), (1.0, self)])

    def __sub__(self, other) -> Reward:
        return WeightedSum.of([(1.0, self), (-1.0, other)])

    def __rsub__(self, other) -> Reward:
        return WeightedSum.of([(1.0, other), (-1.0, self)])

    def __mul__(self, weight) -> Reward:
        if not _is_number(weight):
            return NotImplemented
        return WeightedSum.of([(_weight(weight), self)])

    __rmul__ = __mul__

    def __truediv__(self, weight) -> Reward:
        if not _is_number(weight):
            return NotImplemented
        return WeightedSum.of([(1.0 / _weight(weight), self)])

    def __neg__(self) -> Reward:
        return WeightedSum.of([(-1.0, self)])


def as_reward(reward, *, differentiable: bool = True, input: str = "any") -> Reward:
    """``reward`` itself if it is a :class:`Reward`, else a callable wrapped with the given attributes."""
    if isinstance(reward, Reward):
        return reward
    if not callable(reward):
        raise ModelError(f"a reward must be callable (x -> one value per particle), got {type(reward).__name__}")
    return Function(reward, differentiable=differentiable, input=input)


class Function(Reward):
    """A plain callable f as a reward: r(x) = f(x), with the attributes stated at wrapping."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], *, differentiable: bool = True, input: str = "any"):
        self.fn = fn
        self.differentiable = bool(differentiable)
        self.input = _check_input(input)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)

    def __repr__(self) -> str:
        return getattr(self.fn, "__name__", repr(self.fn))


class WeightedSum(Reward):
    """r(x) = Σ_k w_k r_k(x) + c: differentiable when every r_k is; the r_k share one input kind."""

    def __init__(self, terms, constant: float = 0.0):
        self.terms: tuple[tuple[float, Reward], ...] = tuple((_weight(w), as_reward(r)) for w, r in terms)
        self.constant = _weight(constant)
        self.differentiable = all(r.differentiable for _, r in self.terms)
        kinds = {r.input for _, r in self.terms} - {"any"}
        if len(kinds) > 1:
            raise ModelError(
                f"cannot add rewards that expect different inputs ({', '.join(sorted(kinds))}); "
                "bring them to one input first, e.g. reward.after(decode, input='latents')"
            )
        self.input = kinds.pop() if kinds else "any"

    @classmethod
    def of(cls, terms) -> WeightedSum:
        """The flat sum of ``terms`` ((weight, reward, callable or number) pairs): nested sums are expanded."""
        flat, constant = [], 0.0
        for w, r in terms:
            if _is_number(r):
                constant += w * _weight(r)
            elif isinstance(r, WeightedSum):
                flat.extend((w * v, s) for v, s in r.terms)
                constant += w * r.constant
            else:
                flat.append((w, r))
        return cls(flat, constant)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        total = None
        for w, r in self.terms:
            value = r(x) if w == 1.0 else w * r(x)
            total = value if total is None else total + value
        if total is None:
            raise ModelError("a weighted sum of no rewards has no batch shape; add at least one reward")
        return total + self.constant if self.constant else total

    def __repr__(self) -> str:
        parts = [f"{w:g} * {r!r}" for w, r in self.terms]
        if self.constant:
            parts.append(f"{self.constant:g}")
        return " + ".join(parts)


class After(Reward):
    """r(transform(x)): a reward applied after a transform (a decoder, a rescaling, a projection)."""

    def __init__(
        self,
        reward,
        transform: Callable[[torch.Tensor], torch.Tensor],
        *,
        input: str = "any",
        differentiable: bool = True,
    ):
        if not callable(transform):
            raise ModelError(f"the transform before a reward must be callable, got {type(transform).__name__}")
        self.reward = as_reward(reward)
        self.transform = transform
        self.input = _check_input(input)
        self.differentiable = bool(differentiable) and self.reward.differentiable

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.reward(self.transform(x))

    def __repr__(self) -> str:
        name = getattr(self.transform, "__name__", type(self.transform).__name__)
        return f"{self.reward!r}.after({name})"


def _check_input(input: str) -> str:
    if input not in INPUTS:
        raise ModelError(f"a reward's input must be one of {', '.join(INPUTS)}; got {input!r}")
    return input


def _is_number(value) -> bool:
    if isinstance(value, torch.Tensor):
        return value.ndim == 0 and not value.dtype.is_complex
    return isinstance(value, int | float) and not isinstance(value, bool)


def _weight(value) -> float:
    w = float(value)
    if not math.isfinite(w):
        raise ModelError(f"reward weights and constants must be finite numbers, got {value!r}")
    return w
