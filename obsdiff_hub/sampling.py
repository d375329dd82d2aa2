"""Seeded sampling and dense-vs-pruned grids (for ``generate`` and model-card samples)."""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image


def load_pipeline(source: Any, device: str | None = None) -> Any:
    """A pipeline object as is, or ``DiffusionPipeline.from_pretrained`` of a directory or repo id."""
    if not isinstance(source, str):
        return source
    from diffusers import DiffusionPipeline

    from . import models  # noqa: F401 - makes the OBSDiff classes resolvable from model_index.json

    if source.startswith("builtin:tiny-shapes"):
        from .shapes.pipeline import load_shapes_pipeline

        pipeline = load_shapes_pipeline()
    else:
        pipeline = DiffusionPipeline.from_pretrained(source)
    return pipeline.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def generate_images(
    source: Any,
    prompts: list[str],
    *,
    seed: int = 0,
    steps: int = 25,
    guidance: float | None = None,
    resolution: int | None = None,
    device: str | None = None,
) -> list[Image.Image]:
    """One image per prompt; image i uses ``torch.Generator().manual_seed(seed + i)`` on the CPU."""
    pipeline = load_pipeline(source, device)
    pipeline.set_progress_bar_config(disable=True)
    images = []
    for i, prompt in enumerate(prompts):
        kwargs: dict[str, Any] = {"num_inference_steps": steps, "generator": torch.Generator().manual_seed(seed + i)}
        if guidance is not None:
            kwargs["guidance_scale"] = guidance
        if resolution is not None:
            kwargs["height"] = kwargs["width"] = resolution
        images.append(pipeline(prompt, **kwargs).images[0])
    return images


def image_grid(rows: list[list[Image.Image]]) -> Image.Image:
    """Rows of equally sized images pasted into one image (row 0 on top)."""
    width, height = rows[0][0].size
    grid = Image.new("RGB", (width * max(len(r) for r in rows), height * len(rows)), "white")
    for y, row in enumerate(rows):
        for x, image in enumerate(row):
            grid.paste(image.convert("RGB"), (x * width, y * height))
    return grid
