"""Loading pipelines by name, seeded sampling, and dense-vs-pruned grids with captions."""

from __future__ import annotations

import inspect
import io
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import diffusers
import torch
from diffusers import DiffusionPipeline
from PIL import Image, ImageDraw, ImageFont, UnidentifiedImageError

from .. import models  # noqa: F401 - registers the OBSDiff classes, so model_index.json entries naming them resolve
from ..architectures.components import (
    DENOISERS,
    check_resolution,
    default_resolution,
    denoiser_of,
    pipeline_vae_scale,
    resolution_multiple,
    vae_scale_factor,
)
from ..errors import CheckpointError, InputError
from ..hub import BUILTIN_PREFIX, HubClient, builtin_name, fetch, local_folder_or_repo, resolve_source
from ..models.safe_adapters import guard_adapter_loaders
from ..pruning.prompts import check_lengths
from ..shapes.pipeline import load_shapes_pipeline
from ..storage.diagnostics import check_pipeline_configs, explained_pipeline_failure
from ..storage.files import read_json
from ..tiny import TINY_PIPELINES

MIN_GRID_SIDE = 128
DOWNLOAD_ARGS = (
    "cache_dir",
    "token",
    "variant",
    "local_files_only",
    "proxies",
)  # grids show small images (32-pixel shapes) at least this large


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
    The pipeline's ``load_lora_weights`` and ``load_ip_adapter`` then read safetensors files only, and map
    a dense LoRA onto a pruned denoiser before diffusers' loaders compare shapes (Flux's widens layers).
    """
    if not isinstance(source, str):
        pipeline = source
    elif (name := builtin_name(source)) is not None:
        registry = _builtins()
        if name not in registry:
            raise InputError(
                f"unknown built-in model {source!r}; built-ins: {', '.join(BUILTIN_PREFIX + n for n in registry)}"
            )
        pipeline = registry[name]()
    else:
        folder = local_folder_or_repo(source)
        client = HubClient(token=kwargs.get("token"))
        if verify:
            fetch(
                source,
                revision=revision,
                cache_dir=kwargs.get("cache_dir"),
                local_files_only=bool(kwargs.get("local_files_only")),
                client=client,
            )
        if kwargs.pop("use_safetensors", True) is False:
            raise InputError(
                "obsdiff-hub loads safetensors only (pickled weights can run code); leave `use_safetensors` at True"
            )
        if folder is None:  # download first, so every config is checked before anything is built from it
            with client.errors(source, maybe_folder=True):
                folder = Path(
                    DiffusionPipeline.download(
                        source,
                        revision=revision,
                        use_safetensors=True,
                        **{k: kwargs[k] for k in DOWNLOAD_ARGS if k in kwargs},
                    )
                )
        with explained_pipeline_failure(source, folder):
            check_pipeline_configs(folder)
            pipeline = DiffusionPipeline.from_pretrained(folder, dtype=torch_dtype, use_safetensors=True, **kwargs)
        torch_dtype = None  # loaded in it
    if torch_dtype is not None:
        pipeline.to(dtype=torch_dtype)
    return guard_adapter_loaders(pipeline.to(device) if device is not None else pipeline)


@dataclass(frozen=True)
class SamplingDefaults:
    """What a pipeline samples with when not told: its ``guidance_scale`` and image side."""

    guidance_scale: float | None
    resolution: int


def _call_default(pipeline_class: type, name: str) -> Any:
    parameter = inspect.signature(pipeline_class.__call__).parameters.get(name)
    return None if parameter is None or parameter.default is inspect.Parameter.empty else parameter.default


def pipeline_defaults(source: str) -> SamplingDefaults:
    """The guidance scale and resolution ``source`` samples with by default, read from its
    ``model_index.json`` and component configs (a built-in is loaded; no weights are read otherwise)."""
    if builtin_name(source) is not None:
        pipeline = load_pipeline(source)
        denoiser = denoiser_of(pipeline)
        return SamplingDefaults(
            _call_default(type(pipeline), "guidance_scale"),
            default_resolution(denoiser.config, pipeline_vae_scale(pipeline)),
        )
    folder = resolve_source(source)
    index = read_json(folder / "model_index.json") if (folder / "model_index.json").is_file() else None
    if index is None:
        raise InputError(f"{source} is not a pipeline (no model_index.json); sampling needs a whole pipeline")
    name = str(index.get("_class_name", ""))
    pipeline_class = getattr(diffusers, name, None) if name.endswith("Pipeline") else None
    if not (isinstance(pipeline_class, type) and issubclass(pipeline_class, DiffusionPipeline)):
        raise CheckpointError(f"{folder / 'model_index.json'}: {name!r} is not a diffusers pipeline class")
    denoiser = next((folder / d for d in DENOISERS if (folder / d / "config.json").is_file()), None)
    if denoiser is None:
        raise CheckpointError(f"{folder}: no unet/ or transformer/ folder with a config.json")
    vae = folder / "vae" / "config.json"
    scale = vae_scale_factor(read_json(vae) if vae.is_file() else None)
    return SamplingDefaults(
        _call_default(pipeline_class, "guidance_scale"), default_resolution(read_json(denoiser / "config.json"), scale)
    )


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
    dtype: torch.dtype | None = None,
    batch_size: int = 1,
    on_image: Callable[[int], None] | None = None,
) -> list[Image.Image]:
    """One image per prompt; image i uses ``torch.Generator().manual_seed(seed + i)`` on the CPU,
    so the same prompt and seed give the same noise for a dense and a pruned model. ``dtype``:
    default fp16 on CUDA, fp32 on the CPU."""
    check_lengths(prompts, "the prompts")
    run_device = torch.device(device) if device else default_device()
    pipeline = load_pipeline(source, torch_dtype=dtype or sampling_dtype(run_device), device=run_device)
    if resolution is not None:
        check_resolution(resolution, resolution_multiple(denoiser_of(pipeline), pipeline_vae_scale(pipeline)))
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


def image_grid(
    rows: list[list[Image.Image]], captions: list[str] | None = None, row_labels: list[str] | None = None
) -> Image.Image:
    """Rows of equally sized images in one picture (row 0 on top), small images enlarged to at
    least 128 pixels (nearest neighbour: every pixel stays visible), with a caption under each
    column (at most three lines, ``…`` where it is cut) and a label left of each row when given."""
    scale = max(1, -(-MIN_GRID_SIDE // min(rows[0][0].size)))
    if scale > 1:
        rows = [
            [image.resize((image.width * scale, image.height * scale), resample=Image.NEAREST) for image in row]
            for row in rows
        ]
    width, height = rows[0][0].size
    columns = max(len(r) for r in rows)
    font = ImageFont.load_default()
    lines = [textwrap.wrap(c, max(8, width // 7), max_lines=3, placeholder=" …") for c in captions] if captions else []
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


IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}
MAX_IMAGE_PIXELS = 64 * 1024**2  # 8192²: far above any model's output or a reference photo


def read_image(path: Path) -> Image.Image:
    """An image file as RGB, its size checked before it is decoded (a few kilobytes of PNG can
    claim gigapixels); a file that is not an image, or too large, is one line naming it."""
    too_large = f"more than the {MAX_IMAGE_PIXELS >> 20} MP an image may have here"
    try:
        with Image.open(path) as image:
            if image.width * image.height > MAX_IMAGE_PIXELS:
                raise InputError(f"{path}: {image.width}×{image.height} pixels, {too_large}")
            return image.convert("RGB")
    except Image.DecompressionBombError:
        raise InputError(f"{path}: claims {too_large}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        if isinstance(error, InputError):
            raise
        raise InputError(
            f"{path}: not a readable image ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''})"
        ) from None


def image_format(path: Path) -> str:
    """The format an image path's suffix names, or an :class:`InputError` listing the ones written."""
    fmt = IMAGE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise InputError(f"{path}: an image needs a .png, .jpg or .webp name, given in `out`")
    return fmt


def image_bytes(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()
