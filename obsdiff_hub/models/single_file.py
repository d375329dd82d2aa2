"""Loading a single ``.safetensors`` file that obsdiff-hub exported (``obsdiff-hub export --format single-file``):
the original key layout (LDM for UNets, Stability's and Black Forest Labs' for the transformers), with the
model's config, pruned shapes, kept indices and provenance in the file's metadata, so no config folder and no
download is needed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from accelerate import init_empty_weights
from diffusers import UNet2DConditionModel
from diffusers.loaders.single_file_utils import LDM_UNET_KEY, convert_ldm_unet_checkpoint
from safetensors.torch import load_file
from torch import nn

from ..architectures import architecture_of
from ..architectures.original_keys import LAYOUTS, from_original
from ..errors import CheckpointError, ObsDiffError, first_line
from ..storage import jsonio
from ..storage.files import read_metadata
from .keys import KEPT_KEY, PROVENANCE_KEY, STRUCTURE_KEY, plain_config

CONFIG_METADATA = "obsdiff_config"  # the exported model's diffusers config, as JSON
MAX_CONFIG_BYTES = 1 << 20


def exported_config(path: Path) -> dict[str, Any] | None:
    """The config an obsdiff-hub export carries in its metadata, or None for any other single file."""
    text = read_metadata(path).get(CONFIG_METADATA)
    if text is None:
        return None
    if len(text) > MAX_CONFIG_BYTES:
        raise CheckpointError(f"{path}: its {CONFIG_METADATA} metadata is over {MAX_CONFIG_BYTES} bytes")
    try:
        config = jsonio.loads(text)
    except ValueError as error:
        raise CheckpointError(f"{path}: its {CONFIG_METADATA} metadata is not valid JSON ({error})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: its {CONFIG_METADATA} metadata is not a JSON object")
    return config


def load_exported(cls: type, path: Path, config: dict[str, Any], torch_dtype: torch.dtype | None = None) -> Any:
    """The model of an obsdiff-hub single-file export, as ``cls`` (an OBSDiff class), weights bit for bit."""
    name = str(config.get("_class_name", ""))[:80]
    if name not in {c.__name__ for c in cls.__mro__}:
        raise CheckpointError(f"{path}: holds a {name or 'model of no class'}, which {cls.__name__} cannot load")
    try:  # the class's own __init__ bounds the config and applies the pruned shapes
        with init_empty_weights():
            model = cls.from_config({**plain_config(config), STRUCTURE_KEY: config.get(STRUCTURE_KEY) or {}})
    except ObsDiffError:
        raise
    except (TypeError, ValueError, KeyError, AttributeError, IndexError, RuntimeError) as error:
        raise CheckpointError(f"{path}: its config does not build a {cls.__name__} ({first_line(error)})") from None
    tensors = load_file(path)
    try:
        state = _diffusers_state(model, tensors, config)
    except CheckpointError as error:
        raise CheckpointError(f"{path}: {error}") from None
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as error:  # torch lists the mismatches from its second line on
        reason = str(error).strip().splitlines()
        raise CheckpointError(
            f"{path}: does not match its own config ({reason[1].strip() if len(reason) > 1 else reason[0]})"
        ) from None
    model.register_to_config(**{k: config[k] for k in (KEPT_KEY, PROVENANCE_KEY) if k in config})
    return model.to(torch_dtype) if torch_dtype is not None else model


def _diffusers_state(model: nn.Module, tensors: dict[str, torch.Tensor], config: dict[str, Any]) -> dict[str, Any]:
    """The exported ``tensors`` under ``model``'s diffusers names: diffusers' own LDM reader for a UNet, the
    inverse of the export's layout for a transformer (split by the pruned model's row counts)."""
    layout = LAYOUTS.get(architecture_of(model).model_class_name)
    if layout is not None:
        return from_original(tensors, model, layout)
    if not isinstance(model, UNet2DConditionModel):
        raise CheckpointError(f"{type(model).__name__} has no single-file layout")
    foreign = sorted(k for k in tensors if not k.startswith(LDM_UNET_KEY))
    if foreign:
        raise CheckpointError(f"holds {foreign[0]}, not a UNet weight; export the UNet alone")
    return convert_ldm_unet_checkpoint(tensors, plain_config(config))
