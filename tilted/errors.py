"""The exceptions tilted raises: one base class, one subclass per kind of mistake.

Every message says what was wrong and what to do about it.
"""

from __future__ import annotations


class TiltedError(Exception):
    """Base class of every error raised by tilted."""


class ModelError(TiltedError, ValueError):
    """The model, a factor statement or a process was specified in a way engines cannot run."""


class ShapeError(TiltedError, ValueError):
    """A tensor (denoiser output, reward value, particle batch) has the wrong shape."""


class NoDensityError(TiltedError, NotImplementedError):
    """A density was asked of something that has none (a deterministic kernel, the marginal of x_0)."""


class NonFiniteError(TiltedError, FloatingPointError):
    """A reward, potential or weight came out NaN or infinite."""


class DegenerateWeightsError(TiltedError, FloatingPointError):
    """All importance weights are zero (log weight −∞): nothing can be resampled."""


class MissingWeightsError(ModelError, FileNotFoundError):
    """Pretrained weights (a model folder, a hub id, a weights file) are not available offline."""
