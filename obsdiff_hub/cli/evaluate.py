"""``obsdiff-hub eval``: quality next to the dense model, same prompts and seeds."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.table import Table

from ..errors import InputError
from .display import ImageProgress, console, print_json, print_table
from .lazy import library
from .options import (
    BaseOpt,
    DeviceOpt,
    GuidanceAlias,
    GuidanceOpt,
    JsonOpt,
    ModelAlias,
    ModelArg,
    QuietOpt,
    ResolutionOpt,
    SeedOpt,
    StepsAlias,
    StepsOpt,
    checkpoint,
    renamed,
)

distributed = library("pruning.distributed")
evaluation = library("zoo.evaluation")
family = library("zoo.family")
inspection = library("checkpoints.inspection")
outputs = library("storage.outputs")
records = library("zoo.records")

if TYPE_CHECKING:
    from ..zoo.evaluation import EvalResult


def print_metrics(result: EvalResult) -> None:
    scores = Table(title="quality (reloaded from disk, same prompts and seeds as dense)")
    for column in ("metric", "dense", "pruned", "95% interval", "images"):
        scores.add_column(column)
    for m in result.metrics:
        low, high = m.ci95
        dense = "–" if m.dense is None else f"{m.dense:.4g}"
        scores.add_row(m.label, dense, f"{m.pruned:.4g}", f"[{low:.4g}, {high:.4g}]", str(m.samples))
    print_table(scores)


MetricsOpt = Annotated[
    Optional[str],
    typer.Option(
        "--metrics",
        metavar="LIST",
        help="Comma-separated: psnr, clip, fid, imagereward, shapes (default: the recipe's, else psnr,clip; "
        "psnr when offline).",
    ),
]
PromptsOpt = Annotated[
    Optional[str],
    typer.Option(
        "--prompts",
        metavar="SOURCE",
        help="builtin:captions, builtin:shapes or a prompt file (default: the recipe's).",
    ),
]
NumPromptsOpt = Annotated[
    Optional[int],
    typer.Option("--num-prompts", metavar="INT", help="Images per model (default: the recipe's, else 60)."),
]
BatchSizeOpt = Annotated[Optional[int], typer.Option("--batch-size", metavar="INT", help="Images per sampling call.")]
ReferenceOpt = Annotated[
    Optional[Path],
    typer.Option("--reference", metavar="DIR", help="Folder of reference images for FID (e.g. MS-COCO 2014 val)."),
]
FidFeaturesOpt = Annotated[
    Optional[str], typer.Option("--fid-features", metavar="KIND", help="inception (standard FID) or clip.")
]
ClipModelOpt = Annotated[
    Optional[str],
    typer.Option(
        "--clip-model",
        metavar="MODEL",
        help="CLIP for the clip metric: a Hub id or folder (default: OpenAI ViT-B/16, pinned revision).",
    ),
]
OutOpt = Annotated[
    Optional[Path],
    typer.Option(
        "--out", metavar="DIR", help="Where eval.json and samples.png go (default: the checkpoint's folder)."
    ),
]


def evaluate(
    model_argument: ModelArg = None,
    model: ModelAlias = None,
    base: BaseOpt = None,
    metrics: MetricsOpt = None,
    prompts: PromptsOpt = None,
    num_prompts: NumPromptsOpt = None,
    num: Annotated[Optional[int], typer.Option("--num", hidden=True, help="Old spelling of --num-prompts.")] = None,
    num_inference_steps: StepsOpt = None,
    steps: StepsAlias = None,
    guidance_scale: GuidanceOpt = None,
    guidance: GuidanceAlias = None,
    resolution: ResolutionOpt = None,
    seed: SeedOpt = None,
    batch_size: BatchSizeOpt = None,
    reference: ReferenceOpt = None,
    fid_features: FidFeaturesOpt = None,
    clip_model: ClipModelOpt = None,
    device: DeviceOpt = None,
    out: OutOpt = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an earlier eval.json there.")] = False,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Measure quality next to the dense model (same prompts and seeds): eval.json with 95% intervals, and a
    captioned grid.

    Settings not given come from the checkpoint's recipe (what prune measured), then the pipeline.
    A family folder (prune -r A -r B --out DIR) is evaluated member by member, sampling the base once.

    \b
    Example: obsdiff-hub eval tiny-out --metrics psnr,shapes --prompts builtin:shapes --overwrite
    """
    source = checkpoint(model_argument, model, "eval")
    given = {
        "metrics": [m.strip() for m in metrics.split(",") if m.strip()] if metrics is not None else None,
        "prompts": prompts,
        "num": renamed(num_prompts, num, "--num-prompts", "--num"),
        "steps": renamed(num_inference_steps, steps, "--num-inference-steps", "--steps"),
        "guidance_scale": renamed(guidance_scale, guidance, "--guidance-scale", "--guidance"),
        "resolution": resolution,
        "seed": seed,
        "batch_size": batch_size,
        "reference": str(reference) if reference else None,
        "fid_features": fid_features,
        "clip_model": clip_model,
    }
    run_device = distributed.resolve_device(device)
    whole_family = family.is_family(Path(source))
    if whole_family and out is not None:
        raise InputError("a family is evaluated into each member's own folder; leave out --out")
    members = [str(m.folder) for m in family.family_members(Path(source))] if whole_family else [source]
    # a family's folder is held from here: each member's results go into the member folder inside it, or nowhere
    root = outputs.HeldFolder.open(source, follow_link=False) if whole_family else nullcontext()
    results = []
    for member in members:  # the dense base's images are cached: a family samples the base once
        spec = evaluation.evaluation_settings(member, given)
        folder = records.results_folder(
            member, Path(member) if whole_family else out
        )  # a family: each member's own folder
        display = None if quiet or as_json else ImageProgress()
        target = root.folder(Path(member).name, create=False) if whole_family else nullcontext(folder)
        with target as into, display if display is not None else nullcontext():
            result = evaluation.evaluate_checkpoint(
                member,
                base or inspection.base_model_of(member),
                spec,
                into,
                device=run_device,
                on_image=display,
                overwrite=overwrite,
            )
        results.append(result.to_dict())
        if quiet:
            typer.echo(str(folder / records.EVAL_FILE))
        elif not as_json:
            print_metrics(result)
            console.print(f"wrote {folder / records.EVAL_FILE} and {folder / result.grid}")
    if as_json:
        print_json(results if whole_family else results[0])
