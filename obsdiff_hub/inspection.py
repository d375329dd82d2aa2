"""What a checkpoint holds: class, pruned shapes per block, sparsity, provenance (reads files only)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from accelerate import init_empty_weights
from safetensors import safe_open

from .adapters import adapter_for
from .checkpoint import read_metadata
from .models import PROVENANCE_KEY, STRUCTURE_KEY, base_class_for
from .surgery import structure_of


def resolve_folder(source: str, revision: str | None = None) -> Path:
    """A local directory as is; a Hub repo id through ``snapshot_download`` (cache, token from env)."""
    if os.path.isdir(source):
        return Path(source)
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(source, revision=revision))


def denoiser_folder(folder: Path) -> Path:
    """The denoiser's folder: ``unet/`` or ``transformer/`` of a pipeline, or the folder itself."""
    if (folder / "model_index.json").is_file():
        index = json.loads((folder / "model_index.json").read_text())
        for name in ("unet", "transformer"):
            if name in index and (folder / name).is_dir():
                return folder / name
        raise ValueError(f"{folder}: model_index.json names no unet or transformer")
    if not (folder / "config.json").is_file():
        raise ValueError(f"{folder} is not a diffusers checkpoint (no model_index.json or config.json)")
    return folder


def inspect_checkpoint(source: str, revision: str | None = None) -> dict[str, Any]:
    folder = denoiser_folder(resolve_folder(source, revision))
    config = json.loads((folder / "config.json").read_text())
    name = config.get("_class_name", "")
    base = base_class_for(name)
    with init_empty_weights():
        skeleton = base.from_config({k: v for k, v in config.items() if not k.startswith(("_", "obsdiff_"))})
    adapter = adapter_for(skeleton)
    dense = structure_of(skeleton, adapter)
    now = {**dense, **{k: int(v) for k, v in (config.get(STRUCTURE_KEY) or {}).items()}}
    targeted = {f"{p}.weight" for u in adapter.units(skeleton, None, False) for s in u.sites for p in s.layers}
    files = sorted(folder.glob("*.safetensors"))
    zeros = total = tensors = 0
    for path in files:
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                if key in targeted:
                    t = f.get_tensor(key)
                    zeros += int((t == 0).sum())
                    total += t.numel()
                    tensors += 1
    record = dict(config.get(PROVENANCE_KEY) or {})
    if files:
        record.update({k: v for k, v in read_metadata(files[0]).items() if k != "format"})
    return {
        "path": str(folder),
        "class": name,
        "provenance": record,
        "structure": {k: (dense[k], now[k]) for k in dense if dense[k] != now[k]},
        "sparsity": zeros / total if total else 0.0,
        "targeted_weights": tensors,
    }
