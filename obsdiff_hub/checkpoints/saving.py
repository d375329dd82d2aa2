"""Pruned checkpoints: safetensors with provenance in every shard header, written atomically.

Layout follows diffusers exactly (``config.json``, ``diffusion_pytorch_model[-0000k-of-0000n]
[.variant].safetensors`` + index, ``model_index.json`` for pipelines), so stock loaders find
the files. Structured results are saved as ``OBSDiff*`` classes whose config records the
pruned shapes; unstructured and N:M results keep their diffusers class and load without
obsdiff_hub. Only safetensors are written; modules are never pickled.
"""

from __future__ import annotations

import inspect
import json
import os
from pathlib import Path, PurePosixPath
from typing import Any, Callable

import torch
from diffusers import ModelMixin
from huggingface_hub import split_torch_state_dict_into_shards
from huggingface_hub.serialization._base import parse_size_to_int

from ..architectures.components import denoiser_name
from ..errors import InputError
from ..models import PROVENANCE_KEY, PRUNED_CLASSES, promote, provenance, stamp_provenance
from ..models.offload import offload_of
from ..storage.files import write_safetensors_file
from ..storage.outputs import atomic_output, write_atomic

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
INDEX_NAME = "diffusion_pytorch_model.safetensors.index.json"
OFFLOADED_SHARD_SIZE = 2 * 1024**3  # an offloaded model is written at most this much at a time


def with_variant(name: str, variant: str | None) -> str:
    """``diffusion_pytorch_model.safetensors`` → ``diffusion_pytorch_model.fp16.safetensors`` (diffusers' rule)."""
    if not variant:
        return name
    stem, ext = name.rsplit(".safetensors", 1)
    return f"{stem}.{variant}.safetensors{ext}"


def write_safetensors(
    model: ModelMixin,
    directory: str | os.PathLike,
    *,
    variant: str | None = None,
    torch_dtype: torch.dtype | None = None,
    max_shard_size: int | str = "10GB",
    metadata: dict[str, str] | None = None,
) -> None:
    """Write ``config.json`` and safetensors shards (+ index), ``metadata`` in every shard header.
    ``model`` must be promoted (:func:`obsdiff_hub.models.promote`: its config describes its shapes).
    Floating tensors are cast to ``torch_dtype`` one shard at a time; the model itself is not changed.
    An offloaded model's blocks are read from their stores shard by shard (shards of at most
    ``OFFLOADED_SHARD_SIZE``), so the whole model is never in memory at once."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_config(directory)
    state = model.state_dict()
    offloaded = offload_of(model)
    if offloaded is not None:
        max_shard_size = min(parse_size_to_int(max_shard_size), OFFLOADED_SHARD_SIZE)
    pattern = with_variant(WEIGHTS_NAME, variant).replace(".safetensors", "{suffix}.safetensors")
    split = split_torch_state_dict_into_shards(state, max_shard_size=max_shard_size, filename_pattern=pattern)
    header = {"format": "pt", **(metadata or {})}

    def stored(t: torch.Tensor) -> torch.Tensor:
        cast = t.to(torch_dtype) if torch_dtype is not None and t.is_floating_point() else t
        return cast.detach().to("cpu").contiguous()

    for filename, names in split.filename_to_tensors.items():
        values = offloaded.read(model, names) if offloaded is not None else state
        write_safetensors_file(directory / filename, {n: stored(values[n]) for n in names}, header)
        del values
    if split.is_sharded:
        index = {"metadata": dict(split.metadata), "weight_map": split.tensor_to_filename}
        write_atomic(directory / with_variant(INDEX_NAME, variant), json.dumps(index, indent=2, sort_keys=True) + "\n")


def save_components(
    pipeline: Any, directory: Path, denoiser: str, write_denoiser: Callable[[Path], None], **kwargs: Any
) -> None:
    """Save a pipeline in the diffusers layout: every component through its own ``save_pretrained``
    (with the keyword arguments it accepts, as ``DiffusionPipeline.save_pretrained`` passes them),
    the denoiser through ``write_denoiser``, then ``model_index.json``."""
    options = {
        "safe_serialization": True,
        "save_peft_format": False,
        **{k: v for k, v in kwargs.items() if v is not None},
    }
    for name, component in pipeline.components.items():
        if name == denoiser:
            write_denoiser(directory / name)
        elif component is not None and hasattr(component, "save_pretrained"):
            accepted = inspect.signature(component.save_pretrained).parameters
            component.save_pretrained(directory / name, **{k: v for k, v in options.items() if k in accepted})
    pipeline.save_config(directory)


def _extra_file(folder: Path, name: str) -> Path:
    posix = PurePosixPath(name)
    if posix.is_absolute() or not posix.parts or any(part in ("", ".", "..") for part in posix.parts):
        raise InputError(f"extra file name {name!r} must be a relative path inside the checkpoint")
    return folder / Path(*posix.parts)


def save_pruned(
    target: Any,
    directory: str | os.PathLike,
    *,
    record: dict[str, str] | None = None,
    variant: str | None = None,
    torch_dtype: torch.dtype | None = None,
    max_shard_size: int | str = "10GB",
    overwrite: bool = False,
    extra_files: dict[str, str | bytes] | None = None,
) -> Path:
    """Save a pruned pipeline (full diffusers layout) or denoiser (component layout), atomically.

    ``record`` is the provenance (see :func:`obsdiff_hub.provenance`), written to config.json
    and to every safetensors header. ``torch_dtype``/``variant`` give e.g. fp16 files named
    ``*.fp16.safetensors``. ``extra_files`` (name → content: recipe, report, card, samples) are
    written into the same folder, which appears at ``directory`` only when complete.
    ``overwrite`` replaces only an empty folder or an earlier output of this tool.
    """
    with atomic_output(directory, overwrite=overwrite) as tmp:
        write_pruned(
            target, tmp, record=record, variant=variant, torch_dtype=torch_dtype, max_shard_size=max_shard_size
        )
        for file_name, content in (extra_files or {}).items():
            write_atomic(_extra_file(tmp, file_name), content, root=tmp)
    return Path(directory)


def is_promoted(model: ModelMixin) -> bool:
    """Whether ``model`` is already the class and config its checkpoint needs: an ``OBSDiff*`` model,
    or one the engine returned (it promotes, and stamps its provenance, once per run)."""
    return isinstance(model, tuple(PRUNED_CLASSES.values())) or PROVENANCE_KEY in model.config


def write_pruned(
    target: Any,
    folder: Path,
    *,
    record: dict[str, str] | None = None,
    variant: str | None = None,
    torch_dtype: torch.dtype | None = None,
    max_shard_size: int | str = "10GB",
) -> dict[str, str]:
    """The body of :func:`save_pruned`: write a pipeline or denoiser into an existing (temp) folder.
    Returns the provenance written: ``record`` over what the engine stamped (it names the method).

    With ``torch_dtype`` the pipeline's other floating-point components are cast to it (in
    place) before saving, so the saved pipeline loads in one dtype: transformers and diffusers
    load components in their stored dtypes, and a pipeline mixing them cannot sample.
    """
    pipeline = None if isinstance(target, ModelMixin) else target
    name = denoiser_name(pipeline) if pipeline is not None else None
    model = target if pipeline is None else getattr(pipeline, name)
    if not is_promoted(model):  # pruned outside the engine (which promotes its results once)
        model = promote(model, provenance())
    record = stamp_provenance(model, record or provenance())
    if pipeline is not None and torch_dtype is not None:
        for other, component in pipeline.components.items():
            if (
                other != name
                and isinstance(component, torch.nn.Module)
                and any(p.is_floating_point() for p in component.parameters())
            ):
                component.to(dtype=torch_dtype)

    def write_denoiser(directory: Path) -> None:
        write_safetensors(
            model, directory, variant=variant, torch_dtype=torch_dtype, max_shard_size=max_shard_size, metadata=record
        )

    if pipeline is None:
        write_denoiser(folder)
        return record
    pipeline.register_modules(**{name: model})  # model_index.json must name the (possibly promoted) class
    save_components(pipeline, folder, name, write_denoiser, variant=variant, max_shard_size=max_shard_size)  # type: ignore[arg-type]
    return record
