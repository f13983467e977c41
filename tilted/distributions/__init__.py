"""Sequential distributions (diffusion models) and analytic data laws with exact denoisers."""

from tilted.distributions.adapters import from_diffusers
from tilted.distributions.gaussian import GaussianDiffusion, PointMass
from tilted.distributions.mixture import GaussianMixture
from tilted.distributions.process import SequentialProcess

__all__ = ["GaussianDiffusion", "GaussianMixture", "PointMass", "SequentialProcess", "from_diffusers"]
