"""Inference engines: sequential Monte Carlo and importance sampling, with their building blocks."""

from tilted.inference.importance import Importance
from tilted.inference.potentials import Max, Potential, Sum, Terminal, Tweedie, Twist
from tilted.inference.presets import das, fk_steering
from tilted.inference.result import Counts, Result, StepTrace
from tilted.inference.smc import SMC

__all__ = [
    "SMC",
    "Counts",
    "Importance",
    "Max",
    "Potential",
    "Result",
    "StepTrace",
    "Sum",
    "Terminal",
    "Tweedie",
    "Twist",
    "das",
    "fk_steering",
]
