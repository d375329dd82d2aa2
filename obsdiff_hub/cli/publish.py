"""``obsdiff-hub card|push|pull``: review a checkpoint's card, publish it, download and verify it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..hub import pull as pull_verified
from ..zoo.cards import write_card
from ..zoo.publishing import publish
from .display import console
from .options import CheckpointArg, EndpointOpt, RepoIdArg, RevisionOpt, TokenOpt


def card(
    directory: CheckpointArg,
    repo_id: Annotated[Optional[str], typer.Option("--repo-id", help="Repo id used in the usage snippets.")] = None,
) -> None:
    """Render the model card locally (writes DIR/README.md) for review before pushing."""
    console.print(f"wrote {write_card(directory, repo_id)}")


def push(
    directory: CheckpointArg,
    repo_id: Annotated[str, typer.Option("--repo-id", help="NAMESPACE/NAME on the Hub.")],
    private: Annotated[bool, typer.Option(help="Create the repo private.")] = False,
    branch: Annotated[Optional[str], typer.Option(help="Push to this branch (created if needed).")] = None,
    tag: Annotated[Optional[str], typer.Option(help="Tag for the commit (default: RECIPE-vVERSION).")] = None,
    commit_message: Annotated[Optional[str], typer.Option(help="Commit message.")] = None,
    token: TokenOpt = None,
    endpoint: EndpointOpt = None,
) -> None:
    """Publish a pruned checkpoint: card, recipe, report, manifest and weights in one tagged commit."""
    result = publish(directory, repo_id, private=private, branch=branch, tag=tag, commit_message=commit_message, token=token, endpoint=endpoint)
    console.print(f"pushed {directory} to {repo_id} at {result.commit[:12]} (tag {result.tag})")


def pull(
    repo_id: RepoIdArg,
    revision: RevisionOpt = None,
    local_dir: Annotated[Optional[Path], typer.Option(help="Download here instead of the Hub cache.")] = None,
    token: TokenOpt = None,
    endpoint: EndpointOpt = None,
    verify: Annotated[bool, typer.Option(help="Check every weight file against the push-time sha256 manifest.")] = True,
) -> None:
    """Download a published checkpoint and verify it."""
    path = pull_verified(repo_id, revision=revision, local_dir=local_dir, token=token, endpoint=endpoint, verify=verify)
    console.print(f"{repo_id} → {path}" + (" (verified)" if verify else ""))
