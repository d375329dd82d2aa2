"""Reading checkpoint files from outside: JSON objects and safetensors headers, with one-line errors.

Nothing here reads tensor data it was not asked for or executes anything; a truncated file, a
git-lfs pointer that was never pulled, an oversized or non-object JSON file is a
:class:`CheckpointError` naming the file. Only regular files inside a folder are listed for
reading or hashing (:func:`checkpoint_files`): a link leading out of it (other than the Hub
cache's own blob of a snapshot file) or a special file (a FIFO, a device) is refused.
"""

from __future__ import annotations

import json
import os
import stat
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..errors import CheckpointError
from . import jsonio
from .outputs import atomic_path

SAFETENSORS_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
MAX_JSON_BYTES = 64 * 1024**2  # configs and indexes are kilobytes; a sharded index of a huge model a few MB


def is_regular_file(path: Path) -> bool:
    """A regular file itself, not a link, folder or special file (``lstat``)."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def hub_cache_blob(file: Path) -> Path | None:
    """The Hub cache blob a snapshot file links to (``<repo>/snapshots/<commit>/...`` →
    ``<repo>/blobs/<hash>``), if it is one."""
    for ancestor in file.absolute().parents:
        if ancestor.parent.name == "snapshots":
            target = file.resolve()
            blobs = (ancestor.parent.parent / "blobs").resolve()
            return target if target.parent == blobs and is_regular_file(target) else None
    return None


def readable_file(path: Path, root: Path) -> bool:
    """Whether ``path`` (below ``root``) may be read: a regular file, or a link to a regular file
    inside ``root`` or to the Hub cache's blob of a snapshot file. Raises for a special file or a
    link that leads anywhere else, so a hostile folder cannot make this tool read outside it."""
    if is_regular_file(path):
        return True
    if path.is_symlink():
        target = path.resolve()
        if is_regular_file(target) and (target.is_relative_to(root.resolve()) or hub_cache_blob(path) is not None):
            return True
        raise CheckpointError(f"{path} links to {target}, outside {root}; refusing to read it")
    if path.exists() and not path.is_dir():
        raise CheckpointError(f"{path} is not a regular file (a FIFO or a device?); refusing to read it")
    return False


def checkpoint_files(folder: Path, suffixes: tuple[str, ...] | None = None, *, recursive: bool = True) -> list[Path]:
    """The readable files below ``folder`` (sorted; hidden entries skipped), optionally only those
    with one of ``suffixes``; see :func:`readable_file` for what is refused."""
    candidates = folder.rglob("*") if recursive else folder.glob("*")
    files = []
    for path in sorted(candidates):
        relative = path.relative_to(folder)
        if any(part.startswith(".") for part in relative.parts) or (suffixes and path.suffix not in suffixes):
            continue
        if readable_file(path, folder):
            files.append(path)
    return files


MAX_CONFIG_INT = 1 << 20  # widths, vocabularies, sample sizes: the largest real ones are far below
MAX_CONFIG_DEPTH = 2048  # layers or blocks in any one stack (SD3.5-Large has 38, Flux 57)
MAX_CONFIG_LIST = 256
DEPTH_KEYS = ("layer", "block", "depth")  # config keys that count repeated modules


def check_config_bounds(config: Any, where: str, key: str = "", level: int = 0) -> None:
    """Refuse a model config that asks for absurd sizes before any module is built from it: an
    integer beyond 2²⁰, more than 2,048 layers or blocks in a stack, lists longer than 256 or
    nesting deeper than 8 (building a model from a hostile config must not hang or exhaust memory)."""
    if level > 8:
        raise CheckpointError(f"{where}: {key} nests deeper than any model config")
    if key == "obsdiff_structure":  # module path → heads or width
        if config is None:
            return
        if not isinstance(config, dict) or len(config) > 100_000:
            raise CheckpointError(f"{where}: obsdiff_structure must map module paths to sizes")
        for module, size in config.items():
            if (
                not isinstance(module, str)
                or len(module) > 512
                or not isinstance(size, int)
                or isinstance(size, bool)
                or not 1 <= size <= MAX_CONFIG_INT
            ):
                raise CheckpointError(
                    f"{where}: obsdiff_structure entry {str(module)[:80]!r}: {str(size)[:40]} is not a module path "
                    f"with a size from 1 to {MAX_CONFIG_INT:,}"
                )
    elif isinstance(config, dict):
        for name, value in config.items():
            check_config_bounds(value, where, str(name), level + 1)
    elif isinstance(config, (list, tuple)):
        if len(config) > MAX_CONFIG_LIST:
            raise CheckpointError(f"{where}: {key} has {len(config)} entries, more than any model config")
        for value in config:
            check_config_bounds(value, where, key, level + 1)
    elif isinstance(config, int) and not isinstance(config, bool):
        limit = (
            MAX_CONFIG_DEPTH
            if any(word in key.lower() for word in DEPTH_KEYS) and "channel" not in key.lower()
            else MAX_CONFIG_INT
        )
        if abs(config) > limit:
            raise CheckpointError(
                f"{where}: {key} = {config} is larger than {limit:,}, more than any real model asks for"
            )


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from a checkpoint file (at most 64 MiB), or a one-line error naming the file."""
    try:
        if path.stat().st_size > MAX_JSON_BYTES:
            raise CheckpointError(f"{path}: larger than {MAX_JSON_BYTES >> 20} MiB, not a checkpoint's JSON file")
        data = jsonio.loads(path.read_text())
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
        raise CheckpointError(
            f"{path}: truncated or corrupted safetensors file ({error}); delete it and download again"
        ) from error


def write_safetensors_file(
    path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> None:
    """``save_file``, then the header's metadata put in sorted key order, so the same tensors and
    metadata always give the same bytes (safetensors keeps metadata in a hash map whose order
    changes from process to process; a checkpoint rebuilt from its recipe must hash the same)."""
    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata=metadata)
        fd = os.open(tmp, os.O_RDWR | os.O_NOFOLLOW)
        with os.fdopen(fd, "r+b") as f:
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
    for path in checkpoint_files(folder, (".safetensors",), recursive=False):
        with safetensors_header(path) as f:
            for key in f.keys():
                shapes[key] = tuple(f.get_slice(key).get_shape())
    return shapes


def stored_dtype(folder: Path) -> torch.dtype:
    """The dtype most of a component's floating-point weights are stored in (headers only; fp32 if none)."""
    counts: dict[str, int] = {}
    for path in checkpoint_files(folder, (".safetensors",), recursive=False):
        with safetensors_header(path) as f:
            for key in f.keys():
                part = f.get_slice(key)
                numel = 1
                for dim in part.get_shape():
                    numel *= dim
                counts[part.get_dtype()] = counts.get(part.get_dtype(), 0) + numel
    floating = {k: v for k, v in counts.items() if k in SAFETENSORS_DTYPES}
    return SAFETENSORS_DTYPES[max(floating, key=floating.__getitem__)] if floating else torch.float32
