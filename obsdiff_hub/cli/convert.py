"""``obsdiff-hub convert-legacy``: the reference project's pickles to safetensors, running nothing in them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import InputError
from .display import console
from .lazy import library
from .options import OverwriteOpt, QuietOpt

legacy = library("checkpoints.legacy")


def convert_legacy(
    path: Annotated[Path, typer.Argument(metavar="FILE", help="The reference project's whole-module .pth file.")],
    out: Annotated[Path, typer.Option("--out", metavar="DIR", help="Output folder (safetensors and config).")],
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Convert a legacy pickle into safetensors without executing anything in it.

    \b
    Example: obsdiff-hub convert-legacy model.pth --out converted/
    """
    if not path.is_file():
        raise InputError(f"{path} is not a file")
    model = legacy.convert_legacy(path, out, overwrite=overwrite)
    typer.echo(str(out)) if quiet else console.print(f"converted {path} → {out} ({type(model).__name__})")
