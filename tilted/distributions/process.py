"""Sequential processes: a diffusion chain x_K → … → x_0 seen as one Pyro distribution over x_0.

A :class:`SequentialProcess` is a Pyro ``TorchDistribution`` whose *value* is the terminal state x_0
and whose *structure* is a Markov chain with K steps. Levels are numbered k = K, …, 0: x_K is drawn
from :meth:`draw_initial`, then step k moves x_k to x_{k-1} through the kernel
:meth:`transition`. Engines walk the chain level by level; plain Pyro only sees
:meth:`sample`, which runs the whole chain.

``log_prob`` raises :class:`~tilted.errors.NoDensityError`: the marginal density of x_0 under a
diffusion chain has no closed form. Pyro's ``poutine.trace`` and ``Predictive`` never ask for it;
what asks for it (MCMC, ``trace.log_prob_sum()``) cannot use a diffusion model correctly anyway.
Each transition has a density (where it is not deterministic): use :meth:`transition`.
"""

from __future__ import annotations

import abc

import torch
from pyro.distributions import TorchDistribution
from torch.distributions import constraints

from tilted._random import Seed, as_generator
from tilted.errors import NoDensityError


class SequentialProcess(TorchDistribution, abc.ABC):
    """A Markov chain x_K → x_0 whose terminal value is the sample; base of every diffusion model."""

    arg_constraints: dict = {}
    support = constraints.real

    def __init__(self, event_shape: torch.Size, num_steps: int, batch_shape: torch.Size = torch.Size()):
        if int(num_steps) < 1:
            raise ValueError(f"num_steps must be a positive integer, got {num_steps}")
        self.num_steps = int(num_steps)
        super().__init__(batch_shape=torch.Size(batch_shape), event_shape=torch.Size(event_shape), validate_args=False)

    # -- the chain --------------------------------------------------------------------------
    @abc.abstractmethod
    def draw_initial(self, shape: torch.Size, generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw x_K with batch shape ``shape``."""

    @abc.abstractmethod
    def initial(self) -> torch.distributions.Distribution:
        """The law of x_K (a torch distribution over one event)."""

    @abc.abstractmethod
    def predict(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """The denoiser's prediction of x_0 from x_k (Tweedie mean or per-token probabilities)."""

    @abc.abstractmethod
    def transition(self, x: torch.Tensor, k: int, prediction: torch.Tensor | None = None):
        """The kernel p(x_{k-1} | x_k) as a torch distribution; ``prediction`` reuses :meth:`predict`."""

    @abc.abstractmethod
    def draw_transition(
        self,
        x: torch.Tensor,
        k: int,
        generator: torch.Generator | None = None,
        prediction: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Draw x_{k-1} ~ p(· | x_k)."""

    @property
    def device(self) -> torch.device:
        """Where the chain's states live: the denoiser's device (its first parameter or buffer), else CPU."""
        return module_device(getattr(self, "denoiser", None))

    def is_deterministic(self, k: int) -> bool:
        """Whether step k (x_k → x_{k-1}) is a deterministic map with no transition density."""
        return False

    @property
    def levels(self) -> range:
        """The levels k = K, …, 1 at which a step x_k → x_{k-1} is taken, in sampling order."""
        return range(self.num_steps, 0, -1)

    # -- Pyro distribution -------------------------------------------------------------------
    def sample(self, sample_shape: torch.Size = torch.Size(), generator: Seed = None) -> torch.Tensor:
        """Ancestral sampling of x_0, shape ``sample_shape + batch_shape + event_shape``."""
        gen = as_generator(generator, self.device)
        shape = torch.Size(sample_shape) + self.batch_shape
        with torch.no_grad():
            x = self.draw_initial(shape, gen)
            for k in self.levels:
                x = self.draw_transition(x, k, gen)
        return x

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        raise NoDensityError(
            f"{type(self).__name__}.log_prob: the marginal density of x_0 under a diffusion chain has "
            "no closed form. Use a tilted engine (tilted.inference.SMC, Importance) to sample the tilted "
            "target, or .transition(x, k).log_prob(...) for the density of one step."
        )

    def expand(self, batch_shape, _instance=None):
        if torch.Size(batch_shape) == self.batch_shape:
            return self
        return super().expand(batch_shape, _instance)

    def placeholder(self) -> torch.Tensor:
        """A value of the right shape that stands in for the site while a model is read into a plan."""
        return torch.zeros(self.batch_shape + self.event_shape, device=self.device)


def module_device(module) -> torch.device:
    """The device of a ``torch.nn.Module``'s first parameter or buffer (a ``device`` attribute otherwise), or CPU."""
    if isinstance(module, torch.nn.Module):
        for t in module.parameters():
            return t.device
        for t in module.buffers():
            return t.device
    device = getattr(module, "device", None)
    return torch.device(device) if isinstance(device, (str, torch.device)) else torch.device("cpu")
