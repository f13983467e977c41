"""The LAION aesthetic predictor (improved aesthetic predictor v2, C. Schuhmann).

r(x) = MLP(E_I(x) / ‖E_I(x)‖): E_I the CLIP ViT-L/14 image embedding (``get_image_features``, 768
dimensions), L2-normalised, then a linear-regression MLP head trained on SAC, LAION-Logos and AVA
ratings (about 1–10). The head is Linear(768, 1024), Dropout, Linear(1024, 128), Dropout,
Linear(128, 64), Dropout, Linear(64, 16), Linear(16, 1), with the original state-dict keys
``layers.{0,2,4,6,7}.{weight,bias}``; its weights are the file ``sac+logos+ava1-l14-linearMSE.pth`` of
https://github.com/christophschuhmann/improved-aesthetic-predictor, loaded from a local path. This is
the reward of DDPO and DAS. The preprocessing is the differentiable one of :mod:`tilted.rewards.clip`.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from tilted.errors import ModelError
from tilted.rewards.clip import CLIP_L14, CLIPImageEncoder, load_clip
from tilted.rewards.images import ImageReward
from tilted.rewards.loading import frozen, load_state_dict

HEAD_FILE = "sac+logos+ava1-l14-linearMSE.pth"
HEAD_URL = f"https://github.com/christophschuhmann/improved-aesthetic-predictor/raw/main/{HEAD_FILE}"


class AestheticHead(nn.Module):
    """The MLP head of the LAION aesthetic predictor v2, for embeddings of dimension ``dim`` (768 for ViT-L/14)."""

    def __init__(self, dim: int = 768):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(dim, 1024),
            nn.Dropout(0.2),
            nn.Linear(1024, 128),
            nn.Dropout(0.2),
            nn.Linear(128, 64),
            nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.layers(embedding)


class LAIONAesthetic(ImageReward):
    """r(x) = head(E_I(x) / ‖E_I(x)‖), the LAION aesthetic score (about 1–10; higher is more aesthetic).

    Input: images ``(*batch, 3, H, W)`` in [0, 1]; output float32 ``(*batch)`` on their device.
    Differentiable. Cost: one CLIP ViT-L/14 image forward per image (the head is negligible).

    Parameters
    ----------
    model
        A transformers ``CLIPModel`` (ViT-L/14 for the published head); frozen, eval mode.
    processor
        Its ``CLIPProcessor`` (or a ``CLIPImageProcessor``): the preprocessing settings.
    head
        An :class:`AestheticHead` whose input dimension is the model's ``projection_dim``.
    """

    def __init__(self, model, processor, head: AestheticHead):
        self.model = frozen(model)
        param = next(self.model.parameters())
        self.head = frozen(head, device=param.device, dtype=param.dtype)
        self.encoder = CLIPImageEncoder(self.model, getattr(processor, "image_processor", processor))

    @classmethod
    def from_pretrained(
        cls,
        path_or_hub_id: str | os.PathLike = CLIP_L14,
        *,
        head: str | os.PathLike = HEAD_FILE,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        **kwargs,
    ) -> LAIONAesthetic:
        """Load CLIP (a local folder or cached hub id, default ``openai/clip-vit-large-patch14``) and the
        head weights from the local file ``head``; ``dtype`` is the compute dtype (the reward stays
        float32). Extra keyword arguments go to transformers' ``from_pretrained``."""
        call = f"{cls.__name__}.from_pretrained"
        state = load_state_dict(
            head, what="LAION aesthetic head", url=HEAD_URL, call=f"{call}(..., head='path/to/{HEAD_FILE}')"
        )
        model, proc = load_clip(path_or_hub_id, call=call, default_id=CLIP_L14, device=device, dtype=dtype, **kwargs)
        dim = model.config.projection_dim
        mlp = AestheticHead(dim)
        try:
            mlp.load_state_dict(state)
        except RuntimeError as error:
            raise ModelError(
                f"the aesthetic head in {os.fspath(head)!r} does not fit a CLIP model with {dim}-dimensional image "
                f"embeddings (the published head is for ViT-L/14, 768 dimensions): {str(error).splitlines()[0]}"
            ) from error
        return cls(model, proc, mlp)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        self.check(images)
        embedding = self.encoder(images)
        return self.head(embedding.to(self.head.layers[0].weight.dtype)).squeeze(-1).float().to(images.device)

    def __repr__(self) -> str:
        return f"LAIONAesthetic(dim={self.head.layers[0].in_features})"
