"""Loading the networks behind rewards and pipelines offline, with errors that say what to download.

Everything loads from a local folder or file; a hub id works only where its files are in the Hugging
Face cache or the network is reachable. A path that looks local (``models/x``, ``./x``, ``/x``, ``~/x``)
is never tried as a hub id; for the models the docs use (``KNOWN``) a missing folder names the real hub
id to download. When neither holds (``HF_HUB_OFFLINE=1`` makes transformers
fail at once), :class:`~tilted.errors.MissingWeightsError` names the exact ``hf download`` command and
how to pass the downloaded folder.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from tilted.errors import MissingWeightsError

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
#: first folders that are local even where they look like a hub owner (the docs' ``models/<name>``;
#: huggingface.co/models is no user)
LOCAL_ROOTS = ("models",)


def frozen(module: torch.nn.Module, *, device=None, dtype=None) -> torch.nn.Module:
    """``module`` moved to ``device``/``dtype``, in eval mode, with ``requires_grad_(False)``."""
    if device is not None or dtype is not None:
        module = module.to(device=device, dtype=dtype)
    return module.eval().requires_grad_(False)


def is_local(source: str | os.PathLike) -> bool:
    """Whether ``source`` names a local path: a path object, a path that exists, one that cannot be a hub id
    ``owner/name`` (``./x``, ``../x``, ``/x``, ``~/x``, ``a/b/c``), or one under ``models/``."""
    text = os.fspath(source)
    if isinstance(source, os.PathLike) or Path(text).expanduser().exists() or not _HUB_ID.match(text):
        return True
    return text.split("/", 1)[0] in LOCAL_ROOTS and "/" in text


#: ``hf download`` filters: a model without its TensorFlow/Flax copies, a processor's text files only,
#: Stable Diffusion's diffusers weights only (docs/pipelines.md), FLUX without its single-file copies
FILES = {
    "model": ' --exclude "*.h5" --exclude "*.msgpack"',
    "processor": ' --include "*.json" --include "*.txt"',
    "stable-diffusion": ' --include "*.json" --include "*.txt" --include "*/diffusion_pytorch_model.safetensors" '
    '--include "text_encoder/model.safetensors"',
    "flux": ' --exclude "flux1-*.safetensors" --exclude "ae.safetensors"',
}

#: the models the docs use, by hub id: their ``FILES`` filters (the docs keep each in ``models/<name>``)
KNOWN = {
    "openai/clip-vit-large-patch14": "model",
    "yuvalkirstain/PickScore_v1": "model",
    "laion/CLIP-ViT-H-14-laion2B-s32B-b79K": "processor",
    "stable-diffusion-v1-5/stable-diffusion-v1-5": "stable-diffusion",
    "black-forest-labs/FLUX.1-dev": "flux",
    "black-forest-labs/FLUX.1-schnell": "flux",
    "facebook/esm2_t6_8M_UR50D": "model",
}

#: what else to know about downloading a known model
NOTES = {
    "stable-diffusion-v1-5/stable-diffusion-v1-5": "these files leave out the safety checker: load with "
    "safety_checker=None, requires_safety_checker=False",
    "black-forest-labs/FLUX.1-dev": "a gated repository: accept its licence on the hub and run `hf auth login` first",
}


def known_id(source: str | os.PathLike) -> str | None:
    """The hub id of a model the docs use, from that id or the name of its folder (``models/<name>``)."""
    text = os.fspath(source)
    name = Path(text).name
    return next((i for i in KNOWN if text == i or i.rsplit("/", 1)[-1] == name), None)


def download_hint(hub_id: str | None, usage: str, *, files: str | None = None, folder: str | None = None) -> str:
    """How to fetch ``hub_id`` where there is network into ``folder`` (default ``models/<name>``) and use it
    offline; ``usage`` is a template of the call with ``{folder}`` where the folder goes. ``files`` names
    the ``FILES`` filter (default: the known model's, else ``"model"``); no ``hub_id``: the generic command."""
    if hub_id is None:
        folder = folder or "models/NAME"
        return (
            f"create it where there is network with\n    hf download OWNER/NAME --local-dir {folder}\n"
            "(OWNER/NAME: the model's hub id; the `hf` command comes with huggingface_hub), copy the folder here and "
            "pass its path: " + usage.format(folder=repr(folder)) + "; or pass a hub id whose files are in the "
            "local Hugging Face cache"
        )
    folder = folder or f"models/{hub_id.rsplit('/', 1)[-1]}"
    note = f"; {NOTES[hub_id]}" if hub_id in NOTES else ""
    return (
        f"download it where there is network with\n    hf download {hub_id}{FILES[files or KNOWN.get(hub_id, 'model')]} "
        f"--local-dir {folder}\n(the `hf` command comes with huggingface_hub{note}), copy the folder here and pass "
        "its path: " + usage.format(folder=repr(folder))
    )


def from_pretrained(
    loader,
    source: str | os.PathLike,
    *,
    what: str,
    default_id: str | None,
    usage: str,
    files: str | None = None,
    **kwargs,
):
    """``loader.from_pretrained(source, **kwargs)``; a missing folder or unreachable hub id raises
    :class:`~tilted.errors.MissingWeightsError` with the download command and the call (``usage``, a
    template with ``{folder}``): for ``source`` if it is a hub id or the folder of a model the docs use
    (``KNOWN``), else for ``default_id`` (``None``: the generic command)."""
    text = os.fspath(source)
    local = is_local(source)
    known = known_id(text) if local else None
    hub_id = known or (default_id if local else text)
    folder = text if local and (known or hub_id is None) else None  # else models/<name> of the default
    if local and not Path(text).expanduser().is_dir():
        hint = download_hint(hub_id, usage, files=files, folder=folder)
        if known:
            hint = f"It is {known!r} on the Hugging Face hub: {hint}"
        elif hub_id:
            hint = (
                f"Pass the hub id of the model you meant, or create that folder with its files; the default is "
                f"{hub_id!r} from the Hugging Face hub: {hint}"
            )
        raise MissingWeightsError(f"{what}: no folder at {text!r}. {hint[0].upper()}{hint[1:]}")
    try:
        return loader.from_pretrained(str(Path(text).expanduser()) if local else text, **kwargs)
    except OSError as error:
        if local:
            reason = f"the folder {text!r} lacks files that {loader.__name__} needs ({first_line(error)})"
        else:
            reason = (
                f"{text!r} is not a local folder, and as a hub id it is neither in the local Hugging Face cache "
                f"nor reachable ({first_line(error)})"
            )
        hint = download_hint(hub_id, usage, files=files, folder=folder)
        raise MissingWeightsError(f"{what}: {reason}. To use it offline, {hint}") from error


def load_state_dict(path: str | os.PathLike, *, what: str, url: str, call: str) -> dict[str, torch.Tensor]:
    """The tensors of a local ``.pth``/``.pt`` file (``torch.load(weights_only=True)``), or a
    :class:`~tilted.errors.MissingWeightsError` that gives the URL to download it from."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise MissingWeightsError(
            f"{what}: no file at {str(path)!r}. Download it from\n    {url}\n"
            f"(for example `curl -L -o {path.name} {url}`) and pass its path: {call}"
        )
    return torch.load(path, map_location="cpu", weights_only=True)


def first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"
