"""Why a checkpoint does not load, in one line; and checking a snapshot before loading it.

Used by the ``OBSDiff*`` classes' ``from_pretrained`` (failure path only), ``inspect`` and
``pull``. Everything here reads files; nothing is executed or written.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

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


@contextmanager
def safetensors_header(path: Path) -> Iterator[Any]:
    """``safe_open`` for reading a file's header, with a one-line error naming a truncated or
    corrupted file (or a git-lfs pointer that was never pulled)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            yield f
    except (SafetensorError, OSError, RuntimeError) as error:
        raise CheckpointError(f"{path}: truncated or corrupted safetensors file ({error}); delete it and download again") from error


def tensor_shapes(folder: Path) -> dict[str, tuple[int, ...]]:
    """Shape of every tensor in the folder's safetensors files (headers only)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safetensors_header(path) as f:
            for key in f.keys():
                shapes[key] = tuple(f.get_slice(key).get_shape())
    return shapes


@contextmanager
def explained_pipeline_failure(folder: Path | None) -> Iterator[None]:
    """A failed pipeline load from ``folder`` becomes one line naming the file when a component
    that ``model_index.json`` lists holds a truncated or corrupted safetensors file; any other
    failure is left as it is. (Checked only after a failure: unused variants or stray folders
    beside the components never stop a load.)"""
    try:
        yield
    except Exception as error:
        index = folder / "model_index.json" if folder is not None else None
        if index is None or not index.is_file():
            raise
        try:
            parts = [folder / name for name, value in read_json(index).items() if not name.startswith("_") and isinstance(value, list)]
            for part in parts:
                if part.is_dir():
                    tensor_shapes(part)
        except CheckpointError as reason:
            raise reason from error
        raise


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


def _scrub(message: str, token: str | None) -> str:
    """Remove every token this process could have sent from a message (servers may echo it)."""
    from huggingface_hub import get_token

    for secret in {token, os.environ.get("HF_TOKEN"), get_token()}:
        if secret:
            message = message.replace(secret, "***")
    return message


@contextmanager
def hub_errors(endpoint: str | None = None, token: str | None = None, source: str | None = None, maybe_folder: bool = False) -> Iterator[None]:
    """Hub failures as one line that names the endpoint (never the token), the repo ``source``
    if given, and the fix: a missing token, a missing or private repo, a missing revision, an
    unreachable Hub. ``maybe_folder``: ``source`` could also have meant a local folder (which
    does not exist), the likelier mistake offline."""
    import importlib

    from huggingface_hub import constants, get_session
    from huggingface_hub.errors import (
        HfHubHTTPError, LocalEntryNotFoundError, LocalTokenNotFoundError, RepositoryNotFoundError, RevisionNotFoundError,
    )

    endpoint = endpoint or constants.ENDPOINT
    what = f"{source}: " if source else ""
    # The HTTP library huggingface_hub uses (httpx, or httpx2 in 2.x): its transport errors.
    transport = importlib.import_module(type(get_session()).__module__.split(".")[0]).TransportError
    known = (LocalTokenNotFoundError, HfHubHTTPError, transport, LocalEntryNotFoundError, ConnectionError)  # offline mode is a ConnectionError
    try:
        yield
    except (transport, OSError) as raised:
        # diffusers re-raises Hub failures as its own OSError, with the Hub's error as the cause
        # (explicit causes only: an unrelated local error raised while handling one is not one)
        chain: list[BaseException] = [raised]
        while len(chain) < 16 and chain[-1].__cause__ is not None:
            chain.append(chain[-1].__cause__)
        error = next((e for e in chain if isinstance(e, known)), None)
        if error is None:
            raise
        if isinstance(error, LocalTokenNotFoundError):
            message = f"{what}no Hub token: set HF_TOKEN, pass --token, or run `hf auth login`"
        elif isinstance(error, RepositoryNotFoundError):  # also gated and private repos the token cannot see
            message = f"{what}no such repo on {endpoint}, or it is private or gated: check the name and your token (HF_TOKEN)"
        elif isinstance(error, RevisionNotFoundError):
            message = f"{what}that revision does not exist on {endpoint}; check --revision"
        elif isinstance(error, HfHubHTTPError):
            status = error.response.status_code if error.response is not None else "?"
            detail = ((error.server_message or str(error)).strip().splitlines() or ["no detail"])[0]
            message = f"{what}{endpoint} refused the request ({status}): {detail}"
        else:
            reason = (str(error).splitlines() or [type(error).__name__])[0]
            where = "no local folder has that name, and " if maybe_folder else ""
            cache = ", nor find it in the cache" if source else ""
            message = f"{what}{where}cannot reach the Hub at {endpoint}{cache} ({reason}); check the name, the endpoint and your connection"
        raise CheckpointError(_scrub(message, token)) from None


def resolve_source(source: str, revision: str | None = None) -> Path:
    """A local folder as is; a Hub repo id through ``snapshot_download`` (cache, token from the environment)."""
    folder = local_folder_or_repo(source)
    if folder is not None:
        return folder
    from huggingface_hub import snapshot_download

    with hub_errors(source=source, maybe_folder=True):
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
    with hub_errors(token=kwargs.get("token"), source=source, maybe_folder=True):
        root = Path(
            snapshot_download(
                source, revision=kwargs.get("revision"), cache_dir=kwargs.get("cache_dir"), token=kwargs.get("token"), local_files_only=offline
            )
        )
        listed = None if offline else repo_files(source, kwargs.get("revision"), kwargs.get("token"))
    return verify_manifest(root, kwargs.get("subfolder"), repo_files=listed, delete=listed is not None)
