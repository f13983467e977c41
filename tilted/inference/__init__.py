"""Inference engines: sequential Monte Carlo, importance sampling, guidance and search, with their building blocks."""

from tilted.inference.bandit import NoiseSearch
from tilted.inference.budget import Budget, BudgetError
from tilted.inference.evolution import EvolutionarySearch
from tilted.inference.gibbs import ParticleGibbs, SweepTrace
from tilted.inference.guidance import DPS, MPGD, FreeDoM, TaylorGuidance
from tilted.inference.importance import Importance
from tilted.inference.learned import LearnedSoftValue
from tilted.inference.nested import NestedIS
from tilted.inference.potentials import GaussianSoftValue, Max, Potential, Sum, Terminal, Tweedie, Twist
from tilted.inference.presets import das, fk_steering
from tilted.inference.result import Counts, Result, StepTrace
from tilted.inference.search import SVDD, BeamSearch, BestOfN
from tilted.inference.smc import SMC
from tilted.inference.tree import TreeSearch

__all__ = [
    "DPS",
    "MPGD",
    "SMC",
    "SVDD",
    "BeamSearch",
    "Budget",
    "BudgetError",
    "BestOfN",
    "Counts",
    "EvolutionarySearch",
    "FreeDoM",
    "GaussianSoftValue",
    "Importance",
    "LearnedSoftValue",
    "Max",
    "NestedIS",
    "NoiseSearch",
    "ParticleGibbs",
    "Potential",
    "Result",
    "StepTrace",
    "SweepTrace",
    "TaylorGuidance",
    "TreeSearch",
    "Sum",
    "Terminal",
    "Tweedie",
    "Twist",
    "das",
    "fk_steering",
]
