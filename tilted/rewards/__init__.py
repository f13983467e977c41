"""Rewards: callables mapping a batch of site values to one value per particle.

:class:`Reward` is the protocol (``differentiable``, ``input``, composition by ``+``, ``*``, ``-`` and
``after``); plain callables remain accepted everywhere. Built-ins: analytic (:class:`Quadratic`,
:class:`LogDensity`), :class:`ClassifierLogProb`, and image rewards (:class:`JPEGCompressibility`).
"""

from tilted.rewards.analytic import LogDensity, Quadratic
from tilted.rewards.base import After, Function, Reward, WeightedSum, as_reward
from tilted.rewards.classifier import ClassifierLogProb
from tilted.rewards.images import ImageReward
from tilted.rewards.jpeg import JPEGCompressibility

__all__ = [
    "After",
    "ClassifierLogProb",
    "Function",
    "ImageReward",
    "JPEGCompressibility",
    "LogDensity",
    "Quadratic",
    "Reward",
    "WeightedSum",
    "as_reward",
]
