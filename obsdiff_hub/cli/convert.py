"""``obsdiff-hub convert-legacy``: the reference project's pickles to safetensors, running nothing in them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..checkpoints.legacy import convert_legacy as convert
from ..errors import InputError
from .display import console


def convert_legacy(
    path: Annotated[Path, typer.Argument(help="Reference project's whole-module .pth file.")],
    out: Annotated[Path, typer.Option(help="Output directory (safetensors + config).")],
    overwrite: Annotated[bool, typer.Option(help="Replace an earlier output of this tool.")] = False,
) -> None:
    """Convert a legacy pickle into safetensors without executing anything in it."""
    if not path.is_file():
        raise InputError(f"{path} is not a file")
    model = convert(path, out, overwrite=overwrite)
    console.print(f"converted {path} → {out} ({type(model).__name__})")
