"""``obsdiff-hub generate``: seeded samples, optionally side by side with the dense base."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import InputError
from .display import console
from .lazy import library
from .options import (
    BaseOpt,
    DeviceOpt,
    DtypeOpt,
    GuidanceAlias,
    GuidanceOpt,
    ModelAlias,
    QuietOpt,
    ResolutionOpt,
    SeedOpt,
    StepsAlias,
    StepsOpt,
    checkpoint,
    dtype_option,
    positive,
    renamed,
)

distributed = library("pruning.distributed")
outputs = library("storage.outputs")
precision = library("pruning.precision")
sampling = library("zoo.sampling")


def generate(
    model_argument: Annotated[
        Optional[str],
        typer.Argument(metavar="MODEL", help="A pipeline: folder, Hub repo id or builtin:NAME.", show_default=False),
    ] = None,
    model: ModelAlias = None,
    prompt: Annotated[
        Optional[list[str]],
        typer.Option("--prompt", "-p", metavar="TEXT", help="A prompt (repeat for several images)."),
    ] = None,
    out: Annotated[
        Path, typer.Option("--out", metavar="FILE", help="The image to write: .png, .jpg or .webp.")
    ] = Path("samples.png"),
    base: BaseOpt = None,
    compare: Annotated[Optional[str], typer.Option("--compare", hidden=True, help="Old spelling of --base.")] = None,
    seed: SeedOpt = None,
    num_inference_steps: StepsOpt = None,
    steps: StepsAlias = None,
    guidance_scale: GuidanceOpt = None,
    guidance: GuidanceAlias = None,
    resolution: ResolutionOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Sample images with fixed seeds: one image as sampled, or a captioned grid of several prompts,
    with --base the dense base's row above the model's.

    \b
    Example: obsdiff-hub generate tiny-out --base builtin:tiny-shapes -p "a small red circle" --out grid.png
    """
    source = checkpoint(model_argument, model, "generate")
    if not prompt:
        raise InputError('give at least one prompt: --prompt "..." (repeatable)')
    fmt = sampling.image_format(out)
    outputs.check_writable_file(out)  # before any sampling
    base = renamed(base, compare, "--base", "--compare")
    steps = positive(renamed(num_inference_steps, steps, "--num-inference-steps", "--steps"), "--num-inference-steps")
    dtype = dtype_option(dtype)
    settings = dict(
        seed=seed or 0,
        steps=steps or 25,
        guidance=renamed(guidance_scale, guidance, "--guidance-scale", "--guidance"),
        resolution=positive(resolution, "--resolution"),
        device=str(distributed.resolve_device(device)),
        dtype=precision.DTYPES[dtype] if dtype else None,
    )
    rows = [sampling.generate_images(base, prompt, **settings)] if base else []
    rows.append(sampling.generate_images(source, prompt, **settings))
    if len(rows) == 1 and len(prompt) == 1:
        image = rows[0][0]  # one image: written as sampled
    else:
        image = sampling.image_grid(rows, captions=prompt, row_labels=["dense", "pruned"] if base else None)
    outputs.write_atomic(out, sampling.image_bytes(image, fmt))
    if quiet:
        typer.echo(str(out))
    else:
        console.print(f"wrote {out}")
