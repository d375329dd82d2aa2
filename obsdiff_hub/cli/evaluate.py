"""``obsdiff-hub eval``: quality next to the dense model, same prompts and seeds."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Annotated, Optional

import typer
from pydantic import ValidationError
from rich.table import Table

from ..checkpoints.inspection import base_model_of
from ..errors import InputError
from ..pruning.config import describe_error
from ..pruning.distributed import resolve_device
from ..zoo.bench import results_folder
from ..zoo.evaluation import EVAL_FILE, EvalResult, evaluate_checkpoint
from ..zoo.recipes import EvaluationSpec
from .display import ImageProgress, console, print_table
from .options import DeviceOpt, QuietOpt


def print_metrics(evaluation: EvalResult) -> None:
    scores = Table(title="quality (reloaded from disk, same prompts and seeds as dense)")
    for column in ("metric", "dense", "pruned", "95% interval", "images"):
        scores.add_column(column)
    for m in evaluation.metrics:
        low, high = m.ci95
        dense = "–" if m.dense is None else f"{m.dense:.4g}"
        scores.add_row(m.label, dense, f"{m.pruned:.4g}", f"[{low:.4g}, {high:.4g}]", str(m.samples))
    print_table(scores)


def evaluate(
    model: Annotated[str, typer.Option(help="Pruned checkpoint: folder or Hub repo id.")],
    base: Annotated[Optional[str], typer.Option(help="Dense base (folder, Hub id or builtin:NAME; default: the checkpoint's provenance).")] = None,
    metrics: Annotated[str, typer.Option(help="Comma-separated: psnr, clip, fid, imagereward, shapes.")] = "psnr,clip",
    prompts: Annotated[str, typer.Option(help="builtin:captions, builtin:shapes, or a prompt file.")] = "builtin:captions",
    num: Annotated[int, typer.Option(help="Images per model.")] = 60,
    steps: Annotated[int, typer.Option(help="Sampling steps.")] = 25,
    guidance: Annotated[Optional[float], typer.Option(help="Guidance scale (default: the pipeline's).")] = None,
    resolution: Annotated[Optional[int], typer.Option(help="Height and width (default: the pipeline's).")] = None,
    seed: Annotated[int, typer.Option(help="Image i uses seed + i, for both models.")] = 0,
    batch_size: Annotated[int, typer.Option(help="Images per sampling call.")] = 8,
    reference: Annotated[Optional[Path], typer.Option(help="Folder of reference images for FID (e.g. MS-COCO 2014 val).")] = None,
    fid_features: Annotated[str, typer.Option(help="inception (standard FID) or clip.")] = "inception",
    clip_model: Annotated[Optional[str], typer.Option(help="CLIP for the clip metric (default: OpenAI ViT-B/16, pinned revision).")] = None,
    device: DeviceOpt = None,
    out: Annotated[Optional[Path], typer.Option(help="Where eval.json and samples.png go (default: the checkpoint's folder).")] = None,
    quiet: QuietOpt = False,
) -> None:
    """Measure quality next to the dense model (same prompts and seeds): eval.json with 95% intervals, a captioned grid."""
    try:
        spec = EvaluationSpec.model_validate({
            "metrics": [m.strip() for m in metrics.split(",") if m.strip()], "prompts": prompts, "num": num, "steps": steps,
            "guidance_scale": guidance, "resolution": resolution, "seed": seed, "batch_size": batch_size,
            "reference": str(reference) if reference else None, "fid_features": fid_features, "clip_model": clip_model,
        })
    except ValidationError as error:
        raise InputError(f"eval option {describe_error(error, EvaluationSpec)}") from None
    run_device = resolve_device(device)
    folder = results_folder(model, out)
    base = base or base_model_of(model)
    display = None if quiet else ImageProgress()
    with display if display is not None else nullcontext():
        record = evaluate_checkpoint(model, base, spec, folder, device=run_device, on_image=display)
    if quiet:
        typer.echo(str(folder / EVAL_FILE))
        return
    print_metrics(record)
    console.print(f"wrote {folder / EVAL_FILE} and {folder / record.grid}")
