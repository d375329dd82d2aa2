"""Publishing a pruned checkpoint: its card, manifest and files as one tagged commit on the Hub.

``publish`` touches nothing local: the card (rendered for the target repo) and
``obsdiff-manifest.json`` (sha256 and size of every weight file) are built in memory and go into
the commit with the folder's files; the tag defaults to the recipe's ``NAME-vVERSION``. The Hub
requests themselves, and their checks, are :meth:`obsdiff_hub.hub.HubClient.push`.
"""

from __future__ import annotations

import os
from pathlib import Path

from .._version import __version__
from ..hub import (
    MANIFEST,
    HubClient,
    PushResult,
    build_manifest,
    check_repo_id,
    manifest_bytes,
)
from .cards import card_for_folder
from .recipes import load_recipe
from .records import CARD_FILE, RECIPE_FILE, check_checkpoint_folder


def publish(
    directory: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    branch: str | None = None,
    tag: str | None = None,
    commit_message: str | None = None,
    token: str | None = None,
    endpoint: str | None = None,
) -> PushResult:
    """Upload a pruned checkpoint folder in one commit and tag it (default: the recipe's ``NAME-vVERSION``)."""
    directory = Path(directory)
    check_checkpoint_folder(directory)
    check_repo_id(repo_id, namespaced=True)
    recipe = load_recipe(directory / RECIPE_FILE)
    in_memory = {
        CARD_FILE: card_for_folder(directory, repo_id).encode("utf-8"),
        MANIFEST: manifest_bytes(build_manifest(directory)),
    }
    return HubClient(endpoint, token).push(
        directory,
        repo_id,
        in_memory=in_memory,
        tag=tag or recipe.tag,
        commit_message=commit_message or f"{recipe.tag}: {recipe.description}",
        tag_message=f"obsdiff-hub {__version__}, recipe sha256 {recipe.sha256}",
        private=private,
        branch=branch,
    )
