"""``obsdiff-hub generate``: seeded samples, optionally side by side with the dense model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import InputError
from ..pruning.distributed import resolve_device
from ..zoo.sampling import generate_images, image_grid
from .display import console
from .options import DeviceOpt


def generate(
    model: Annotated[str, typer.Option(help="Pipeline directory, Hub repo id, or builtin:NAME.")],
    prompt: Annotated[list[str], typer.Option(help="Prompt (repeat for several).")],
    out: Annotated[Path, typer.Option(help="Output PNG.")] = Path("samples.png"),
    compare: Annotated[Optional[str], typer.Option(help="Dense base pipeline: write a dense (top) vs pruned (bottom) grid.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the first image; image i uses seed + i.")] = 0,
    steps: Annotated[int, typer.Option(help="Sampling steps.")] = 25,
    guidance: Annotated[Optional[float], typer.Option(help="Guidance scale (default: the pipeline's).")] = None,
    resolution: Annotated[Optional[int], typer.Option(help="Height and width.")] = None,
    device: DeviceOpt = None,
) -> None:
    """Sample images with fixed seeds (optionally side by side with the dense model)."""
    if steps < 1:
        raise InputError(f"--steps must be at least 1, got {steps}")
    run_device = str(resolve_device(device))
    settings = dict(seed=seed, steps=steps, guidance=guidance, resolution=resolution, device=run_device)
    rows = [generate_images(compare, prompt, **settings)] if compare else []
    rows.append(generate_images(model, prompt, **settings))
    image_grid(rows, row_labels=["dense", "pruned"] if compare else None).save(out)
    console.print(f"wrote {out}")
