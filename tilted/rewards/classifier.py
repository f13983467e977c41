"""The log-probability of a class under any torch classifier: r(x) = log softmax(f(x))_y.

With r = log p(y | x) and α = 1 the tilted target p_θ(x) p(y | x) / Z is the posterior p(x | y) of the
pretrained model conditioned on the label: classifier guidance, done exactly by SMC or importance
sampling.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from tilted.errors import ModelError, ShapeError
from tilted.rewards.base import Reward
from tilted.rewards.loading import frozen


class ClassifierLogProb(Reward):
    """r(x) = log softmax(f(x))[..., y]: the log-probability of class y under a classifier f.

    Input: whatever f takes (input ``"any"``). Output: the logits' batch shape, float32 (logits of
    any precision are upcast before the softmax). Differentiable when f is. Cost: one call of f.

    Parameters
    ----------
    classifier
        f, mapping inputs to logits ``(*batch, C)``. A ``torch.nn.Module`` is put in eval mode with
        frozen parameters (``freeze=False`` leaves it as it is).
    target
        y: a class index, or an integer tensor that broadcasts against the batch shape (one class per
        particle, or per prompt, ...).
    event_dim
        Number of trailing dimensions of one input (3 for images ``(C, H, W)``). When given, the batch
        dimensions are flattened into one before calling f and restored after, so a classifier that
        takes ``(B, C, H, W)`` works on any batch shape. ``None`` calls f on x as it is.
    """

    input = "any"

    def __init__(
        self,
        classifier: Callable[[torch.Tensor], torch.Tensor],
        target: int | torch.Tensor,
        *,
        event_dim: int | None = None,
        freeze: bool = True,
    ):
        if not callable(classifier):
            raise ModelError(f"classifier must be callable (inputs -> logits), got {type(classifier).__name__}")
        if isinstance(classifier, torch.nn.Module) and freeze:
            classifier = frozen(classifier)
        self.classifier = classifier
        target = torch.as_tensor(target)
        if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
            raise ModelError(f"target must be an integer class index (or a tensor of them), got dtype {target.dtype}")
        self.target = target.long()
        self.event_dim = event_dim

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """f(x) with shape ``(*batch, C)`` (batch dimensions flattened around the call if ``event_dim``)."""
        if self.event_dim is None:
            return self.classifier(x)
        if x.ndim < self.event_dim:
            raise ShapeError(f"ClassifierLogProb with event_dim={self.event_dim} got x of shape {tuple(x.shape)}")
        batch = x.shape[: x.ndim - self.event_dim]
        logits = self.classifier(x.reshape((-1,) + x.shape[len(batch) :]))
        return logits.reshape(batch + logits.shape[-1:])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        log_probs = torch.log_softmax(self.logits(x).float(), dim=-1)
        num_classes = log_probs.shape[-1]
        target = self.target.to(log_probs.device)
        if ((target < 0) | (target >= num_classes)).any():
            raise ModelError(f"target classes {target.unique().tolist()} are not all in 0..{num_classes - 1}")
        try:
            index = target.expand(log_probs.shape[:-1])
        except RuntimeError:
            raise ShapeError(
                f"target of shape {tuple(target.shape)} does not broadcast against the batch shape "
                f"{tuple(log_probs.shape[:-1])} of the logits"
            ) from None
        return log_probs.gather(-1, index.unsqueeze(-1)).squeeze(-1)

    def __repr__(self) -> str:
        target = self.target.item() if self.target.ndim == 0 else f"tensor{tuple(self.target.shape)}"
        return f"ClassifierLogProb({type(self.classifier).__name__}, target={target})"


#: ``ClassLogProb(classifier, label)``: the name of the class-conditioning reward in the digits
#: examples and the DAS literature; the same reward as :class:`ClassifierLogProb`.
ClassLogProb = ClassifierLogProb
