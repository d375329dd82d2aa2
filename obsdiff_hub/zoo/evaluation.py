"""Quality of a pruned checkpoint next to its dense base: the same prompts, the same seeds.

Images are generated once per (model, prompts, settings) and cached as PNGs under a key of
the model's fingerprint (sha256 of its files), the prompts and the settings, so evaluating
another metric, or the same base against another checkpoint, reuses them. Every number in
``eval.json`` carries its sample count and a bootstrap 95% interval (1000 resamples of the
images, seed 0). The metrics themselves live in :mod:`.metrics`, one module each; metric models
download from the Hub like any model, and settings name them so tests can use small local ones.

Settings left open come from the checkpoint's own recipe (its ``evaluation`` section: the
numbers ``prune`` already published), then from the pipeline (its guidance scale and image
size); ``eval.json`` records every value used, and an earlier evaluation is never replaced
unless asked.
"""

from __future__ import annotations

import hashlib
import json
import os
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from huggingface_hub import constants as hub_constants
from PIL import Image
from pydantic import ValidationError

from .._version import __version__
from ..errors import InputError
from ..hub import builtin_name, local_folder_or_repo, resolve_source
from ..pruning.prompts import builtin_prompts, contained_path, prompts_sha256, read_prompt_file
from ..pruning.validation import describe_error
from ..shapes.dataset import evaluation_scenes
from ..storage.diagnostics import check_pipeline_configs
from ..storage.files import checkpoint_files, is_regular_file
from ..storage.manifest import sha256_file
from ..storage.outputs import Destination, HeldFolder
from .metrics import METRICS, MetricRow, Samples, check_metrics
from .metrics.clip import CLIP_MODEL
from .recipes import EvaluationSpec, RecipeError, load_recipe
from .records import EVAL_FILE, GRID_FILE, write_record
from .sampling import (
    default_device,
    generate_images,
    image_bytes,
    image_grid,
    pipeline_defaults,
    read_image,
)

# What changes the images (the cache key): not the metrics or their models.
IMAGE_SETTINGS = ("prompts", "num", "steps", "guidance_scale", "resolution", "seed", "batch_size")
ONLINE_METRICS = ["psnr", "clip"]
OFFLINE_METRICS = ["psnr"]  # what needs no download


def recipe_evaluation(checkpoint: str) -> EvaluationSpec | None:
    """The ``evaluation`` section of a local checkpoint folder's ``recipe.yaml``, if it has one."""
    folder = local_folder_or_repo(checkpoint)
    recipe_file = folder / "recipe.yaml" if folder is not None else None
    if recipe_file is None or not recipe_file.is_file():
        return None
    try:
        return load_recipe(recipe_file).evaluation
    except RecipeError:
        return None  # a recipe this version cannot read: the defaults apply


def evaluation_settings(checkpoint: str, given: dict[str, Any]) -> EvaluationSpec:
    """The settings to evaluate ``checkpoint`` with: ``given`` (spec fields), else its recipe's
    ``evaluation`` section, else the defaults; metrics default to ones that need no download when
    the Hub is offline (``HF_HUB_OFFLINE``)."""
    base = recipe_evaluation(checkpoint)
    fields = {
        **(base.model_dump(exclude_unset=False) if base is not None else {}),
        **{k: v for k, v in given.items() if v is not None},
    }
    if "metrics" not in fields:
        fields["metrics"] = OFFLINE_METRICS if hub_constants.HF_HUB_OFFLINE else ONLINE_METRICS
    unknown = [m for m in fields["metrics"] if m not in METRICS]
    if unknown:
        raise InputError(f"unknown metric {unknown[0]!r} in `metrics`; available: {', '.join(METRICS)}")
    try:
        return EvaluationSpec.model_validate(fields)
    except ValidationError as error:
        raise InputError(f"evaluation setting {describe_error(error, EvaluationSpec)}") from None


def resolved(spec: EvaluationSpec, base: str) -> EvaluationSpec:
    """``spec`` with what it leaves open made explicit: the base pipeline's guidance scale and
    image size, and the CLIP model and revision when a metric uses CLIP."""
    updates: dict[str, Any] = {}
    if spec.guidance_scale is None or spec.resolution is None:
        defaults = pipeline_defaults(base)
        if spec.guidance_scale is None and defaults.guidance_scale is not None:
            updates["guidance_scale"] = float(defaults.guidance_scale)
        if spec.resolution is None:
            updates["resolution"] = defaults.resolution
    if "clip" in spec.metrics or ("fid" in spec.metrics and spec.fid_features == "clip"):
        if spec.clip_model is None:
            updates.update(clip_model=CLIP_MODEL[0], clip_revision=spec.clip_revision or CLIP_MODEL[1])
        elif spec.clip_revision is None and not Path(spec.clip_model).is_dir():
            updates["clip_revision"] = CLIP_MODEL[1]
    return spec.model_copy(update=updates)


def revision_of(source: str) -> str:
    """What exactly ``source`` was: the commit of a Hub repo's snapshot, a local folder, or this version's built-in."""
    if builtin_name(source) is not None:
        return f"built-in of obsdiff-hub {__version__}"
    if local_folder_or_repo(source) is not None:
        return "local folder"
    return resolve_source(source).name  # the Hub cache names each snapshot by its commit


@dataclass
class EvalResult:
    """What ``eval.json`` records: who was compared with whom, under which settings, and the metric rows."""

    obsdiff_hub_version: str
    model: str
    base: str
    settings: dict[str, Any]
    metrics: list[MetricRow]
    grid: str = GRID_FILE
    base_revision: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "obsdiff_hub_version": self.obsdiff_hub_version,
            "model": self.model,
            "base": self.base,
            "settings": self.settings,
            "metrics": [m.to_dict() for m in self.metrics],
            "grid": self.grid,
            "base_revision": self.base_revision,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvalResult:
        fields = {k: data[k] for k in ("obsdiff_hub_version", "model", "base", "settings")}
        return cls(
            **fields,
            metrics=[MetricRow.from_dict(m) for m in data["metrics"]],
            grid=data.get("grid", GRID_FILE),
            base_revision=data.get("base_revision"),
        )


def cache_root() -> Path:
    """``$OBSDIFF_HUB_CACHE`` or ``~/.cache/obsdiff-hub`` (images of earlier evaluations)."""
    return Path(os.environ.get("OBSDIFF_HUB_CACHE") or Path.home() / ".cache" / "obsdiff-hub")


def eval_prompts(spec: EvaluationSpec, folder: Path | None = None) -> list[str]:
    """``spec.num`` prompts: ``builtin:captions``, ``builtin:shapes`` (the shapes model's fixed
    evaluation scenes) or a prompt file. ``folder``: the recipe's folder when a recipe named
    the file (it must lie inside); None when the user gave the path directly."""
    if builtin_name(spec.prompts) == "shapes":
        prompts = [s.caption for s in evaluation_scenes(spec.num)]
    elif builtin_name(spec.prompts) is not None:
        prompts = builtin_prompts(builtin_name(spec.prompts))
    else:
        prompts = read_prompt_file(contained_path(spec.prompts, folder) if folder is not None else spec.prompts)
    return [prompts[i % len(prompts)] for i in range(spec.num)]


def fingerprint(source: str) -> str:
    """Identity of a model for the image cache: sha256 over its files' names, sizes and hashes."""
    if builtin_name(source) is not None:
        return hashlib.sha256(f"{source}:{__version__}".encode()).hexdigest()
    folder = resolve_source(source)
    digest = hashlib.sha256()
    for path in checkpoint_files(folder, (".safetensors", ".json")):
        if path.name == EVAL_FILE:
            continue
        digest.update(f"{path.relative_to(folder).as_posix()}:{sha256_file(path)}\n".encode())
    return digest.hexdigest()


def cached_images(
    source: str,
    prompts: list[str],
    spec: EvaluationSpec,
    device: torch.device | None = None,
    on_image: Callable[[int], None] | None = None,
) -> list[Image.Image]:
    """The images of ``source`` for ``prompts`` (image i: seed + i), from the cache or generated."""
    settings = {k: v for k, v in spec.model_dump().items() if k in IMAGE_SETTINGS}
    key = hashlib.sha256(json.dumps([fingerprint(source), prompts, settings]).encode()).hexdigest()
    root = cache_root()
    folder = root / "images" / key
    paths = [folder / f"{i:05d}.png" for i in range(len(prompts))]
    if all(is_regular_file(p) for p in paths):
        return [read_image(p) for p in paths]
    root.mkdir(parents=True, exist_ok=True)
    # held from before sampling: a link planted in the cache stops the run, and none planted later is followed
    with HeldFolder.open(root) as cache, cache.folder(Path("images") / key) as held:
        images = _generate(source, prompts, spec, device, on_image)
        for image, path in zip(images, paths):
            held.write(path.name, image_bytes(image))
    return images


def _generate(
    source: str,
    prompts: list[str],
    spec: EvaluationSpec,
    device: torch.device | None,
    on_image: Callable[[int], None] | None,
) -> list[Image.Image]:
    return generate_images(
        source,
        prompts,
        seed=spec.seed,
        steps=spec.steps,
        guidance=spec.guidance_scale,
        resolution=spec.resolution,
        device=str(device or default_device()),
        batch_size=spec.batch_size,
        on_image=on_image,
    )


def evaluate(
    model: str,
    base: str,
    spec: EvaluationSpec,
    *,
    device: torch.device | None = None,
    folder: Path | None = None,
    on_image: Callable[[str, int, int], None] | None = None,
) -> tuple[EvalResult, Samples]:
    """Generate (or reuse) both models' images and compute ``spec.metrics``: the ``eval.json``
    record and the images. ``folder``: see :func:`eval_prompts`. ``on_image(model, done, total)``
    reports generation progress."""
    prompts = eval_prompts(spec, folder)
    check_metrics(spec, prompts)
    for source in (base, model):  # configs that cannot be built stop the run before any sampling
        local = None if builtin_name(source) is not None else local_folder_or_repo(source)
        if local is not None:
            check_pipeline_configs(local)
    spec = resolved(spec, base)

    def progress(which: str) -> Callable[[int], None] | None:
        return (lambda done: on_image(which, done, len(prompts))) if on_image else None

    samples = Samples(
        prompts,
        cached_images(base, prompts, spec, device, progress("dense")),
        cached_images(model, prompts, spec, device, progress("pruned")),
    )
    rows = [row for metric in spec.metrics for row in METRICS[metric](samples, spec)]
    used = {k: v for k, v in spec.model_dump().items() if v is not None}  # every setting that applied, none left open
    settings = {**used, "prompts_sha256": prompts_sha256(prompts)}
    return EvalResult(__version__, model, base, settings, rows), samples


def evaluate_checkpoint(
    model: str | Path,
    base: str,
    spec: EvaluationSpec,
    out_folder: Path | HeldFolder,
    *,
    base_revision: str | None = None,
    prompt_folder: Path | None = None,
    device: torch.device | None = None,
    on_image: Callable[[str, int, int], None] | None = None,
    overwrite: bool = False,
) -> EvalResult:
    """Evaluate the checkpoint ``model`` against ``base``; write ``eval.json`` and the captioned
    grid (dense row on top, pruned below, at most 8 columns) into ``out_folder``. An earlier
    ``eval.json`` there is replaced only with ``overwrite`` (checked before any sampling).
    ``base_revision``: what the base was (default: found from ``base``). ``out_folder`` (or, while it
    does not exist, the folder it will be made in) is held from before the sampling: the results go into
    that folder or nowhere, even if a name on the way is swapped for a link meanwhile."""
    path = out_folder.path if isinstance(out_folder, HeldFolder) else out_folder
    if (path / EVAL_FILE).exists() and not overwrite:
        raise InputError(
            f"{path / EVAL_FILE} holds an earlier evaluation; pass `overwrite` to replace it, or write "
            "elsewhere with `out`"
        )
    with ExitStack() as stack:
        held = out_folder if isinstance(out_folder, HeldFolder) else None
        place = None
        if held is None and path.is_dir():
            held = stack.enter_context(HeldFolder.open(path, follow_link=False))
        elif held is None:
            place = stack.enter_context(Destination(path))
        result, grid = _evaluate(model, base, spec, path, base_revision, prompt_folder, device, on_image)
        if held is None:
            parent = stack.enter_context(place.parent())  # type: ignore[union-attr]
            held = stack.enter_context(parent.folder(path.name))
        write_record(held, GRID_FILE, image_bytes(grid))
        write_record(held, EVAL_FILE, result.to_dict())
    return result


def _evaluate(
    model: str | Path,
    base: str,
    spec: EvaluationSpec,
    out_folder: Path,
    base_revision: str | None,
    prompt_folder: Path | None,
    device: torch.device | None,
    on_image: Callable[[str, int, int], None] | None,
) -> tuple[EvalResult, Image.Image]:
    """Both models' images and the metrics, and the captioned grid: everything but the writing."""
    result, samples = evaluate(str(model), base, spec, folder=prompt_folder, device=device, on_image=on_image)
    result.model = "this checkpoint" if Path(model) == out_folder else str(model)
    result.base_revision = base_revision or revision_of(base)
    columns = min(8, len(samples.prompts))
    grid = image_grid(
        [samples.dense[:columns], samples.pruned[:columns]],
        captions=samples.prompts[:columns],
        row_labels=["dense", "pruned"],
    )
    return result, grid
