"""Model cards from ``model_cards/`` templates, through huggingface_hub's ModelCard."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import yaml
from huggingface_hub import EvalResult as HubEvalResult
from huggingface_hub import ModelCard, ModelCardData

from ..architectures import ADAPTERS
from ..errors import InputError
from ..models import PRUNED_CLASSES, base_class_for
from ..pruning.prompts import builtin_prompts
from ..pruning.report import PruneReport
from ..resources import data_dir
from ..shapes.dataset import evaluation_scenes
from ..storage.files import read_json
from ..storage.outputs import add_owned, owned_files, write_atomic
from ..units import human
from .bench import BENCH_FILE, BenchResult
from .evaluation import EVAL_FILE, EvalResult
from .recipes import Recipe, load_recipe

CARD_TEMPLATE = "obsdiff.md"
# The Hub's base_model_relation values are adapter, merge, quantized, finetune; none means
# "pruned", so none is set and the relation is stated by the tags instead.
TAGS = ["obs-diff", "pruned", "text-to-image", "diffusers"]


class CardError(InputError):
    """A card that would not be valid on the Hub; the message names the missing field."""


def _billions(n: int) -> str:
    return f"{n / 1e9:.3f} B" if n >= 1e8 else f"{n / 1e6:.3f} M"


def render_card(
    recipe: Recipe,
    report: PruneReport,
    *,
    repo_id: str | None = None,
    plan: dict[str, Any] | None = None,
    evaluation: EvalResult | None = None,
    bench: BenchResult | None = None,
    base_revision: str | None = None,
) -> ModelCard:
    """Render and validate the card for one pruned checkpoint from its effective recipe, its
    report and (when measured) its ``eval.json`` and ``bench.json``."""
    metrics = _metric_rows(evaluation)
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
        eval_results=_eval_results(evaluation) if metrics else None,
    )
    heads, neurons = report.removed("heads"), report.removed("neurons")
    usage_pipeline = (
        ("import obsdiff_hub  # registers the pruned classes with DiffusionPipeline\n" if structured else "")
        + "import torch\nfrom diffusers import DiffusionPipeline\n\n"
        + f'pipe = DiffusionPipeline.from_pretrained("{repo}", dtype=torch.float16).to("cuda")\n'
        + f"image = pipe({json.dumps(example_prompt(recipe), ensure_ascii=False)}).images[0]"
    )
    loader = pruned_cls if structured else f"diffusers.{pruned_cls}"
    load_component = f'{base.component} = {pruned_cls}.from_pretrained("{repo}", subfolder="{base.component}", dtype=torch.float16)\n'
    component_import = f"from obsdiff_hub import {pruned_cls}" if structured else f"from diffusers import {pruned_cls}"
    if base.repo_id.startswith("builtin:"):  # no Hub id: the shipped dense pipeline takes the pruned component
        usage_component = (
            f"import torch\nimport obsdiff_hub\n{component_import}\n\n{load_component}"
            f'pipe = obsdiff_hub.load_pipeline("{base.repo_id}", torch_dtype=torch.float16)  # the dense base\n'
            f"pipe.register_modules({base.component}={base.component})"
        )
    else:
        usage_component = (
            f"import torch\nfrom diffusers import {base.pipeline}\n{component_import}\n\n{load_component}"
            f'pipe = {base.pipeline}.from_pretrained("{base.repo_id}", {base.component}={base.component}, dtype=torch.float16)'
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
    fields = dict(
        title=f"{recipe.name} (OBS-Diff {recipe.prune.granularity}, {recipe.prune.ratio_label})",
        description=recipe.description,
        base_model=base.repo_id,
        base_revision=base_revision or base.revision,
        component=base.component,
        model_class=report.model_class,
        method=recipe.prune.method,
        granularity=recipe.prune.granularity,
        ratio=recipe.prune.ratio_label,
        blocks=recipe.prune.blocks if recipe.prune.blocks is not None else "all",
        params_before=_billions(report.params_before),
        params_after=_billions(report.params_after),
        mean_sparsity=f"{report.mean_sparsity:.4f}",
        mean_error=f"{report.mean_relative_error:.4g}"
        + (
            f" (the obs result it was refined from: {report.mean_start_error:.4g})"
            if report.mean_start_error is not None
            else ""
        ),
        heads_removed=heads,
        neurons_removed=neurons,
        sparsity_note=sparsity_note,
        calibration=calibration_rows(recipe, report),
        derived_from=recipe.derived_from,
        metrics=metrics,
        evaluation_settings=_settings_text(evaluation) if evaluation else None,
        sample_grid=evaluation.grid if evaluation else None,
        speed=_speed_rows(bench) if bench else None,
        speed_settings=f"{bench.device}, {bench.dtype}, {bench.resolution}², batch {bench.batch}, median of {bench.dense.denoiser.repeats} after {bench.warmup} warm-up runs"
        if bench
        else None,
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
            flops_before=human(plan["flops_before"], "FLOPs"),
            flops_after=human(plan["flops_after"], "FLOPs"),
            flop_change=f"{-100 * plan['flop_reduction']:+.2f}%",
            plan_resolution=plan["resolution"],
        )
    card = ModelCard.from_template(data, template_path=str(data_dir("model_cards") / CARD_TEMPLATE), **fields)
    validate_card(card.content)
    return card


def check_card(recipe: Recipe) -> None:
    """Render and validate the card a run of ``recipe`` will publish, with nothing measured yet, so
    metadata the Hub would refuse stops the run before any work instead of after it."""
    render_card(
        recipe,
        PruneReport(
            family=recipe.base_model.family, model_class="", config=recipe.prune.model_dump(), params_before=0
        ),
    )


def example_prompt(recipe: Recipe) -> str:
    """A prompt the model was made for: the first of its evaluation or calibration prompts."""
    evaluation, prompts = recipe.evaluation, recipe.calibration.prompts
    if evaluation is not None and evaluation.prompts == "builtin:shapes":
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
            f"{cal.steps} steps, guidance {cal.guidance_scale}, {cal.resolution or 'default'} px, batch {cal.batch_size}, seed {cal.seed} + prompt index",
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
            f"calibration {report.precision.get('compute', cal.dtype)}, checkpoint {report.precision.get('checkpoint', '?')}, saved {recipe.output.dtype}",
        ),
        ("timestep weighting", f"{prune.weighting} ({prune.alpha_min} → {prune.alpha_max})"),
        (
            "module packages",
            f"{len(report.packages) or prune.packages}"
            + (" (chosen by memory)" if report.package_plan.get("mode") == "auto" else ""),
        ),
        (
            "solver",
            {
                "obs": "OBS (the paper's greedy pass)",
                "obs+lsq": "OBS, then its kept weights re-fitted to the least-squares optimum",
                "admm": f"OBS, then masks and weights refined by ADMM ({prune.admm_iterations} steps at most) and re-fitted; no layer kept worse than OBS",
            }[prune.solver]
            + f"; percdamp {prune.percdamp}, blocksize {prune.blocksize}, Hessian accumulation {prune.hessian_precision}",
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
    if prune.granularity == "structured":
        rows.append(
            (
                "structured",
                f"head saliency {prune.head_saliency}, RRF k {prune.rrf_k}, {prune.neuron_batch} neurons per OBS round",
            )
        )
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
        f"guidance {s['guidance_scale'] if s['guidance_scale'] is not None else 'default'}, resolution {s['resolution'] or 'default'}"
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
    missing = [n for n in ("recipe.yaml", "report.json") if not (directory / n).is_file()]
    if missing:
        raise CardError(f"{directory} is not a pruned checkpoint (no {missing[0]}); run obsdiff-hub prune first")
    recipe = load_recipe(directory / "recipe.yaml")
    data, report = read_record(directory / "report.json", lambda d: (d, prune_report(d)))
    evaluation = (
        read_record(directory / EVAL_FILE, EvalResult.from_dict) if (directory / EVAL_FILE).is_file() else None
    )
    bench = read_record(directory / BENCH_FILE, BenchResult.from_dict) if (directory / BENCH_FILE).is_file() else None
    provenance = data.get("provenance") if isinstance(data.get("provenance"), dict) else {}
    card = render_card(
        recipe,
        report,
        repo_id=repo_id,
        plan=data.get("plan") if isinstance(data.get("plan"), dict) else None,
        evaluation=evaluation,
        bench=bench,
        base_revision=provenance.get("base_revision"),
    )
    return card.content


def prune_report(data: dict[str, Any]) -> PruneReport:
    """The run's report from a ``report.json`` record (which adds the provenance and plan)."""
    return PruneReport.from_dict({k: v for k, v in data.items() if k not in ("provenance", "plan")})


def read_record(path: Path, parse: Callable[[dict[str, Any]], Any]) -> Any:
    """One of a checkpoint folder's JSON records, read back; a damaged one is a :class:`CardError` naming it."""
    data = read_json(path)
    try:
        return parse(data)
    except (KeyError, TypeError, AttributeError, ValueError) as error:
        raise CardError(
            f"{path}: not a record obsdiff-hub wrote ({type(error).__name__}: {error}); run the command that writes it again"
        ) from None


def write_card(directory: Path, repo_id: str | None = None, *, overwrite: bool = False) -> Path:
    """Render the folder's card into its ``README.md`` (for review before a push); returns the path.
    A ``README.md`` this tool did not write is replaced only with ``overwrite``."""
    readme = directory / "README.md"
    if (readme.exists() or readme.is_symlink()) and "README.md" not in owned_files(directory) and not overwrite:
        raise CardError(f"{readme} was not written by obsdiff-hub; pass `overwrite` to replace it")
    content = card_for_folder(directory, repo_id)
    write_atomic(directory / "README.md", content)
    add_owned(directory, ["README.md"])
    return directory / "README.md"


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
