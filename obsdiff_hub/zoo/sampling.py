"""Loading pipelines by name, seeded sampling, and dense-vs-pruned grids with captions."""

from __future__ import annotations

import textwrap
from typing import Any, Callable

import torch
from diffusers import DiffusionPipeline
from PIL import Image, ImageDraw, ImageFont

from .. import models  # noqa: F401 - registers the OBSDiff classes, so model_index.json entries naming them resolve
from ..errors import InputError
from ..hub import HubClient, fetch_verified, local_folder_or_repo
from ..shapes.pipeline import load_shapes_pipeline
from ..storage.diagnostics import explained_pipeline_failure
from ..tiny import TINY_PIPELINES


def _builtins() -> dict[str, Callable[[], Any]]:
    """The shipped models, each loaded in its own checkpoint dtype."""
    registry: dict[str, Callable[[], Any]] = {"tiny-shapes": lambda: load_shapes_pipeline(torch.float16)}
    registry.update({f"tiny-{name}": factory for name, factory in TINY_PIPELINES.items()})
    return registry


def load_pipeline(
    source: Any,
    *,
    revision: str | None = None,
    torch_dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
    verify: bool = False,
    **kwargs: Any,
) -> Any:
    """A pipeline object as is; ``builtin:NAME`` (tiny-shapes, tiny-sdxl, ...) built here; else
    ``DiffusionPipeline.from_pretrained`` of a local folder or a Hub repo id (``kwargs`` go there).

    ``verify``: check the snapshot against its ``obsdiff-manifest.json`` before loading
    (a mismatching file is deleted and the load refused), as ``OBSDiff*.from_pretrained`` does.
    """
    if not isinstance(source, str):
        pipeline = source
    elif source.startswith("builtin:"):
        name = source.removeprefix("builtin:")
        registry = _builtins()
        if name not in registry:
            raise InputError(f"unknown built-in model {source!r}; built-ins: {', '.join('builtin:' + n for n in registry)}")
        pipeline = registry[name]()
    else:
        folder = local_folder_or_repo(source)
        client = HubClient(token=kwargs.get("token"))
        if verify:
            fetch_verified(source, revision=revision, cache_dir=kwargs.get("cache_dir"), local_files_only=bool(kwargs.get("local_files_only")), client=client)
        with explained_pipeline_failure(source, folder), client.errors(source, maybe_folder=True):
            pipeline = DiffusionPipeline.from_pretrained(folder or source, revision=None if folder else revision, dtype=torch_dtype, **kwargs)
        return pipeline.to(device) if device is not None else pipeline
    if torch_dtype is not None:
        pipeline.to(dtype=torch_dtype)
    return pipeline.to(device) if device is not None else pipeline


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def sampling_dtype(device: torch.device) -> torch.dtype:
    """fp16 on CUDA (what users deploy), fp32 on the CPU (half kernels there are slow or missing)."""
    return torch.float16 if device.type == "cuda" else torch.float32


def generate_images(
    source: Any,
    prompts: list[str],
    *,
    seed: int = 0,
    steps: int = 25,
    guidance: float | None = None,
    resolution: int | None = None,
    device: str | None = None,
    batch_size: int = 1,
    on_image: Callable[[int], None] | None = None,
) -> list[Image.Image]:
    """One image per prompt; image i uses ``torch.Generator().manual_seed(seed + i)`` on the CPU,
    so the same prompt and seed give the same noise for a dense and a pruned model."""
    run_device = torch.device(device) if device else default_device()
    pipeline = load_pipeline(source, torch_dtype=sampling_dtype(run_device), device=run_device)
    pipeline.set_progress_bar_config(disable=True)
    images: list[Image.Image] = []
    if on_image is not None:
        on_image(0)  # sampling starts now (progress displays time it from here)
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start : start + batch_size]
        kwargs: dict[str, Any] = {
            "num_inference_steps": steps,
            "generator": [torch.Generator().manual_seed(seed + start + i) for i in range(len(batch))],
        }
        if guidance is not None:
            kwargs["guidance_scale"] = guidance
        if resolution is not None:
            kwargs["height"] = kwargs["width"] = resolution
        with torch.inference_mode():
            images += pipeline(batch, **kwargs).images
        if on_image is not None:
            on_image(len(images))
    return images


def image_grid(rows: list[list[Image.Image]], captions: list[str] | None = None, row_labels: list[str] | None = None) -> Image.Image:
    """Rows of equally sized images in one picture (row 0 on top), with a caption under each
    column and a label left of each row when given."""
    width, height = rows[0][0].size
    columns = max(len(r) for r in rows)
    font = ImageFont.load_default()
    lines = [textwrap.wrap(c, max(8, width // 7))[:3] for c in captions] if captions else []
    caption_height = 12 * max((len(x) for x in lines), default=0) + (4 if captions else 0)
    label_width = 8 + 7 * max((len(x) for x in row_labels), default=0) if row_labels else 0
    grid = Image.new("RGB", (label_width + width * columns, height * len(rows) + caption_height), "white")
    pen = ImageDraw.Draw(grid)
    for y, row in enumerate(rows):
        if row_labels:
            pen.text((4, y * height + height // 2 - 6), row_labels[y], fill="black", font=font)
        for x, image in enumerate(row):
            grid.paste(image.convert("RGB"), (label_width + x * width, y * height))
    for x, wrapped in enumerate(lines):
        for i, line in enumerate(wrapped):
            pen.text((label_width + x * width + 2, height * len(rows) + 2 + 12 * i), line, fill="black", font=font)
    return grid
