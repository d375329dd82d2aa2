"""``obsdiff-hub export --format single-file``: a pruned denoiser as one ``.safetensors`` file in its original key
layout (LDM / SGM for UNets, Stability's for SD3 / SD3.5, Black Forest Labs' for Flux), for the tools that read one
file (ComfyUI, A1111 / Forge, InvokeAI, ``from_single_file``).

The file holds the denoiser's tensors and, in its metadata, the diffusers config with the pruned shapes, kept
indices and provenance: ``OBSDiffUNet.from_single_file(FILE)`` (and the MMDiT / Flux twins) rebuilds the pruned
model from it alone. Unstructured and N:M exports have the base's shapes, so any tool that reads the base's
single file reads them; a structured export needs a loader that takes the per-block widths from the metadata.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..architectures import architecture_of
from ..architectures.ldm_keys import unet_to_ldm
from ..architectures.original_keys import LAYOUTS, to_original
from ..errors import CheckpointError, InputError
from ..models.building import pruned_class_for
from ..models.single_file import CONFIG_METADATA, exported_config
from ..storage.files import checkpoint_files, read_json, write_safetensors_file
from ..storage.outputs import OutputError
from .inspection import denoiser_folder


def check_replaceable(out: Path, overwrite: bool) -> None:
    """``out`` may be written: it does not exist, or it is an earlier export of this tool and ``overwrite``."""
    if out.is_symlink() or (out.exists() and not out.is_file()):
        raise OutputError(f"{out} is a link or not a file; refusing to replace it")
    if not out.exists():
        return
    if not overwrite:
        raise OutputError(f"{out} exists; pass `overwrite` to replace it")
    try:
        ours = exported_config(out) is not None
    except CheckpointError:
        ours = False
    if not ours:
        raise OutputError(f"{out} is not a file obsdiff-hub exported; refusing to replace it (move it away first)")


def export_single_file(
    checkpoint: str | Path, out: str | Path, *, torch_dtype: torch.dtype | None = None, overwrite: bool = False
) -> Path:
    """Write the checkpoint's denoiser (UNet, SD3 or Flux transformer) to ``out`` as one original-layout safetensors
    file (``torch_dtype``: the stored dtype, default the checkpoint's own); returns ``out``."""
    out = Path(out)
    if out.suffix != ".safetensors":
        raise InputError(f"`out` must name a .safetensors file, got {out}")
    check_replaceable(out, overwrite)
    folder = denoiser_folder(Path(checkpoint))
    name = str(read_json(folder / "config.json").get("_class_name", ""))
    try:
        cls = pruned_class_for(name)
    except InputError:
        raise InputError(
            f"{checkpoint}: single-file export covers SDXL / SD 2.1 UNets and SD3 / Flux transformers, "
            f"not {name or 'this model'}"
        ) from None
    checkpoint_files(folder)  # a link out of the checkpoint, or a special file, is refused before anything is read
    model = cls.from_pretrained(folder, torch_dtype=torch_dtype)
    config = json.loads(model.to_json_string())
    layout = LAYOUTS.get(architecture_of(model).model_class_name)
    tensors = (
        to_original(model, layout)
        if layout is not None
        else {k: v.contiguous() for k, v in unet_to_ldm(model.state_dict(), config).items()}
    )
    metadata = {"format": "pt", CONFIG_METADATA: json.dumps(config, sort_keys=True)}
    out.parent.mkdir(parents=True, exist_ok=True)
    write_safetensors_file(out, tensors, metadata)
    return out
