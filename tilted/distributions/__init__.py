"""Sequential distributions (diffusion models) and analytic data laws with exact denoisers."""

from tilted.distributions.adapters import from_diffusers
from tilted.distributions.flow import FlowMatching
from tilted.distributions.flow_pipelines import LatentFlow
from tilted.distributions.gaussian import GaussianDiffusion, GaussianPath, PointMass
from tilted.distributions.masked import MaskedDiffusion
from tilted.distributions.masked_lm import MaskedLM, from_masked_lm
from tilted.distributions.mixture import GaussianMixture
from tilted.distributions.pipelines import GuidedUNet, LatentDiffusion, VAEDecoder, from_pipeline, load_pipeline
from tilted.distributions.process import SequentialProcess
from tilted.distributions.tabular import TableReward, TabularSequences

__all__ = [
    "FlowMatching",
    "GaussianDiffusion",
    "GaussianPath",
    "GaussianMixture",
    "GuidedUNet",
    "LatentDiffusion",
    "LatentFlow",
    "MaskedDiffusion",
    "MaskedLM",
    "PointMass",
    "SequentialProcess",
    "TableReward",
    "TabularSequences",
    "VAEDecoder",
    "from_diffusers",
    "from_masked_lm",
    "from_pipeline",
    "load_pipeline",
]
