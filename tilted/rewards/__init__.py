"""Rewards: callables mapping a batch of site values to one value per particle."""

from tilted.rewards.analytic import Quadratic

__all__ = ["Quadratic"]
