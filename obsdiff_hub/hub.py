"""Publishing and pulling pruned checkpoints on the Hugging Face Hub, with a sha256 manifest.

``push`` re-renders the card for the target repo, writes ``obsdiff-manifest.json`` (sha256
and size of every weight file), uploads the folder in one commit and tags it with the
recipe version. ``pull`` downloads a revision and checks every file against the manifest;
a file that does not match is deleted (from the cache too) and reported, never used.
Tokens come from huggingface_hub's usual places (``HF_TOKEN``, the login cache) or the
``token`` argument, and are never printed or written anywhere.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi, snapshot_download
from huggingface_hub.utils import validate_repo_id

from . import __version__

MANIFEST = "obsdiff-manifest.json"
WEIGHT_SUFFIXES = (".safetensors",)


class HubError(ValueError):
    """A push or pull that cannot proceed; the message names what is wrong and the fix."""


class ManifestError(HubError):
    """A downloaded file whose sha256 differs from the manifest written at push time."""


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(directory: str | os.PathLike) -> dict[str, Any]:
    """Hash every weight file under ``directory`` into ``obsdiff-manifest.json``."""
    root = Path(directory)
    files = {
        p.relative_to(root).as_posix(): {"sha256": sha256_file(p), "size": p.stat().st_size}
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.suffix in WEIGHT_SUFFIXES and not any(part.startswith(".") for part in p.relative_to(root).parts)
    }
    manifest = {"algorithm": "sha256", "obsdiff_hub_version": __version__, "files": files}
    (root / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def verify_manifest(directory: str | os.PathLike, subfolder: str | None = None) -> int:
    """Check the files the manifest lists (under ``subfolder`` only, if given); returns how many.

    A mismatching or missing file raises :class:`ManifestError`; a mismatching one is deleted
    first (its cache blob too), so a later load cannot pick it up.
    """
    root = Path(directory)
    path = root / MANIFEST
    if not path.is_file():
        raise ManifestError(f"{root} has no {MANIFEST}; it was not published by obsdiff-hub push, so it cannot be verified")
    manifest = json.loads(path.read_text())
    checked = 0
    for name, expected in manifest["files"].items():
        if subfolder and not name.startswith(subfolder.rstrip("/") + "/"):
            continue
        file = root / name
        if not file.exists():
            raise ManifestError(f"{name}: listed in {MANIFEST} but missing; download the repository again")
        if file.stat().st_size != expected["size"] or sha256_file(file) != expected["sha256"]:
            target = file.resolve()
            file.unlink()
            if target != file and target.exists():
                target.unlink()
            raise ManifestError(f"{name}: sha256 does not match {MANIFEST} (corrupted or tampered); the file was deleted, download it again")
        checked += 1
    return checked


def _check_checkpoint(directory: Path) -> None:
    if not directory.is_dir():
        raise HubError(f"{directory} does not exist or is not a directory")
    missing = [n for n in ("recipe.yaml", "report.json") if not (directory / n).is_file()]
    if missing or not ((directory / "model_index.json").is_file() or (directory / "config.json").is_file()):
        raise HubError(f"{directory} is not a pruned checkpoint (needs recipe.yaml, report.json and a diffusers layout); run obsdiff-hub prune first")


def _repo_id(repo_id: str) -> str:
    try:
        validate_repo_id(repo_id)
    except Exception as error:
        raise HubError(f"invalid repo id {repo_id!r}: {str(error).splitlines()[0]}") from error
    if "/" not in repo_id:
        raise HubError(f"invalid repo id {repo_id!r}: use NAMESPACE/NAME")
    return repo_id


def render_card_for(directory: Path, repo_id: str | None = None) -> str:
    """The model card of a pruned checkpoint directory, from its recipe and report."""
    from .cards import render_card
    from .recipes import load_recipe
    from .report import PruneReport

    _check_checkpoint(directory)
    recipe = load_recipe(directory / "recipe.yaml")
    data = json.loads((directory / "report.json").read_text())
    report = PruneReport.from_dict({k: v for k, v in data.items() if k not in ("provenance", "plan", "metrics")})
    grid = "samples.png" if (directory / "samples.png").is_file() else None
    card = render_card(
        recipe,
        report,
        repo_id=repo_id,
        plan=data.get("plan"),
        metrics=data.get("metrics"),
        sample_grid=grid,
        base_revision=data.get("provenance", {}).get("base_revision"),
    )
    return card.content


def push(
    directory: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    branch: str | None = None,
    tag: str | None = None,
    commit_message: str | None = None,
    token: str | None = None,
    endpoint: str | None = None,
) -> dict[str, str]:
    """Upload a pruned checkpoint directory; returns the commit sha, tag and URL."""
    from .recipes import load_recipe

    directory = Path(directory)
    _check_checkpoint(directory)
    repo_id = _repo_id(repo_id)
    recipe = load_recipe(directory / "recipe.yaml")
    (directory / "README.md").write_text(render_card_for(directory, repo_id), encoding="utf-8")
    write_manifest(directory)
    api = HfApi(endpoint=endpoint, token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    if branch:
        api.create_branch(repo_id, branch=branch, exist_ok=True)
    info = api.upload_folder(
        folder_path=directory,
        repo_id=repo_id,
        revision=branch,
        commit_message=commit_message or f"{recipe.tag}: {recipe.description}",
        ignore_patterns=[".*", "**/.*"],
    )
    tag = tag or recipe.tag
    api.create_tag(repo_id, tag=tag, revision=info.oid, tag_message=f"obsdiff-hub {__version__}, recipe sha256 {recipe.sha256}")
    return {"commit": info.oid, "tag": tag, "url": info.commit_url}


def pull(
    repo_id: str,
    *,
    revision: str | None = None,
    local_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    token: str | None = None,
    endpoint: str | None = None,
    verify: bool = True,
) -> Path:
    """Download a revision (branch, tag or sha) and verify it against its manifest."""
    repo_id = _repo_id(repo_id)
    path = Path(
        snapshot_download(repo_id, revision=revision, local_dir=local_dir, cache_dir=cache_dir, token=token, endpoint=endpoint)
    )
    if verify:
        verify_manifest(path)
    return path
