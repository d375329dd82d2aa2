"""Why a checkpoint does not load, in one line; and checking a snapshot before loading it.

Used by the ``OBSDiff*`` classes' ``from_pretrained`` (failure path only), ``inspect`` and
``pull``. Everything here reads files; nothing is executed or written.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open

from ..models import STRUCTURE_KEY, build_model


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded or written; the message names the file and the fix."""


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The safetensors header metadata of one file (no tensor data is read)."""
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from a checkpoint file, or a one-line error naming the file."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{path}: not readable JSON ({error}); download the checkpoint again") from error
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


def tensor_shapes(folder: Path) -> dict[str, tuple[int, ...]]:
    """Shape of every tensor in the folder's safetensors files (headers only)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for path in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(path), framework="pt") as f:
                for key in f.keys():
                    shapes[key] = tuple(f.get_slice(key).get_shape())
        except (SafetensorError, OSError, RuntimeError) as error:
            raise CheckpointError(f"{path}: truncated or corrupted safetensors file ({error}); delete it and download again") from error
    return shapes


def diagnose(folder: str | os.PathLike) -> str | None:
    """Explain why the checkpoint in ``folder`` does not load, in one line (None if no fault found).

    Checks, in order: missing shards named by an index, unreadable or truncated files, and
    tensor shapes that disagree with what the config builds (meta device, nothing allocated).
    """
    folder = Path(folder)
    try:
        for index in folder.glob("*.safetensors.index.json"):
            shards = set(read_json(index).get("weight_map", {}).values())
            missing = sorted(s for s in shards if not (folder / str(s)).is_file())
            if missing:
                return f"{folder / missing[0]}: shard listed in {index.name} is missing; re-download the checkpoint"
        shapes = tensor_shapes(folder)
        config_path = folder / "config.json"
        if not config_path.is_file():
            return f"{config_path}: missing config.json"
        config = read_json(config_path)
        expected = {k: tuple(v.shape) for k, v in build_model(config, structure=config.get(STRUCTURE_KEY) or None).state_dict().items()}
    except CheckpointError as error:
        return str(error)
    except ValueError as error:
        return f"{folder / 'config.json'}: {str(error).splitlines()[0]}"
    for key, shape in shapes.items():
        if key in expected and expected[key] != shape:
            module = key.rsplit(".", 1)[0]
            return f"{folder}: module {module}: config builds {key} as {list(expected[key])} but the file holds {list(shape)}"
    return None


def looks_like_local_path(source: str) -> bool:
    """What huggingface_hub would never accept as a repo id: absolute or relative paths, ``~``,
    backslashes, or more than one ``/`` (a repo id is ``name`` or ``namespace/name``)."""
    return (
        os.path.isabs(source)
        or source.startswith((".", "~"))
        or "\\" in source
        or source.count("/") > 1
        or os.sep in source and os.sep != "/"
    )


def local_folder_or_repo(source: str) -> Path | None:
    """A local folder (as a Path), or None for a valid Hub repo id; a one-line error otherwise.

    A path that does not exist is reported as a missing folder, not as a malformed repo id.
    """
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if os.path.exists(source):
        if not os.path.isdir(source):
            raise CheckpointError(f"{source} is a file; give the checkpoint's folder")
        return Path(source)
    if looks_like_local_path(source):
        raise CheckpointError(f"local folder {source} does not exist")
    try:
        validate_repo_id(source)
    except HFValidationError as error:
        raise CheckpointError(f"{source!r} is neither a local folder nor a valid Hub repo id ({str(error).splitlines()[0]})") from error
    return None


def resolve_source(source: str, revision: str | None = None) -> Path:
    """A local folder as is; a Hub repo id through ``snapshot_download`` (cache, token from the environment)."""
    folder = local_folder_or_repo(source)
    if folder is not None:
        return folder
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(source, revision=revision))


def _local_folder(source: str, kwargs: dict[str, Any]) -> Path | None:
    """The local folder a ``from_pretrained`` call read, if any (a directory, or the Hub cache)."""
    subfolder = kwargs.get("subfolder") or ""
    if os.path.isdir(source):
        return Path(source) / subfolder
    try:
        from huggingface_hub import snapshot_download

        snapshot = snapshot_download(source, revision=kwargs.get("revision"), cache_dir=kwargs.get("cache_dir"), local_files_only=True)
        return Path(snapshot) / subfolder
    except Exception:  # not in the cache: nothing local to diagnose
        return None


def explain_failure(source: str, model_class: type, kwargs: dict[str, Any]) -> str | None:
    """One line for a failed ``model_class.from_pretrained(source, **kwargs)``, or None."""
    folder = _local_folder(source, kwargs)
    return diagnose(folder) if folder is not None and folder.is_dir() else None


def repo_files(repo_id: str, revision: str | None = None, token: str | None = None, endpoint: str | None = None) -> set[str]:
    """The files a Hub repository holds at ``revision`` (the Hub's own list, not the local folder)."""
    from huggingface_hub import HfApi

    info = HfApi(endpoint=endpoint, token=token).model_info(repo_id, revision=revision or "main")
    return {s.rfilename for s in info.siblings or []}


def verify_source(source: str, kwargs: dict[str, Any]) -> int:
    """``verify=True``: check the repo's manifest, downloading the snapshot if needed.

    A Hub download is checked against the Hub's file list and a mismatching file is deleted
    from the cache; a local folder is only checked (nothing in it is ever deleted).
    """
    from .manifest import verify_manifest

    folder = local_folder_or_repo(source)
    if folder is not None:
        return verify_manifest(folder, kwargs.get("subfolder"))
    from huggingface_hub import snapshot_download

    offline = bool(kwargs.get("local_files_only", False))
    root = Path(
        snapshot_download(
            source, revision=kwargs.get("revision"), cache_dir=kwargs.get("cache_dir"), token=kwargs.get("token"), local_files_only=offline
        )
    )
    listed = None if offline else repo_files(source, kwargs.get("revision"), kwargs.get("token"))
    return verify_manifest(root, kwargs.get("subfolder"), repo_files=listed, delete=listed is not None)
