"""Rewards: callables mapping a batch of site values to one value per particle.

:class:`Reward` is the protocol (``differentiable``, ``input``, composition by ``+``, ``*``, ``-`` and
``after``); plain callables remain accepted everywhere. Built-ins: analytic (:class:`Quadratic`,
:class:`LogDensity`), :class:`ClassifierLogProb` (alias :class:`ClassLogProb`), :class:`Symmetry`, and image rewards (:class:`CLIPScore`,
:class:`PickScore`, :class:`LAIONAesthetic`, :class:`JPEGCompressibility`), and sequence rewards
(:mod:`tilted.rewards.sequences`). See docs/rewards.md and docs/sequences.md.
"""

from tilted.rewards.aesthetic import AestheticHead, LAIONAesthetic
from tilted.rewards.analytic import LogDensity, Quadratic
from tilted.rewards.base import After, Function, Reward, WeightedSum, as_reward
from tilted.rewards.classifier import ClassifierLogProb, ClassLogProb
from tilted.rewards.clip import CLIPImageEncoder, CLIPScore, PickScore
from tilted.rewards.images import ImageReward
from tilted.rewards.jpeg import JPEGCompressibility
from tilted.rewards.pixels import Symmetry
from tilted.rewards.sequences import (
    Composition,
    Motif,
    PseudoLogLikelihood,
    PWMScore,
    SequenceRegressor,
    hydrophobic_fraction,
    net_charge,
)

__all__ = [
    "AestheticHead",
    "After",
    "CLIPImageEncoder",
    "CLIPScore",
    "Composition",
    "ClassLogProb",
    "ClassifierLogProb",
    "Function",
    "ImageReward",
    "JPEGCompressibility",
    "LAIONAesthetic",
    "LogDensity",
    "Motif",
    "PWMScore",
    "PickScore",
    "PseudoLogLikelihood",
    "Quadratic",
    "Reward",
    "SequenceRegressor",
    "Symmetry",
    "WeightedSum",
    "as_reward",
    "hydrophobic_fraction",
    "net_charge",
]
