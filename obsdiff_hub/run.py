"""One recipe run end to end: load the base pipeline, calibrate and prune, write the outputs.

This is what ``obsdiff-hub prune`` calls; it holds no CLI code, so notebooks can use it too.
The output directory (pipeline layout + ``recipe.yaml`` + ``report.json`` + ``README.md``)
appears only when complete; progress for ``resume`` lives in ``<out>.partial/``.
"""

from __future__ import annotations

import hashlib
import json
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .adapters import adapter_for
from .calibration import denoiser_of
from .checkpoint import CheckpointError, provenance, save_pruned
from .engine import PruneResult, prune
from .prompts import load_prompts, read_prompt_file
from .recipes import Recipe
from .resume import DiskState, default_dtype
from .sampling import load_pipeline
from .shapes.pipeline import quiet_truncation_warnings

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class ModelMismatchError(ValueError):
    """The model given does not belong to the recipe's family."""


@dataclass
class RunOutput:
    directory: Path
    result: PruneResult
    plan: dict[str, Any] | None
    metrics: list[dict[str, str]] | None = None


def load_base_pipeline(
    recipe: Recipe, *, model: str | None = None, revision: str | None = None, torch_dtype: torch.dtype = torch.float32
) -> Any:
    """The recipe's base pipeline (or ``model``: a Hub repo id or local dir), checked against its family."""
    source = model or recipe.base_model.repo_id
    pipeline = load_pipeline(source, revision=revision or recipe.base_model.revision, torch_dtype=torch_dtype)
    found = adapter_for(denoiser_of(pipeline)).family
    if found != recipe.base_model.family:
        raise ModelMismatchError(
            f"recipe {recipe.name} is for {recipe.base_model.family} models but {source} has a {type(denoiser_of(pipeline)).__name__}; "
            "pick a recipe of that family (`obsdiff-hub recipes list`)"
        )
    if recipe.calibration.scheduler:
        import diffusers

        scheduler_cls = getattr(diffusers, recipe.calibration.scheduler, None)
        if scheduler_cls is None:
            raise ModelMismatchError(f"unknown scheduler {recipe.calibration.scheduler!r} in the recipe")
        pipeline.scheduler = scheduler_cls.from_config(pipeline.scheduler.config)
    return pipeline


def plan_recipe(recipe: Recipe, resolution: int | None = 1024) -> Any:
    """Offline parameter/FLOP plan of a recipe from its shipped base config."""
    from .plan import plan

    if not recipe.base_model.config:
        raise ValueError(f"recipe {recipe.name} names no shipped base config, so it cannot be planned offline")
    config = recipe.prune_config()
    return plan(
        recipe.base_model.config,
        sparsity=config.sparsity if config.granularity == "structured" else 0.0,
        granularity=config.granularity,
        blocks=config.blocks,
        block_sparsity=config.block_sparsity,
        resolution=resolution,
    )


def _resolved_revision(pipeline: Any) -> str | None:
    """The commit a Hub pipeline was loaded from (its snapshot folder name), if any."""
    path = str(getattr(pipeline.config, "_name_or_path", "") or "")
    parts = Path(path).parts
    return parts[parts.index("snapshots") + 1] if "snapshots" in parts[:-1] else None


def run_recipe(
    recipe: Recipe,
    out: str | Path,
    *,
    model: str | None = None,
    revision: str | None = None,
    device: str | None = None,
    dtype: str | None = None,
    prompts_file: str | None = None,
    num_prompts: int | None = None,
    packages: int | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> RunOutput:
    """Run ``recipe`` and write the finished checkpoint to ``out`` (see module docstring)."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise CheckpointError(f"output directory {out} already exists; pass --overwrite or choose another --out")
    run_device = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    run_dtype = DTYPES[dtype] if dtype else default_dtype(run_device)

    count = num_prompts or recipe.calibration.prompts.count
    if prompts_file:
        source = read_prompt_file(prompts_file, recipe.calibration.prompts.column)
        prompts = [source[i % len(source)] for i in range(count)]
    else:
        spec = recipe.calibration.prompts
        prompts = load_prompts(spec.source, path=spec.path, repo_id=spec.repo_id, column=spec.column, count=count)
    overrides = {"packages": packages, "memory_budget_gb": None} if packages else {}
    config = recipe.prune_config(**overrides)
    calibration = recipe.calibration_config(prompts)
    calibration_sha = hashlib.sha256(json.dumps(calibration.model_dump(), sort_keys=True).encode()).hexdigest()
    run_id = hashlib.sha256(f"{recipe.sha256}:{config.model_dump_json()}:{calibration_sha}:{model}:{revision}".encode()).hexdigest()

    pipeline = load_base_pipeline(recipe, model=model, revision=revision, torch_dtype=run_dtype)
    state = DiskState(out.with_name(out.name + ".partial"), run_id)
    if resume:
        component = recipe.base_model.component
        setattr(pipeline, component, state.load(getattr(pipeline, component)))
        pipeline.register_modules(**{component: getattr(pipeline, component)})
    else:
        state.clear()

    shapes = recipe.base_model.repo_id == "builtin:tiny-shapes"
    with quiet_truncation_warnings() if shapes else nullcontext():
        result = prune(pipeline, config, calibration=calibration, device=run_device, progress=progress, state=state)

    plan_info = None
    if config.granularity == "structured" and recipe.base_model.config:
        plan_info = plan_recipe(recipe).to_dict()
    record = provenance(
        recipe=recipe.name,
        recipe_version=recipe.version,
        recipe_sha256=recipe.sha256,
        method=config.method,
        granularity=config.granularity,
        sparsity=config.ratio_label,
        base_model=model or recipe.base_model.repo_id,
        base_revision=_resolved_revision(pipeline) or revision or recipe.base_model.revision,
        calibration_sha256=calibration_sha,
    )
    from .cards import render_card

    card = render_card(recipe, result.report, plan=plan_info, base_revision=record["base_revision"])
    report = {**result.report.to_dict(), "provenance": record, "plan": plan_info}
    save_pruned(
        pipeline,
        out,
        record=record,
        variant=recipe.output.variant,
        torch_dtype=DTYPES[recipe.output.dtype],
        overwrite=overwrite,
        extra_files={"recipe.yaml": recipe.to_yaml(), "report.json": json.dumps(report, indent=2), "README.md": card.content},
    )
    state.clear()
    metrics = evaluate_shapes(out) if shapes else None
    return RunOutput(out, result, plan_info, metrics)


def evaluate_shapes(out: Path) -> list[dict[str, str]]:
    """Score the saved (reloaded) pruned shapes model against the dense one, same seeds.

    Writes ``samples.png`` (dense top row, pruned bottom row) and adds the metrics to
    ``report.json`` and the card.
    """
    from diffusers import DiffusionPipeline

    from .hub import render_card_for
    from .sampling import image_grid
    from .shapes.pipeline import evaluate, load_shapes_pipeline, to_pil

    dense_scores, dense_images = evaluate(load_shapes_pipeline())
    pruned_scores, pruned_images = evaluate(DiffusionPipeline.from_pretrained(out), reference=dense_images)
    grid = image_grid([to_pil(dense_images[:10]), to_pil(pruned_images[:10])])
    grid.resize((grid.width * 4, grid.height * 4), resample=0).save(out / "samples.png")
    settings = "60 fixed captions, seeds 0-59, 20 Euler steps, guidance 4, scorer: shipped attribute classifier (shape, colour, size)"
    metrics = [
        {"name": "caption accuracy (shape, colour and size all right)", "dense": f"{dense_scores['all']:.3f}", "pruned": f"{pruned_scores['all']:.3f}", "settings": settings},
        {"name": "caption accuracy (mean of attributes)", "dense": f"{dense_scores['mean']:.3f}", "pruned": f"{pruned_scores['mean']:.3f}", "settings": settings},
        {"name": "PSNR vs dense images (dB)", "dense": "inf", "pruned": f"{pruned_scores['psnr_vs_dense']:.2f}", "settings": settings},
    ]
    report = json.loads((out / "report.json").read_text())
    report["metrics"] = metrics
    (out / "report.json").write_text(json.dumps(report, indent=2))
    (out / "README.md").write_text(render_card_for(out), encoding="utf-8")
    return metrics
