"""Seeded sampling and dense-vs-pruned grids (for ``generate`` and model-card samples)."""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image


def load_pipeline(
    source: Any, *, revision: str | None = None, torch_dtype: torch.dtype = torch.float32, device: str | None = None
) -> Any:
    """A pipeline object as is; ``builtin:NAME`` (tiny-shapes, tiny-sdxl, ...) built here; else
    ``DiffusionPipeline.from_pretrained`` of a directory or Hub repo id."""
    if not isinstance(source, str):
        pipeline = source
    elif source.startswith("builtin:"):
        pipeline = _builtin_pipeline(source.removeprefix("builtin:"))
        if torch_dtype != torch.float32:
            pipeline.to(dtype=torch_dtype)
    else:
        from diffusers import DiffusionPipeline

        from . import models  # noqa: F401 - makes the OBSDiff classes resolvable from model_index.json

        pipeline = DiffusionPipeline.from_pretrained(source, revision=revision, torch_dtype=torch_dtype)
    return pipeline.to(device) if device else pipeline


def _builtin_pipeline(name: str) -> Any:
    from . import tiny

    if name == "tiny-shapes":
        from .shapes.pipeline import load_shapes_pipeline

        return load_shapes_pipeline()
    key = name.removeprefix("tiny-")
    if key not in tiny.TINY_PIPELINES:
        raise ValueError(f"unknown built-in model 'builtin:{name}'; built-ins: tiny-shapes, {', '.join('tiny-' + k for k in tiny.TINY_PIPELINES)}")
    return tiny.TINY_PIPELINES[key]()


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
    pipeline = load_pipeline(source, device=device or ("cuda" if torch.cuda.is_available() else "cpu"))
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
