"""Reading checkpoint files from outside: JSON objects and safetensors headers, with one-line errors.

Nothing here reads tensor data it was not asked for or executes anything; a truncated file, a
git-lfs pointer that was never pulled or JSON that is not an object is a :class:`CheckpointError`
naming the file.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..errors import CheckpointError

SAFETENSORS_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from a checkpoint file, or a one-line error naming the file."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{path}: not readable JSON ({error}); download the checkpoint again") from error
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


@contextmanager
def safetensors_header(path: Path) -> Iterator[Any]:
    """``safe_open`` for reading a file's header, with a one-line error naming a truncated or
    corrupted file (or a git-lfs pointer that was never pulled)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            yield f
    except (SafetensorError, OSError, RuntimeError) as error:
        raise CheckpointError(f"{path}: truncated or corrupted safetensors file ({error}); delete it and download again") from error


def write_safetensors_file(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """``save_file``, then the header's metadata put in sorted key order, so the same tensors and
    metadata always give the same bytes (safetensors keeps metadata in a hash map whose order
    changes from process to process; a checkpoint rebuilt from its recipe must hash the same)."""
    save_file(tensors, path, metadata=metadata)
    with open(path, "r+b") as f:
        length = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(length))
        if "__metadata__" not in header:
            return
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
        text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        text += b" " * (length - len(text))
        if len(text) != length:  # never: the same entries, only reordered
            raise CheckpointError(f"{path}: could not canonicalise the safetensors header")
        f.seek(8)
        f.write(text)


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The safetensors header metadata of one file (no tensor data is read)."""
    with safetensors_header(Path(path)) as f:
        return dict(f.metadata() or {})


def tensor_shapes(folder: Path) -> dict[str, tuple[int, ...]]:
    """Shape of every tensor in the folder's safetensors files (headers only)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safetensors_header(path) as f:
            for key in f.keys():
                shapes[key] = tuple(f.get_slice(key).get_shape())
    return shapes


def stored_dtype(folder: Path) -> torch.dtype:
    """The dtype most of a component's floating-point weights are stored in (headers only; fp32 if none)."""
    counts: dict[str, int] = {}
    for path in folder.glob("*.safetensors"):
        with safetensors_header(path) as f:
            for key in f.keys():
                part = f.get_slice(key)
                numel = 1
                for dim in part.get_shape():
                    numel *= dim
                counts[part.get_dtype()] = counts.get(part.get_dtype(), 0) + numel
    floating = {k: v for k, v in counts.items() if k in SAFETENSORS_DTYPES}
    return SAFETENSORS_DTYPES[max(floating, key=floating.__getitem__)] if floating else torch.float32
