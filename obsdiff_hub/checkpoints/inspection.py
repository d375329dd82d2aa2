"""What a checkpoint holds: class, pruned shapes per block, sparsity, provenance (reads files only)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..architectures import HeadCoupling, architecture_of
from ..architectures.kept import decode, ranges
from ..architectures.surgery import structure_of
from ..errors import CheckpointError, InputError
from ..hub import resolve_source
from ..models import (
    KEPT_KEY,
    PROVENANCE_KEY,
    STRUCTURE_KEY,
    base_class_for,
    build_model,
    pruned_class_for,
)
from ..storage.files import (
    check_config_bounds,
    checkpoint_files,
    read_json,
    read_metadata,
    safetensors_header,
    tensor_shapes,
)


def denoiser_folder(folder: Path) -> Path:
    """The denoiser's folder: ``unet/`` or ``transformer/`` of a pipeline, or the folder itself."""
    if (folder / "model_index.json").is_file():
        index = read_json(folder / "model_index.json")
        for name in ("unet", "transformer"):
            if name in index and (folder / name).is_dir():
                return folder / name
        raise CheckpointError(f"{folder}: model_index.json names no unet or transformer")
    if not (folder / "config.json").is_file():
        raise CheckpointError(f"{folder} is not a diffusers checkpoint (no model_index.json or config.json)")
    return folder


@dataclass
class CheckpointInfo:
    """What ``obsdiff-hub inspect`` shows: where, which class and how to load it, provenance, the
    pruned shapes (module → ``{"kind": "heads" or "neurons", "dense": n, "now": m, "kept": "0-2,5"}``),
    the zero fraction of the targeted weights, and whether adapters of the dense base map onto it."""

    path: str
    class_name: str
    load_with: str
    provenance: dict[str, str]
    structure: dict[str, dict[str, Any]]
    sparsity: float
    targeted_weights: int
    adapters: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "class": self.class_name,
            "load_with": self.load_with,
            "provenance": self.provenance,
            "structure": self.structure,
            "sparsity": self.sparsity,
            "targeted_weights": self.targeted_weights,
            "adapters": self.adapters,
        }


def inspect_checkpoint(source: str, revision: str | None = None) -> CheckpointInfo:
    """Class, how to load it, pruned shapes (dense → now), zero fraction of the targeted weights, provenance."""
    folder = denoiser_folder(resolve_source(source, revision))
    config = read_json(folder / "config.json")
    check_config_bounds(config, str(folder / "config.json"))
    name = str(config.get("_class_name", ""))
    base = base_class_for(name)
    skeleton = build_model(config, source=str(folder / "config.json"))
    architecture = architecture_of(skeleton)
    dense = structure_of(skeleton, architecture)
    kinds = {c.key: "heads" if isinstance(c, HeadCoupling) else "neurons" for c in architecture.couplings(skeleton)}
    recorded = config.get(STRUCTURE_KEY) or {}
    now = {**dense, **recorded}
    tensor_shapes(folder)  # a truncated file is one clear error, not a traceback
    targeted = {f"{p}.weight" for u in architecture.units(skeleton, None, False) for s in u.sites for p in s.layers}
    files = checkpoint_files(folder, (".safetensors",), recursive=False)
    zeros = total = tensors = 0
    for path in files:
        with safetensors_header(path) as f:
            for key in f.keys():
                if key in targeted:
                    t = f.get_tensor(key)
                    zeros += int((t == 0).sum())
                    total += t.numel()
                    tensors += 1
    stored = config.get(PROVENANCE_KEY)
    record = {str(k): str(v) for k, v in stored.items()} if isinstance(stored, dict) else {}
    if files:
        record.update({k: v for k, v in read_metadata(files[0]).items() if k != "format"})
    loader = pruned_class_for(base) if recorded else base
    pruned = {k for k in dense if dense[k] != now[k]}
    kept_record = config.get(KEPT_KEY)
    kept = {}
    for key, entry in (kept_record or {}).items() if isinstance(kept_record, dict) else ():
        indices = decode(entry, f"{folder / 'config.json'} {KEPT_KEY}[{key!r}]").tolist()
        if key not in now or len(indices) != now[key]:
            raise CheckpointError(
                f"{folder / 'config.json'}: {KEPT_KEY}[{key!r}] keeps {len(indices)} units, the pruned shapes say "
                f"{now.get(key, 'none')}"
            )
        kept[key] = ranges(indices)
    if not pruned:
        adapters = "shapes unchanged: adapters of the dense base load as they are"
    elif kept:
        ip = " and IP-Adapters" if name == "UNet2DConditionModel" else ""
        adapters = f"kept indices recorded for {len(kept)} pruned modules: LoRAs{ip} of the dense base map onto it"
    else:
        adapters = (
            "kept indices not recorded (saved before obsdiff-hub 0.3): adapters of the dense base cannot be "
            "mapped onto it"
        )
    return CheckpointInfo(
        path=str(folder),
        class_name=name,
        load_with=f"obsdiff_hub.{loader.__name__}"
        if recorded
        else f"diffusers.{loader.__name__} (or obsdiff_hub.{pruned_class_for(base).__name__})",
        provenance=record,
        structure={
            k: {"kind": kinds[k], "dense": dense[k], "now": now[k], "kept": kept.get(k, "not recorded")}
            for k in sorted(pruned, key=list(dense).index)
        },
        sparsity=zeros / total if total else 0.0,
        targeted_weights=tensors,
        adapters=adapters,
    )


def base_model_of(source: str) -> str:
    """The dense model a pruned checkpoint was made from, from its provenance (for ``--base`` defaults)."""
    root = resolve_source(source)
    record = read_json(denoiser_folder(root) / "config.json").get(PROVENANCE_KEY) or {}
    base = record.get("base_model") if isinstance(record, dict) else None
    if not isinstance(base, str) or not base:
        raise InputError(f"{source} does not record the model it was pruned from; give its `base`")
    return base
