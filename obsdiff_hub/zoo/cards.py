"""Model cards from ``model_cards/`` templates, through huggingface_hub's ModelCard."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import EvalResult as HubEvalResult
from huggingface_hub import ModelCard, ModelCardData

from ..architectures import ARCHITECTURES
from ..errors import InputError
from ..hub import builtin_name
from ..models import PRUNED_CLASSES, base_class_for
from ..pruning.prompts import builtin_prompts
from ..pruning.report import PruneReport
from ..resources import data_dir
from ..shapes.dataset import evaluation_scenes
from ..storage.outputs import owned_files
from ..units import human
from .bench import BenchResult
from .evaluation import EvalResult
from .recipes import Recipe, load_recipe
from .records import (
    BENCH_FILE,
    CARD_FILE,
    EVAL_FILE,
    RECIPE_FILE,
    REPORT_FILE,
    read_record,
    read_run_record,
    write_record,
)

CARD_TEMPLATE = "obsdiff.md"
# The Hub's base_model_relation values are adapter, merge, quantized, finetune; none means
# "pruned", so none is set and the relation is stated by the tags instead.
TAGS = ["obs-diff", "pruned", "text-to-image", "diffusers"]


class CardError(InputError):
    """A card that would not be valid on the Hub; the message names the missing field."""


def _billions(n: int) -> str:
    return f"{n / 1e9:.3f} B" if n >= 1e8 else f"{n / 1e6:.3f} M"


def card_data(recipe: Recipe, evaluation: EvalResult | None = None) -> ModelCardData:
    """The card's metadata (what the Hub indexes): base model, library, tags, measured metrics."""
    base = recipe.base_model
    measured = bool(evaluation and evaluation.metrics)
    return ModelCardData(
        base_model=None if builtin_name(base.repo_id) is not None else base.repo_id,
        library_name="diffusers",
        pipeline_tag="text-to-image",
        license=base.license,
        tags=TAGS + [recipe.prune.granularity.replace(":", "-"), base.family],
        model_name=recipe.name if measured else None,
        eval_results=_eval_results(evaluation) if evaluation and measured else None,
    )


def usage_fields(recipe: Recipe, repo: str) -> dict[str, str]:
    """How to load the checkpoint: the whole pipeline, the denoiser into its dense base, and why which class."""
    base = recipe.base_model
    structured = recipe.prune.granularity == "structured"
    base_name = next(a.model_class_name for a in ARCHITECTURES if a.family == base.family)
    cls = PRUNED_CLASSES[base_class_for(base_name)].__name__ if structured else base_name
    pipeline = (
        ("import obsdiff_hub  # registers the pruned classes with DiffusionPipeline\n" if structured else "")
        + "import torch\nfrom diffusers import DiffusionPipeline\n\n"
        + f'pipe = DiffusionPipeline.from_pretrained("{repo}", dtype=torch.float16).to("cuda")\n'
        + f"image = pipe({json.dumps(example_prompt(recipe), ensure_ascii=False)}).images[0]"
    )
    load = f'{base.component} = {cls}.from_pretrained("{repo}", subfolder="{base.component}", dtype=torch.float16)\n'
    imports = f"from obsdiff_hub import {cls}" if structured else f"from diffusers import {cls}"
    if builtin_name(base.repo_id) is not None:  # no Hub id: the shipped dense pipeline takes the pruned component
        component = (
            f"import torch\nimport obsdiff_hub\n{imports}\n\n{load}"
            f'pipe = obsdiff_hub.load_pipeline("{base.repo_id}", torch_dtype=torch.float16)  # the dense base\n'
            f"pipe.register_modules({base.component}={base.component})"
        )
    else:
        component = (
            f"import torch\nfrom diffusers import {base.pipeline}\n{imports}\n\n{load}"
            f'pipe = {base.pipeline}.from_pretrained("{base.repo_id}", {base.component}={base.component}, '
            "dtype=torch.float16)"
        )
    note = (
        "Structured pruning gives every block its own head count and FFN width, recorded in `config.json`\n"
        f"(`obsdiff_structure`); `{cls}` rebuilds those shapes, so `pip install obsdiff-hub` is needed."
        if structured
        else "Shapes are unchanged (pruned weights are zeros), so plain diffusers loads this checkpoint."
    )
    return {"usage_pipeline": pipeline, "usage_component": component, "loading_note": note}


def result_fields(recipe: Recipe, report: PruneReport) -> dict[str, Any]:
    """What the run did: parameters, sparsity, reconstruction error, heads and neurons removed."""
    structured = recipe.prune.granularity == "structured"
    refined = report.mean_start_error
    return {
        "params_before": _billions(report.params_before),
        "params_after": _billions(report.params_after),
        "mean_sparsity": f"{report.mean_sparsity:.4f}",
        "mean_error": f"{report.mean_relative_error:.4g}"
        + (f" (the obs result it was refined from: {refined:.4g})" if refined is not None else ""),
        "heads_removed": report.removed("heads"),
        "neurons_removed": report.removed("neurons"),
        "sparsity_note": "Removed heads and neurons are physically deleted; the remaining weights carry the OBS "
        "compensation."
        if structured
        else "Pruned weights are stored as zeros; the remaining weights carry the OBS compensation.",
    }


def measured_fields(
    evaluation: EvalResult | None, bench: BenchResult | None, plan: dict[str, Any] | None
) -> dict[str, Any]:
    """Quality (``eval.json``), speed (``bench.json``) and FLOPs (the offline plan), where measured."""
    fields: dict[str, Any] = {
        "metrics": _metric_rows(evaluation),
        "evaluation_settings": _settings_text(evaluation) if evaluation else None,
        "sample_grid": evaluation.grid if evaluation else None,
        "speed": _speed_rows(bench) if bench else None,
        "speed_settings": None,
        "flops_before": None,
    }
    if bench:
        fields["speed_settings"] = (
            f"{bench.device}, {bench.dtype}, {bench.resolution}², batch {bench.batch}, "
            f"median of {bench.dense.denoiser.repeats} after {bench.warmup} warm-up runs"
        )
    if plan and plan.get("flops_before"):
        fields.update(
            flops_before=human(plan["flops_before"], "FLOPs"),
            flops_after=human(plan["flops_after"], "FLOPs"),
            flop_change=f"{-100 * plan['flop_reduction']:+.2f}%",
            plan_resolution=plan["resolution"],
        )
    return fields


def render_card(
    recipe: Recipe,
    report: PruneReport,
    *,
    repo_id: str | None = None,
    plan: dict[str, Any] | None = None,
    evaluation: EvalResult | None = None,
    bench: BenchResult | None = None,
    base_revision: str | None = None,
    recovery: dict[str, Any] | None = None,
) -> ModelCard:
    """Render and validate the card for one pruned checkpoint from its effective recipe, its
    report and (when measured) its ``eval.json`` and ``bench.json``."""
    base, prune = recipe.base_model, recipe.prune
    fields = dict(
        title=f"{recipe.name} (OBS-Diff {prune.granularity}, {prune.ratio_label})",
        description=recipe.description,
        base_model=base.repo_id,
        base_revision=base_revision or base.revision,
        component=base.component,
        model_class=report.model_class,
        method=prune.method.name,
        granularity=prune.granularity,
        ratio=prune.ratio_label,
        blocks=prune.blocks if prune.blocks is not None else "all",
        calibration=calibration_rows(recipe, report),
        derived_from=recipe.derived_from,
        recipe_name=recipe.name,
        recipe_version=recipe.version,
        recipe_sha256=recipe.sha256,
        recipe_yaml=recipe.to_yaml(),
        **result_fields(recipe, report),
        **measured_fields(evaluation, bench, plan),
        **recovery_fields(recipe, recovery, evaluation),
        **usage_fields(recipe, repo_id or f"<namespace>/{recipe.name}"),
    )
    template = str(data_dir("model_cards") / CARD_TEMPLATE)
    card = ModelCard.from_template(card_data(recipe, evaluation), template_path=template, **fields)
    validate_card(card.content)
    return card


def check_card(recipe: Recipe) -> None:
    """Validate the metadata a run of ``recipe`` will publish, so metadata the Hub would refuse stops the run
    before any work instead of after it (the card itself is rendered once, when the checkpoint is written)."""
    validate_card(f"---\n{card_data(recipe).to_yaml()}\n---\n")


def example_prompt(recipe: Recipe) -> str:
    """A prompt the model was made for: the first of its evaluation or calibration prompts."""
    evaluation, prompts = recipe.evaluation, recipe.calibration.prompts
    if evaluation is not None and builtin_name(evaluation.prompts) == "shapes":
        return evaluation_scenes(1)[0].caption
    if prompts.source == "inline" and prompts.texts:
        return prompts.texts[0]
    if prompts.source == "builtin":
        return builtin_prompts(prompts.path or "captions")[0]
    return "a photo of an astronaut riding a horse"


def calibration_rows(recipe: Recipe, report: PruneReport) -> list[tuple[str, str]]:
    """The effective calibration settings, as run (from the effective recipe and the report)."""
    cal, prune = recipe.calibration, recipe.prune
    prompts = cal.prompts
    source = {
        "builtin": f"built-in set `{prompts.path or 'captions'}`",
        "inline": "listed in recipe.yaml",
        "hub-dataset": f"`{prompts.repo_id}` / `{prompts.path}`",
    }.get(prompts.source, prompts.source)
    rows = [
        ("prompts", f"{prompts.count}, {source}" + (f", sha256 `{prompts.sha256[:16]}…`" if prompts.sha256 else "")),
        (
            "trajectories",
            f"{cal.steps} steps, guidance {cal.guidance_scale}, {cal.resolution or 'default'} px, batch "
            f"{cal.batch_size}, seed {cal.seed} + prompt index",
        ),
        (
            "unconditional input",
            str(
                report.calibration.get(
                    "unconditional",
                    "the pipeline's default" if cal.negative_prompt is None else repr(cal.negative_prompt),
                )
            ),
        ),
        ("scheduler", cal.scheduler or "the pipeline's own"),
        (
            "dtypes",
            f"calibration {report.precision.get('compute', cal.dtype)}, checkpoint "
            f"{report.precision.get('checkpoint', '?')}, saved {recipe.output.dtype}",
        ),
        ("timestep weighting", f"{prune.weighting} ({prune.alpha_min} → {prune.alpha_max})"),
        (
            "module packages",
            f"{len(report.packages) or prune.packages}"
            + (" (chosen by memory)" if report.package_plan.get("mode") == "auto" else ""),
        ),
        ("method", prune.method.card_text(prune.granularity)),
        ("solver", prune.solver.card_text(prune.granularity)),
        (
            "Hessian",
            f"damping {prune.damping_fraction} × mean diagonal, accumulation {prune.hessian_precision}",
        ),
        (
            "layer targets",
            "the dense network's outputs (asymmetric, `calibration_target: dense`)"
            if prune.calibration_target == "dense"
            else "each layer's own outputs on the pruned network's inputs (OBS-Diff)",
        ),
        (
            "sparsity allocation",
            f"error-driven per package, ratio ± {prune.allocation_spread}, same total"
            if prune.allocation == "error"
            else "uniform",
        ),
    ]
    return rows


def _metric_rows(evaluation: EvalResult | None) -> list[dict[str, str]]:
    """eval.json metrics as table rows: value, 95% interval and sample count."""
    rows = []
    for m in evaluation.metrics if evaluation else []:
        low, high = m.ci95
        rows.append(
            {
                "name": m.label,
                "dense": "–" if m.dense is None else f"{m.dense:.4g}",
                "pruned": f"{m.pruned:.4g}",
                "interval": f"[{low:.4g}, {high:.4g}]",
                "samples": str(m.samples),
            }
        )
    return rows


def recovery_fields(recipe: Recipe, recovery: dict[str, Any] | None, evaluation: EvalResult | None) -> dict[str, Any]:
    """The heal, where there was one: what was kept, its validation, cost and settings, and the one-shot and
    recovered metrics side by side (the one-shot checkpoint measured with the same settings)."""
    if recovery is None or recipe.recover is None:
        return {"recovery": None}
    config = recipe.recover
    kept, run = recovery["kept_step"], recovery["steps_run"]
    verdict = (
        f"the state after step {kept} of {run} was kept (best on the validation prompts)"
        if kept
        else f"rejected: none of the {run} steps scored better on the validation prompts than the one-shot "
        "weights, so this checkpoint holds the one-shot weights"
    )
    one_shot = recovery.get("one_shot_evaluation")
    before = {m["name"]: m for m in one_shot["metrics"]} if one_shot else {}
    side_by_side = [
        {
            "name": m.label,
            "dense": "–" if m.dense is None else f"{m.dense:.4g}",
            "one_shot": f"{before[m.name]['pruned']:.4g}" if m.name in before else "not measured",
            "recovered": f"{m.pruned:.4g}",
        }
        for m in (evaluation.metrics if evaluation else [])
    ]
    seconds = recovery.get("seconds", {})
    return {
        "recovery": {
            "verdict": verdict,
            "validation": f"{recovery['one_shot_validation']:.4g} → {recovery['best_validation']:.4g}",
            "stopped_early": recovery["stopped_early"],
            "trainable": f"{config.trainable} ({_billions(recovery['trainable_parameters'])} parameters)",
            "rows": recovery.get("rows", {}),
            "cost": ", ".join(f"{k} {v:.1f} s" for k, v in seconds.items()),
            "settings": f"{config.trajectories} trajectories of {config.prompts.count} prompts "
            f"({config.validation_prompts} held out for validation, seeds from {config.seed}), "
            f"learning rate {config.learning_rate:g} ({config.warmup_steps} warmup steps, then {config.schedule}), "
            f"batch {config.batch_size} × {config.gradient_accumulation}, at most {config.steps} steps",
            "metrics": side_by_side,
        }
    }


def _change(dense: float, pruned: float) -> str:
    return f"{100 * (pruned / dense - 1):+.2f}%"


def _speed_rows(bench: BenchResult) -> list[tuple[str, str, str, str]]:
    """bench.json as table rows: what, dense, pruned, change."""
    d, p = bench.dense, bench.pruned
    rows = [
        (
            "denoiser forward (ms, median [p25, p75])",
            f"{d.denoiser.median_ms:.2f} [{d.denoiser.p25_ms:.2f}, {d.denoiser.p75_ms:.2f}]",
            f"{p.denoiser.median_ms:.2f} [{p.denoiser.p25_ms:.2f}, {p.denoiser.p75_ms:.2f}]",
            f"{bench.speedup:.2f}×",
        )
    ]
    if bench.median_block_speedup is not None:
        rows.append(("transformer block (median speed-up over blocks)", "", "", f"{bench.median_block_speedup:.2f}×"))
    rows.append(("parameters", _billions(d.params), _billions(p.params), _change(d.params, p.params)))
    if d.flops:
        rows.append(
            ("FLOPs per timed forward", human(d.flops, "FLOPs"), human(p.flops, "FLOPs"), _change(d.flops, p.flops))
        )
    if d.peak_memory_bytes:
        rows.append(
            (
                "peak memory",
                f"{d.peak_memory_bytes / 1e9:.2f} GB",
                f"{(p.peak_memory_bytes or 0) / 1e9:.2f} GB",
                _change(d.peak_memory_bytes, p.peak_memory_bytes or 0),
            )
        )
    return rows


def _settings_text(evaluation: EvalResult) -> str:
    s = evaluation.settings
    return (
        f"{s['num']} prompts ({s['prompts']}), image i with seed {s['seed']} + i for both models, {s['steps']} steps, "
        f"guidance {s['guidance_scale'] if s['guidance_scale'] is not None else 'default'}, resolution "
        f"{s['resolution'] or 'default'}"
    )


def _eval_results(evaluation: EvalResult) -> list[HubEvalResult]:
    """``model-index`` entries for the pruned model's measured metrics (the Hub renders them)."""
    settings = _settings_text(evaluation)
    prompts = evaluation.settings["prompts"]
    return [
        HubEvalResult(
            task_type="text-to-image",
            dataset_type=prompts,
            dataset_name=f"{prompts} ({evaluation.settings['num']} prompts)",
            metric_type=m.name,
            metric_name=m.label,
            metric_value=round(float(m.pruned), 6),
            metric_config=settings,
        )
        for m in evaluation.metrics
        if m.pruned is not None and abs(m.pruned) != float("inf")
    ]


def card_for_folder(directory: Path, repo_id: str | None = None) -> str:
    """The card of a pruned checkpoint folder, from its recipe.yaml, report.json, eval.json and bench.json."""
    missing = [n for n in (RECIPE_FILE, REPORT_FILE) if not (directory / n).is_file()]
    if missing:
        raise CardError(f"{directory} is not a pruned checkpoint (no {missing[0]}); run obsdiff-hub prune first")
    recipe = load_recipe(directory / RECIPE_FILE)
    run = read_run_record(directory)
    evaluation = (
        read_record(directory / EVAL_FILE, EvalResult.from_dict) if (directory / EVAL_FILE).is_file() else None
    )
    bench = read_record(directory / BENCH_FILE, BenchResult.from_dict) if (directory / BENCH_FILE).is_file() else None
    card = render_card(
        recipe,
        run.report,
        repo_id=repo_id,
        plan=run.plan,
        evaluation=evaluation,
        bench=bench,
        base_revision=run.provenance.get("base_revision"),
        recovery=run.recovery,
    )
    return card.content


def write_card(directory: Path, repo_id: str | None = None, *, overwrite: bool = False) -> Path:
    """Render the folder's card into its ``README.md`` (for review before a push); returns the path.
    A ``README.md`` this tool did not write is replaced only with ``overwrite``."""
    readme = directory / CARD_FILE
    if (readme.exists() or readme.is_symlink()) and CARD_FILE not in owned_files(directory) and not overwrite:
        raise CardError(f"{readme} was not written by obsdiff-hub; pass `overwrite` to replace it")
    return write_record(directory, CARD_FILE, card_for_folder(directory, repo_id))


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
