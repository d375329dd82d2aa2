"""The sha256 manifest of a published checkpoint: written at push, checked at pull and load.

A manifest comes from the Hub, so it is hostile: every entry must be a relative, normalised
path to a file the repository really holds (the Hub's own file list, when the files were just
downloaded) and that lies in the snapshot (no ``..``, no absolute path, no link that leads out
of the snapshot other than the Hub cache's own blob of that file); all entries are checked
before any file is touched. A file whose hash does not match is never used; it is deleted
(with its cache blob) only from a download this tool just made, never from a folder the user
points at.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path, PurePosixPath
from typing import Any, Collection

from .._version import __version__
from ..errors import CheckpointError
from . import jsonio
from .files import checkpoint_files, hub_cache_blob

MANIFEST = "obsdiff-manifest.json"
WEIGHT_SUFFIXES = (".safetensors",)
MAX_MANIFEST_BYTES = 16 * 1024**2  # a manifest lists a few hundred files


class ManifestError(CheckpointError):
    """A manifest that cannot be trusted, or a file that does not match it; nothing was used."""


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def build_manifest(directory: str | Path) -> dict[str, Any]:
    """sha256 and size of every weight file under ``directory`` (hidden entries skipped)."""
    root = Path(directory)
    files = {
        p.relative_to(root).as_posix(): {"sha256": sha256_file(p), "size": p.stat().st_size}
        for p in checkpoint_files(root, WEIGHT_SUFFIXES)
    }
    return {"algorithm": "sha256", "obsdiff_hub_version": __version__, "files": files}


def manifest_bytes(manifest: dict[str, Any]) -> bytes:
    return (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()


def _entry(name: object, expected: object, root: Path, repo_files: Collection[str] | None) -> tuple[Path, int, str]:
    """Validate one manifest entry; returns the file inside the snapshot, its size and hash."""
    if not isinstance(name, str) or not name or "\\" in name or "\x00" in name:
        raise ManifestError(f"{MANIFEST}: invalid entry {name!r}")
    if repo_files is not None and name not in repo_files:
        raise ManifestError(f"{MANIFEST} lists {name!r}, which the repository does not hold; refusing the download")
    posix = PurePosixPath(name)
    if posix.is_absolute() or any(part in ("", ".", "..") for part in posix.parts) or posix.as_posix() != name:
        raise ManifestError(
            f"{MANIFEST}: entry {name!r} is not a normalised relative path inside the repository; refusing it"
        )
    if (
        not isinstance(expected, dict)
        or not isinstance(expected.get("sha256"), str)
        or not isinstance(expected.get("size"), int)
    ):
        raise ManifestError(f"{MANIFEST}: entry {name!r} lacks sha256 and size")
    file = root / Path(*posix.parts)
    parent = file.parent
    if parent.resolve() != (root.resolve() / Path(*posix.parts[:-1])):
        raise ManifestError(f"{MANIFEST}: the folder of {name!r} is a link leading outside the snapshot; refusing it")
    if not file.is_file():
        raise ManifestError(f"{name}: listed in {MANIFEST} but missing; download the repository again")
    if file.is_symlink() and not file.resolve().is_relative_to(root.resolve()) and hub_cache_blob(file) is None:
        raise ManifestError(f"{MANIFEST}: {name!r} is a link leading outside the snapshot; refusing it")
    return file, expected["size"], expected["sha256"]


def verify_manifest(
    directory: str | Path,
    subfolder: str | None = None,
    *,
    repo_files: Collection[str] | None = None,
    delete: bool = False,
) -> int:
    """Check the files the manifest lists (under ``subfolder`` only, if given); returns how many.

    Every entry is validated first (``repo_files``: the repository's file list, which every
    entry must be in); then each file's size and sha256. On a mismatch :class:`ManifestError`
    is raised; with ``delete`` (a download this tool just made) the file and its cache blob
    are deleted first, so a later load cannot pick them up.
    """
    root = Path(directory)
    path = root / MANIFEST
    if not path.is_file():
        raise ManifestError(
            f"{root} has no {MANIFEST}; it was not published by obsdiff-hub push, so it cannot be verified"
        )
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        raise ManifestError(f"{MANIFEST} is larger than {MAX_MANIFEST_BYTES >> 20} MiB; refusing the download")
    try:
        manifest = jsonio.loads(path.read_text())
    except ValueError as error:
        raise ManifestError(f"{MANIFEST} is not valid JSON ({error}); refusing the download") from error
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise ManifestError(f"{MANIFEST} has no files table; refusing the download")
    prefix = subfolder.strip("/") + "/" if subfolder else ""
    entries = [
        (name, _entry(name, expected, root, repo_files))
        for name, expected in manifest["files"].items()
        if str(name).startswith(prefix)
    ]
    for name, (file, size, digest) in entries:
        if file.stat().st_size != size or sha256_file(file) != digest:
            if not delete:
                raise ManifestError(
                    f"{name}: sha256 does not match {MANIFEST} (corrupted or tampered); it was not used"
                )
            blob = hub_cache_blob(file)
            file.unlink()
            if blob is not None and blob.exists():
                blob.unlink()
            raise ManifestError(
                f"{name}: sha256 does not match {MANIFEST} (corrupted or tampered); the file was deleted, download "
                "it again"
            )
    return len(entries)
