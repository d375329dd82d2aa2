"""One recipe run end to end: check everything, load the base pipeline, prune, write the outputs.

This is what ``obsdiff-hub prune`` calls; it holds no CLI code, so notebooks can use it too.
Every input is checked before calibration starts (output folder, progress folder, device,
dtype, prompts, model family, resolution). The output folder (pipeline layout,
``recipe.yaml`` as run, ``report.json``, evaluation, ``README.md``) is assembled in a temp
folder and appears in one rename; progress for ``--resume`` lives in ``<out>.partial/``.
The saved ``recipe.yaml`` is the *effective* recipe: every override applied, the packages
and dtype actually used, the prompts pinned by count and sha256 (file prompts inline), and
``derived_from`` naming the recipe it came from. Running it again gives the same weights.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from ..checkpoints.loading import explained_pipeline_failure, hub_errors, local_folder_or_repo, safetensors_header
from ..checkpoints.outputs import atomic_output, check_writable_target
from ..checkpoints.saving import write_pruned
from ..models import provenance
from ..pruning.adapters import adapter_for
from ..pruning.calibration import denoiser_of
from ..pruning.config import PromptSource
from ..pruning.distributed import World
from ..pruning.engine import DTYPES, ProgressCallback, PruneResult, prune
from ..pruning.precision import check_device_dtype
from ..pruning.prompts import prompts_sha256, resolve_prompts
from ..resources import data_dir
from .recipes import Recipe, RecipeError
from .resume import DiskState
from .sampling import load_pipeline


class ModelMismatchError(ValueError):
    """The model given does not belong to the recipe's family, or cannot run the recipe's settings."""


@dataclass
class RunOutput:
    directory: Path
    result: PruneResult
    recipe: Recipe  # the effective recipe, as saved
    plan: dict[str, Any] | None
    evaluation: dict[str, Any] | None = None
    distinct_prompts: int = 0  # a source with fewer prompts than asked for is cycled


def parse_device(device: str | None) -> torch.device:
    """``cpu``, ``cuda``, ``cuda:N`` (default: cuda when available), or a one-line error."""
    try:
        parsed = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    except RuntimeError as error:
        raise ValueError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from error
    return World.local_device(parsed)


def checkpoint_dtype(folder: Path) -> torch.dtype:
    """The dtype most of a component's weights are stored in (safetensors headers only)."""
    counts: dict[str, int] = {}
    for path in folder.glob("*.safetensors"):
        with safetensors_header(path) as f:
            for key in f.keys():
                part = f.get_slice(key)
                numel = 1
                for dim in part.get_shape():
                    numel *= dim
                counts[part.get_dtype()] = counts.get(part.get_dtype(), 0) + numel
    names = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
    floating = {k: v for k, v in counts.items() if k in names}
    return names[max(floating, key=floating.__getitem__)] if floating else torch.float32


def _resolution_multiple(pipeline: Any) -> int:
    """The image sides the pipeline's denoiser accepts are multiples of this."""
    scale = getattr(pipeline, "vae_scale_factor", 8)
    denoiser = denoiser_of(pipeline)
    if hasattr(denoiser.config, "patch_size") and denoiser.config.patch_size:
        return scale * denoiser.config.patch_size * (2 if adapter_for(denoiser).family == "flux" else 1)
    return scale * 2 ** (len(denoiser.config.block_out_channels) - 1)


def load_base_pipeline(recipe: Recipe) -> Any:
    """The recipe's base pipeline in its checkpoint's own dtype, checked against the recipe's family."""
    source = recipe.base_model.repo_id
    if source.startswith("builtin:"):
        pipeline = load_pipeline(source)
    else:
        from diffusers import DiffusionPipeline

        from .. import models  # noqa: F401 - makes the OBSDiff classes resolvable from model_index.json

        # Download exactly the files from_pretrained reads (not every variant), then read the dtype.
        folder = local_folder_or_repo(source)
        if folder is None:
            with hub_errors(source=source, maybe_folder=True):
                folder = Path(DiffusionPipeline.download(source, revision=recipe.base_model.revision))
        dtype = checkpoint_dtype(folder / recipe.base_model.component)
        with explained_pipeline_failure(folder):
            pipeline = DiffusionPipeline.from_pretrained(folder, dtype=dtype)
    found = adapter_for(denoiser_of(pipeline)).family
    if found != recipe.base_model.family:
        raise ModelMismatchError(
            f"recipe {recipe.name} is for {recipe.base_model.family} models but {source} has a {type(denoiser_of(pipeline)).__name__}; "
            "pick a recipe of that family (`obsdiff-hub recipes list`)"
        )
    resolution = recipe.calibration.resolution
    multiple = _resolution_multiple(pipeline)
    if resolution is not None and resolution % multiple:
        raise ModelMismatchError(f"calibration resolution {resolution} is not a multiple of {multiple}, which this model needs")
    return pipeline


def plan_recipe(recipe: Recipe, resolution: int | None = None) -> Any:
    """Offline parameter/FLOP plan of a recipe from its shipped base config, or from the built-in
    model itself. ``resolution``: image side for the FLOP count (default: 1024, or the built-in
    model's own)."""
    from ..checkpoints.plan import plan

    base = recipe.base_model
    scale, multiple = 8, 64
    if base.config:
        config = base.config
    elif base.repo_id.startswith("builtin:"):
        pipeline = load_pipeline(base.repo_id)
        denoiser = denoiser_of(pipeline)
        config = {**denoiser.config, "_class_name": type(denoiser).__name__}
        scale, multiple = pipeline.vae_scale_factor, _resolution_multiple(pipeline)
        # the pipeline's default image side (Flux pipelines hold it; UNet and SD3 configs say sample_size)
        resolution = resolution or (getattr(pipeline, "default_sample_size", None) or denoiser.config.sample_size) * scale
    else:
        raise ValueError(f"recipe {recipe.name} names no shipped base config, so it cannot be planned offline")
    resolution = resolution or 1024
    if resolution % multiple:
        raise ValueError(f"--resolution must be a positive multiple of {multiple} for this model, got {resolution}")
    prune_cfg = recipe.prune
    return plan(
        config,
        sparsity=prune_cfg.sparsity,
        granularity=prune_cfg.granularity,
        blocks=prune_cfg.blocks,
        block_sparsity=prune_cfg.block_sparsity,
        resolution=resolution,
        n_m=(prune_cfg.n, prune_cfg.m),
        vae_scale_factor=scale,
    )


def _resolved_revision(pipeline: Any) -> str | None:
    """The commit a Hub pipeline was loaded from (its snapshot folder name), if any."""
    parts = Path(str(getattr(pipeline.config, "_name_or_path", "") or "")).parts
    return parts[parts.index("snapshots") + 1] if "snapshots" in parts[:-1] else None


def requested_recipe(
    recipe: Recipe,
    *,
    model: str | None = None,
    revision: str | None = None,
    dtype: str | None = None,
    num_prompts: int | None = None,
    prompt_column: str | None = None,
    packages: int | Literal["auto"] | None = None,
    changes: dict[str, Any] | None = None,
) -> Recipe:
    """``recipe`` with the CLI's overrides and ``--set`` changes applied (validated as a whole)."""
    updates = dict(changes or {})
    named = {
        "base_model.repo_id": model,
        "base_model.revision": revision,
        "calibration.dtype": dtype,
        "calibration.prompts.count": num_prompts,
        "calibration.prompts.column": prompt_column,
        "prune.packages": packages,
    }
    updates.update({k: v for k, v in named.items() if v is not None})
    if packages is not None:
        updates["prune.memory_budget_gb"] = None
    return recipe.with_changes(updates) if updates else recipe


def pinned_prompts(source: PromptSource, prompts: list[str]) -> PromptSource:
    """The prompt source as a re-run needs it: count and sha256 pinned; a local file inlined."""
    if source.source == "file":
        return PromptSource(source="inline", texts=prompts, count=len(prompts), sha256=prompts_sha256(prompts))
    return source.model_copy(update={"count": len(prompts), "sha256": prompts_sha256(prompts)})


def run_recipe(
    recipe: Recipe,
    out: str | Path,
    *,
    model: str | None = None,
    revision: str | None = None,
    device: str | None = None,
    dtype: str | None = None,
    prompts_file: str | None = None,
    prompt_column: str | None = None,
    num_prompts: int | None = None,
    packages: int | Literal["auto"] | None = None,
    changes: dict[str, Any] | None = None,
    resume: bool = False,
    restart: bool = False,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
) -> RunOutput:
    """Run ``recipe`` and write the finished checkpoint to ``out`` (see module docstring)."""
    if resume and restart:
        raise ValueError("--resume and --restart exclude each other")
    out = Path(out)
    requested = requested_recipe(
        recipe, model=model, revision=revision, dtype=dtype, num_prompts=num_prompts, prompt_column=prompt_column, packages=packages, changes=changes
    )
    check_writable_target(out, overwrite)
    run_device = parse_device(device)
    cal = requested.calibration
    check_device_dtype(run_device, DTYPES.get(cal.dtype, torch.float32))
    if prompts_file:
        source = PromptSource(source="file", path=str(prompts_file), column=prompt_column, count=cal.prompts.count)
        prompts = resolve_prompts(source)
    else:
        source = cal.prompts
        if source.source == "file" and requested.folder is None:
            raise RecipeError("a shipped recipe cannot name a prompt file; pass --prompts FILE")
        prompts = resolve_prompts(source, requested.folder)
    pinned = pinned_prompts(source, prompts)
    if requested.evaluation is not None:  # its prompts and metrics are checked now, not after the pruning
        from .evaluation import check_metrics, eval_prompts

        check_metrics(requested.evaluation, eval_prompts(requested.evaluation, requested.folder or data_dir("recipes")))
    world = World.from_environment(run_device)
    run_id = hashlib.sha256(f"{requested.sha256}:{pinned.sha256}".encode()).hexdigest()
    state = DiskState(out.with_name(out.name + ".partial"), run_id, writer=world.is_main)
    with world.together("checking the run's inputs"):
        state.prepare(resume=resume, restart=restart)
        pipeline = load_base_pipeline(requested)
        component = requested.base_model.component
        if resume:
            pipeline.register_modules(**{component: state.load(getattr(pipeline, component))})
    calibration = cal.model_copy(update={"prompts": PromptSource(source="inline", texts=prompts, count=len(prompts))})
    result = prune(
        pipeline,
        requested.prune,
        calibration=calibration,
        device=run_device,
        progress=progress,
        state=state,
    )

    report = result.report
    used = requested.prune.model_copy(update={"packages": report.package_plan["packages"], "memory_budget_gb": None})
    effective = requested.model_copy(
        update={
            "prune": used,
            "calibration": cal.model_copy(update={"prompts": pinned, "dtype": report.precision["compute"]}),
            "derived_from": requested.derived_from or recipe.identity(),
        }
    )
    effective = type(effective).model_validate(effective.model_dump())  # re-validated as saved
    plan_info = plan_recipe(effective, 1024).to_dict() if requested.prune.granularity == "structured" and requested.base_model.config else None
    base_revision = _resolved_revision(pipeline) or requested.base_model.revision
    record = provenance(
        recipe=effective.name,
        recipe_version=effective.version,
        recipe_sha256=effective.sha256,
        derived_from_sha256=effective.derived_from.sha256 if effective.derived_from else None,
        method=used.method,
        granularity=used.granularity,
        sparsity=used.ratio_label,
        base_model=requested.base_model.repo_id,
        base_revision=base_revision,
        prompts_sha256=pinned.sha256,
    )
    evaluation = None
    if world.is_main:
        from .cards import render_card

        with atomic_output(out, overwrite=overwrite) as tmp:
            write_pruned(pipeline, tmp, record=record, variant=effective.output.variant, torch_dtype=DTYPES[effective.output.dtype])
            if effective.evaluation is not None:
                from .evaluation import evaluate_checkpoint

                evaluation = evaluate_checkpoint(
                    tmp, requested.base_model.repo_id, effective.evaluation, tmp, base_revision=base_revision,
                    prompt_folder=requested.folder or data_dir("recipes"),
                )
            card = render_card(effective, report, plan=plan_info, evaluation=evaluation, base_revision=base_revision)
            (tmp / "recipe.yaml").write_text(effective.to_yaml())
            (tmp / "report.json").write_text(json.dumps({**report.to_dict(), "provenance": record, "plan": plan_info}, indent=2))
            (tmp / "README.md").write_text(card.content, encoding="utf-8")
        state.clear()
    world.close()
    return RunOutput(out, result, effective, plan_info, evaluation, len(set(prompts)))
