"""``obsdiff-hub card|push|pull``: review a checkpoint's card, publish it, download and verify it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import InputError
from .display import console, print_json
from .lazy import library
from .options import (
    EndpointOpt,
    JsonOpt,
    ModelAlias,
    ModelArg,
    QuietOpt,
    RevisionOpt,
    TokenOpt,
    checkpoint,
)

cards = library("zoo.cards")
hub = library("hub")
publishing = library("zoo.publishing")
family = library("zoo.family")

RepoIdOpt = Annotated[Optional[str], typer.Option("--repo-id", metavar="NAMESPACE/NAME", help="The Hub repo.")]


def card(
    model_argument: ModelArg = None,
    model: ModelAlias = None,
    repo_id: RepoIdOpt = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace a README.md this tool did not write.")
    ] = False,
    quiet: QuietOpt = False,
) -> None:
    """Render the model card into the checkpoint's README.md, for review before pushing.

    \b
    Example: obsdiff-hub card tiny-out --repo-id me/tiny-shapes-50
    """
    path = cards.write_card(Path(checkpoint(model_argument, model, "card")), repo_id, overwrite=overwrite)
    typer.echo(str(path)) if quiet else console.print(f"wrote {path}")


def push(
    model_argument: ModelArg = None,
    model: ModelAlias = None,
    repo_id: RepoIdOpt = None,
    private: Annotated[bool, typer.Option("--private", help="Create the repo private.")] = False,
    branch: Annotated[
        Optional[str], typer.Option("--branch", metavar="BRANCH", help="Push to this branch (created if needed).")
    ] = None,
    tag: Annotated[
        Optional[str], typer.Option("--tag", metavar="TAG", help="Tag for the commit (default: RECIPE-vVERSION).")
    ] = None,
    commit_message: Annotated[
        Optional[str], typer.Option("--commit-message", metavar="TEXT", help="Commit message.")
    ] = None,
    token: TokenOpt = None,
    endpoint: EndpointOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Publish a pruned checkpoint: card, recipe, report, manifest and weights in one tagged commit.

    \b
    Example: obsdiff-hub push tiny-out --repo-id me/tiny-shapes-50
    """
    folder = checkpoint(model_argument, model, "push")
    if repo_id is None:
        raise InputError("give the repo to publish to: --repo-id NAMESPACE/NAME")
    if family.is_family(Path(folder)):
        if branch or tag or commit_message:
            raise InputError(
                "a family is pushed one branch and tag per member (named after its recipe); --branch, --tag and "
                "--commit-message apply to single checkpoints"
            )
        members, card = family.publish_family(folder, repo_id, private=private, token=token, endpoint=endpoint)
        if as_json:
            print_json(
                {
                    "repo_id": repo_id,
                    "members": [{"branch": b, "commit": r.commit, "tag": r.tag} for b, r in members.items()],
                    "card_commit": card.commit,
                }
            )
        else:
            for b, r in members.items():
                console.print(f"pushed {b} to {repo_id} branch {b} at {r.commit[:12]} (tag {r.tag})")
            console.print(f"family card on {repo_id} main at {card.commit[:12]}")
        return
    result = publishing.publish(
        folder,
        repo_id,
        private=private,
        branch=branch,
        tag=tag,
        commit_message=commit_message,
        token=token,
        endpoint=endpoint,
    )
    if as_json:
        print_json({"repo_id": repo_id, "commit": result.commit, "tag": result.tag, "url": result.url})
    else:
        console.print(f"pushed {folder} to {repo_id} at {result.commit[:12]} (tag {result.tag})")


def pull(
    repo_id: Annotated[str, typer.Argument(metavar="REPO_ID", help="NAMESPACE/NAME on the Hub.")],
    revision: RevisionOpt = None,
    local_dir: Annotated[
        Optional[Path], typer.Option("--local-dir", metavar="DIR", help="Download here instead of the Hub cache.")
    ] = None,
    token: TokenOpt = None,
    endpoint: EndpointOpt = None,
    verify: Annotated[
        bool,
        typer.Option("--verify/--no-verify", help="Check every weight file against the push-time sha256 manifest."),
    ] = True,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Download a published checkpoint and verify it.

    \b
    Example: obsdiff-hub pull me/tiny-shapes-50 --revision tiny-shapes-unstructured-50-v1
    """
    fetched = hub.pull(repo_id, revision=revision, local_dir=local_dir, token=token, endpoint=endpoint, verify=verify)
    if as_json:
        print_json(
            {
                "repo_id": repo_id,
                "commit": fetched.commit,
                "path": str(fetched.path),
                "verified_files": fetched.checked if verify else None,
            }
        )
    elif quiet:
        typer.echo(str(fetched.path))
    else:
        checked = f" ({fetched.checked} weight files verified)" if verify else " (not verified)"
        console.print(f"{repo_id} @ {fetched.commit} → {fetched.path}{checked}")
