"""Model cards from ``model_cards/`` templates, through huggingface_hub's ModelCard."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import ModelCard, ModelCardData

from .adapters import ADAPTERS
from .models import PRUNED_CLASSES, base_class_for
from .recipes import Recipe, data_dir
from .report import PruneReport

CARD_TEMPLATE = "obsdiff.md"
# The Hub's base_model_relation values are adapter, merge, quantized, finetune; none means
# "pruned", so none is set and the relation is stated by the tags instead.
TAGS = ["obs-diff", "pruned", "text-to-image", "diffusers"]


class CardError(ValueError):
    """A card that would not be valid on the Hub; the message names the missing field."""


def _billions(n: int) -> str:
    return f"{n / 1e9:.3f} B" if n >= 1e8 else f"{n / 1e6:.3f} M"


def render_card(
    recipe: Recipe,
    report: PruneReport,
    *,
    repo_id: str | None = None,
    plan: dict[str, Any] | None = None,
    metrics: list[dict[str, str]] | None = None,
    sample_grid: str | None = None,
    base_revision: str | None = None,
) -> ModelCard:
    """Render and validate the card for one pruned checkpoint."""
    base = recipe.base_model
    structured = recipe.prune.granularity == "structured"
    base_name = next(a.model_class_name for a in ADAPTERS if a.family == base.family)
    pruned_cls = PRUNED_CLASSES[base_class_for(base_name)].__name__ if structured else base_name
    repo = repo_id or f"<namespace>/{recipe.name}"
    data = ModelCardData(
        base_model=None if base.repo_id.startswith("builtin:") else base.repo_id,
        library_name="diffusers",
        pipeline_tag="text-to-image",
        license=base.license,
        tags=TAGS + [recipe.prune.granularity.replace(":", "-"), base.family],
        model_name=recipe.name if metrics else None,
        eval_results=_eval_results(recipe, metrics) if metrics else None,
    )
    heads = sum(r.before - r.after for r in report.structure if r.kind == "heads")
    neurons = sum(r.before - r.after for r in report.structure if r.kind == "neurons")
    import_line = f"from obsdiff_hub import {pruned_cls}\n" if structured else ""
    usage_pipeline = (
        ("import obsdiff_hub  # registers the pruned classes with DiffusionPipeline\n" if structured else "")
        + "import torch\nfrom diffusers import DiffusionPipeline\n\n"
        + f'pipe = DiffusionPipeline.from_pretrained("{repo}", torch_dtype=torch.float16).to("cuda")\n'
        + 'image = pipe("a photo of an astronaut riding a horse").images[0]'
    )
    loader = pruned_cls if structured else f"diffusers.{pruned_cls}"
    usage_component = (
        f"import torch\n{import_line}from diffusers import {base.pipeline}"
        + ("" if structured else f", {pruned_cls}")
        + f'\n\n{base.component} = {pruned_cls}.from_pretrained("{repo}", subfolder="{base.component}", torch_dtype=torch.float16)\n'
        + f'pipe = {base.pipeline}.from_pretrained("{base.repo_id}", {base.component}={base.component}, torch_dtype=torch.float16)'
    )
    loading_note = (
        "Structured pruning gives every block its own head count and FFN width, recorded in `config.json`\n"
        f"(`obsdiff_structure`); `{loader}` rebuilds those shapes, so `pip install obsdiff-hub` is needed."
        if structured
        else "Shapes are unchanged (pruned weights are zeros), so plain diffusers loads this checkpoint."
    )
    sparsity_note = (
        "Removed heads and neurons are physically deleted; the remaining weights carry the OBS compensation."
        if structured
        else "Pruned weights are stored as zeros; the remaining weights carry the OBS compensation."
    )
    cal = recipe.calibration
    calibration_summary = (
        f"{cal.prompts.count} prompts ({cal.prompts.source}), {cal.steps} sampling steps, guidance {cal.guidance_scale}, "
        f"{cal.resolution}×{cal.resolution}, batch {cal.batch_size}, seed {cal.seed}; timestep weighting "
        f"{recipe.prune.weighting.strategy} ({recipe.prune.weighting.alpha_min} → {recipe.prune.weighting.alpha_max}); "
        f"{len(report.packages)} module packages; percdamp {recipe.prune.percdamp}, blocksize {recipe.prune.blocksize}."
    )
    fields = dict(
        title=f"{recipe.name} (OBS-Diff {recipe.prune.granularity}, {recipe.prune_config().ratio_label})",
        description=recipe.description,
        base_model=base.repo_id,
        base_revision=base_revision or base.revision,
        component=base.component,
        model_class=report.model_class,
        method=recipe.prune.method,
        granularity=recipe.prune.granularity,
        ratio=recipe.prune_config().ratio_label,
        blocks=recipe.prune.blocks if recipe.prune.blocks is not None else "all",
        params_before=_billions(report.params_before),
        params_after=_billions(report.params_after),
        mean_sparsity=f"{report.mean_sparsity:.4f}",
        mean_error=f"{report.mean_relative_error:.4g}",
        heads_removed=heads,
        neurons_removed=neurons,
        sparsity_note=sparsity_note,
        calibration_summary=calibration_summary,
        metrics=metrics or [],
        sample_grid=sample_grid,
        usage_pipeline=usage_pipeline,
        usage_component=usage_component,
        loading_note=loading_note,
        recipe_name=recipe.name,
        recipe_version=recipe.version,
        recipe_sha256=recipe.sha256,
        recipe_yaml=recipe.to_yaml(),
        flops_before=None,
    )
    if plan and plan.get("flops_before"):
        fields.update(
            flops_before=f"{plan['flops_before'] / 1e12:.3f} TFLOPs",
            flops_after=f"{plan['flops_after'] / 1e12:.3f} TFLOPs",
            flop_change=f"{-100 * plan['flop_reduction']:+.2f}%",
            plan_resolution=plan["resolution"],
        )
    card = ModelCard.from_template(data, template_path=str(data_dir("model_cards") / CARD_TEMPLATE), **fields)
    validate_card(card.content)
    return card


def _eval_results(recipe: Recipe, metrics: list[dict[str, str]]) -> list[Any]:
    """``model-index`` entries for the pruned model's measured metrics (the Hub renders them)."""
    from huggingface_hub import EvalResult

    return [
        EvalResult(
            task_type="text-to-image",
            dataset_type=recipe.calibration.prompts.path or "prompts",
            dataset_name=f"{recipe.name} evaluation prompts",
            metric_type=m["name"].split(" (")[0].lower().replace(" ", "_"),
            metric_name=m["name"],
            metric_value=float(m["pruned"]),
            metric_config=m["settings"],
        )
        for m in metrics
        if m["pruned"].replace(".", "", 1).isdigit()
    ]


def validate_card(content: str) -> dict[str, Any]:
    """The card's YAML header must parse and carry the fields the Hub and diffusers rely on."""
    if not content.startswith("---\n"):
        raise CardError("model card has no YAML metadata header")
    try:
        meta = yaml.safe_load(content.split("---\n", 2)[1]) or {}
    except yaml.YAMLError as error:
        raise CardError(f"model card metadata is not valid YAML: {error}") from error
    for key in ("library_name", "pipeline_tag", "tags"):
        if not meta.get(key):
            raise CardError(f"model card metadata lacks {key}")
    if "obs-diff" not in meta["tags"]:
        raise CardError("model card tags must include obs-diff")
    return meta


def write_card(card: ModelCard, directory: str | Path) -> Path:
    path = Path(directory) / "README.md"
    path.write_text(card.content, encoding="utf-8")
    return path
