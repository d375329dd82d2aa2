"""Publishing and pulling pruned checkpoints on the Hugging Face Hub, with a sha256 manifest.

``push`` touches nothing local: the card (rendered for the target repo) and
``obsdiff-manifest.json`` (sha256 and size of every weight file) are built in memory and go
into the commit with the folder's files. Token, repo, branch and tag are checked before
anything is committed, so a push either lands as one tagged commit or leaves the repo as it
was. ``pull`` downloads a revision and checks every file against the manifest (see
``checkpoints/manifest.py``). Tokens come from huggingface_hub's usual places (``HF_TOKEN``,
the login cache) or the ``token`` argument and are never printed or written anywhere.
"""

from __future__ import annotations

import os
from pathlib import Path

from huggingface_hub import CommitOperationAdd, HfApi, snapshot_download
from huggingface_hub.errors import RepositoryNotFoundError
from huggingface_hub.utils import validate_repo_id

from .._version import __version__
from ..checkpoints.loading import CheckpointError, hub_errors, repo_files
from ..checkpoints.manifest import MANIFEST, build_manifest, manifest_bytes, verify_manifest
from .cards import card_for_folder
from .recipes import load_recipe


class HubError(CheckpointError):
    """A push or pull that cannot proceed; the message names what is wrong and the fix."""


def _repo_id(repo_id: str) -> str:
    try:
        validate_repo_id(repo_id)
    except Exception as error:
        raise HubError(f"invalid repo id {repo_id!r}: {str(error).splitlines()[0]}") from error
    if "/" not in repo_id:
        raise HubError(f"invalid repo id {repo_id!r}: use NAMESPACE/NAME")
    return repo_id


def _check_checkpoint(directory: Path) -> None:
    if not directory.is_dir():
        raise HubError(f"{directory} does not exist or is not a directory")
    missing = [n for n in ("recipe.yaml", "report.json") if not (directory / n).is_file()]
    if missing or not ((directory / "model_index.json").is_file() or (directory / "config.json").is_file()):
        raise HubError(f"{directory} is not a pruned checkpoint (needs recipe.yaml, report.json and a diffusers layout); run obsdiff-hub prune first")


def _upload_operations(directory: Path, card: str, manifest: bytes) -> list[CommitOperationAdd]:
    """Every regular, non-hidden file of the folder, with the card and manifest built in memory."""
    operations = [
        CommitOperationAdd(path_in_repo=path.relative_to(directory).as_posix(), path_or_fileobj=str(path))
        for path in sorted(directory.rglob("*"))
        if path.is_file()
        and not path.is_symlink()
        and not any(part.startswith(".") for part in path.relative_to(directory).parts)
        and path.relative_to(directory).as_posix() not in ("README.md", MANIFEST)
    ]
    operations.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=card.encode("utf-8")))
    operations.append(CommitOperationAdd(path_in_repo=MANIFEST, path_or_fileobj=manifest))
    return operations


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
    """Upload a pruned checkpoint folder in one commit and tag it; returns the commit sha, tag and URL."""
    directory = Path(directory)
    _check_checkpoint(directory)
    repo_id = _repo_id(repo_id)
    recipe = load_recipe(directory / "recipe.yaml")
    card = card_for_folder(directory, repo_id)
    manifest = manifest_bytes(build_manifest(directory))
    tag = tag or recipe.tag
    api = HfApi(endpoint=endpoint, token=token)
    with hub_errors(api.endpoint, token):
        api.whoami()  # a wrong or missing token fails here, before anything is created
        try:
            refs = api.list_repo_refs(repo_id)
            branches, tags = {b.name for b in refs.branches}, {t.name for t in refs.tags}
        except RepositoryNotFoundError:
            branches, tags = set(), set()
        if tag in tags:
            raise HubError(f"tag {tag} already exists on {repo_id}; choose another with --tag (nothing was committed)")
        api.create_repo(repo_id, private=private, exist_ok=True)
        if branch and branch not in branches:
            api.create_branch(repo_id, branch=branch, exist_ok=True)
        info = api.create_commit(
            repo_id,
            operations=_upload_operations(directory, card, manifest),
            commit_message=commit_message or f"{recipe.tag}: {recipe.description}",
            revision=branch,
        )
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
    with hub_errors(endpoint, token, source=repo_id):
        path = Path(snapshot_download(repo_id, revision=revision, local_dir=local_dir, cache_dir=cache_dir, token=token, endpoint=endpoint))
        listed = repo_files(repo_id, revision, token, endpoint) if verify else None
    if verify:
        # entries must be files of this repo: a manifest naming anything else in --local-dir is refused
        verify_manifest(path, repo_files=listed, delete=True)
    return path
