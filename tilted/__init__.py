"""tilted: sample reward-tilted diffusion targets p(x) ∝ p_θ(x) · exp(r(x)/α) at test time.

Write the model in Pyro (a sequential process at a ``pyro.sample`` site, rewards as
:func:`factor` statements), then run an engine from :mod:`tilted.inference`.
"""

from tilted import _progress  # noqa: F401  (first: it imports tqdm.auto, which pyro imports, without warnings)
from tilted.errors import (
    DegenerateWeightsError,
    ModelError,
    NoDensityError,
    NonFiniteError,
    ShapeError,
    TiltedError,
)
from tilted.factor import Factor, factor
from tilted.plan import Plan, read_plan

__version__ = "0.1.0"

__all__ = [
    "DegenerateWeightsError",
    "Factor",
    "ModelError",
    "NoDensityError",
    "NonFiniteError",
    "Plan",
    "ShapeError",
    "TiltedError",
    "__version__",
    "factor",
    "read_plan",
]
