"""``obsdiff-hub export``: a pruned checkpoint as one file for the tools that read one file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import InputError
from .display import console
from .lazy import library
from .options import DtypeOpt, OverwriteOpt, QuietOpt, dtype_option

single_file = library("checkpoints.single_file")
precision = library("pruning.precision")


def export(
    checkpoint: Annotated[
        Path, typer.Argument(metavar="CKPT", help="A pruned checkpoint folder (pipeline or denoiser).")
    ],
    out: Annotated[Path, typer.Option("--out", metavar="FILE", help="The .safetensors file to write.")],
    format: Annotated[
        str,
        typer.Option("--format", metavar="FORMAT", help="single-file: the original key layout (LDM/SGM, SD3, Flux)."),
    ] = "single-file",
    dtype: DtypeOpt = None,
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Export a pruned denoiser as one .safetensors file (ComfyUI, A1111/Forge, InvokeAI, from_single_file).

    \b
    Example: obsdiff-hub export sdxl-30/ --out sdxl-30.safetensors --dtype float16
    """
    if format != "single-file":
        raise InputError(f"--format must be single-file, got {format!r}")
    dtype = dtype_option(dtype)
    written = single_file.export_single_file(
        checkpoint, out, torch_dtype=precision.DTYPES[dtype] if dtype else None, overwrite=overwrite
    )
    typer.echo(str(written)) if quiet else console.print(f"exported {checkpoint} → {written}")
