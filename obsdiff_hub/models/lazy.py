"""A denoiser opened lazily from its safetensors files for an offloaded run (``prune.offload``): the tensors
outside the blocks are read, the blocks stay in the files (memory-mapped only while a block is read), so opening
a model never needs its size in memory. Used for the base of a CLI run and for its saved progress on resume.
"""

from __future__ import annotations

import os
import re
import weakref
from pathlib import Path

import torch
from accelerate.utils import set_module_tensor_to_device
from diffusers import ModelMixin
from torch import nn

from ..architectures import architecture_of
from ..errors import CheckpointError
from ..storage.files import checkpoint_files, read_json, safetensors_header, stored_dtype
from .building import build_model
from .keys import KEPT_KEY, PROVENANCE_KEY, STRUCTURE_KEY
from .offload import BlockOffload, OffloadMode, lazy_sources, read_entries, stored_tensors

WEIGHT_FILE = re.compile(r"diffusion_pytorch_model(-\d{5}-of-\d{5})?\.safetensors")


def weight_files(folder: Path) -> dict[str, tuple[Path, tuple[int, ...]]]:
    """Which file of ``folder`` holds each tensor, and its shape (the default variant's weights, read from the
    headers; no index file is trusted); a tensor stored twice, or no weights at all, is a :class:`CheckpointError`."""
    where: dict[str, tuple[Path, tuple[int, ...]]] = {}
    for path in checkpoint_files(folder, (".safetensors",), recursive=False):
        if not WEIGHT_FILE.fullmatch(path.name):
            continue
        with safetensors_header(path) as handle:
            for key in handle.keys():
                if key in where:
                    raise CheckpointError(f"{folder}: {key[:120]} is stored in {where[key][0].name} and {path.name}")
                where[key] = (path, tuple(handle.get_slice(key).get_shape()))
    if not where:
        raise CheckpointError(f"{folder}: no diffusion_pytorch_model safetensors weights to open")
    return where


def pinned(files: set[Path]) -> tuple[dict[Path, Path], list[int]]:
    """Each file opened once (its checked target) and read through that descriptor from then on (Linux's
    ``/proc/self/fd``), so a file swapped or replaced by a link during a long run is never read: the run keeps
    reading what was checked. Elsewhere the paths themselves."""
    if not Path("/proc/self/fd").is_dir():
        return {file: file for file in files}, []
    descriptors = {file: os.open(file.resolve(), os.O_RDONLY) for file in files}
    return {file: Path(f"/proc/self/fd/{fd}") for file, fd in descriptors.items()}, list(descriptors.values())


def _close(descriptors: list[int]) -> None:
    for fd in descriptors:
        os.close(fd)


def open_offloaded(
    folder: Path,
    mode: OffloadMode,
    offload_folder: Path | None,
    device: torch.device | None = None,
    own: bool = False,
) -> ModelMixin:
    """The denoiser in ``folder`` (a diffusers model folder, dense or pruned) with its blocks offloaded as
    ``mode`` says and read from ``folder``'s own files until a solve writes them back (``own``: copied into
    the offload store now, block by block, for a folder that will not outlive the run); the rest on ``device``
    (default the CPU), everything in the stored dtype."""
    config = read_json(folder / "config.json")
    model = build_model(config, structure=config.get(STRUCTURE_KEY) or None, source=str(folder / "config.json"))
    dtype = stored_dtype(folder)
    nn.Module.to(model, dtype)  # the placeholders carry the stored dtype, which onloading casts to
    stored = weight_files(folder)
    state = model.state_dict()
    expected = set(stored_tensors(model))
    if set(stored) != expected:
        missing, extra = sorted(expected - set(stored)), sorted(set(stored) - expected)
        what = f"lacks {missing[0]}" if missing else f"holds {extra[0]}, which the config does not build"
        raise CheckpointError(f"{folder}: {what[:200]}")
    for name, (file, shape) in stored.items():  # every block's shapes checked now, not when the block first runs
        if shape != tuple(state[name].shape):
            raise CheckpointError(
                f"{file}: {name[:120]} has shape {list(shape)}, its config builds {list(state[name].shape)}"
            )
    paths = architecture_of(model).blocks(model)
    through, descriptors = pinned({file for file, _ in stored.values()})
    blocks, rest = lazy_sources({name: through[file] for name, (file, _) in stored.items()}, paths)
    device = device or torch.device("cpu")
    try:
        for name, tensor in read_entries(rest).items():  # the checkpoint's one dtype, as a resident load casts it
            cast = dtype if tensor.is_floating_point() else tensor.dtype
            set_module_tensor_to_device(model, name, device, value=tensor, dtype=cast, clear_cache=False)
        offloaded = BlockOffload.from_model(model, paths, device, dtype, mode, offload_folder, sources=blocks)
    except BaseException:
        _close(descriptors)
        raise
    weakref.finalize(offloaded, _close, descriptors)  # the files stay pinned while the blocks may read them
    if own:
        for path in paths:
            offloaded.weights[path].replace(offloaded.weights[path].read(), dtype)
    model.register_to_config(**{k: config[k] for k in (KEPT_KEY, PROVENANCE_KEY) if k in config})
    return model.eval().requires_grad_(False)
