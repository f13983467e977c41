"""Loading the networks behind rewards offline, with errors that say what to download.

Everything loads from a local folder or file; a hub id works only where its files are in the Hugging
Face cache or the network is reachable. When neither holds (``HF_HUB_OFFLINE=1`` makes transformers
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


def frozen(module: torch.nn.Module, *, device=None, dtype=None) -> torch.nn.Module:
    """``module`` moved to ``device``/``dtype``, in eval mode, with ``requires_grad_(False)``."""
    if device is not None or dtype is not None:
        module = module.to(device=device, dtype=dtype)
    return module.eval().requires_grad_(False)


def is_local(source: str | os.PathLike) -> bool:
    """Whether ``source`` names a local path (it exists, or it cannot be a hub id ``owner/name``)."""
    text = os.fspath(source)
    return isinstance(source, os.PathLike) or Path(text).expanduser().exists() or not _HUB_ID.match(text)


#: ``hf download`` filters: a model without its TensorFlow/Flax copies, a processor's text files only
FILES = {
    "model": ' --exclude "*.h5" --exclude "*.msgpack"',
    "processor": ' --include "*.json" --include "*.txt"',
}


def download_hint(hub_id: str, usage: str, *, files: str = "model") -> str:
    """How to fetch ``hub_id`` where there is network and use it offline; ``usage`` is a template of the
    call with ``{folder}`` where the folder goes."""
    folder = f"models/{hub_id.rsplit('/', 1)[-1]}"
    return (
        f"download it where there is network with\n    hf download {hub_id}{FILES[files]} --local-dir {folder}\n"
        f"(the `hf` command comes with huggingface_hub), copy the folder here and pass its path: "
        + usage.format(folder=repr(folder))
    )


def from_pretrained(
    loader, source: str | os.PathLike, *, what: str, default_id: str, usage: str, files: str = "model", **kwargs
):
    """``loader.from_pretrained(source, **kwargs)``; a missing folder or unreachable hub id raises
    :class:`~tilted.errors.MissingWeightsError` with the download command (for ``source`` if it is a hub
    id, else for ``default_id``) and the call (``usage``, a template with ``{folder}``)."""
    text = os.fspath(source)
    local = is_local(source)
    hub_id = default_id if local else text
    if local and not Path(text).expanduser().is_dir():
        raise MissingWeightsError(
            f"{what}: no folder at {text!r}. The default is {default_id!r} from the Hugging Face hub: "
            + download_hint(hub_id, usage, files=files)
        )
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
        hint = download_hint(hub_id, usage, files=files)
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
