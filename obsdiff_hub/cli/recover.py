"""``obsdiff-hub recover``: heal a pruned checkpoint by distillation from its dense base."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table

from ..errors import InputError
from .display import RecoveryProgress, console, print_json, print_table
from .errors import INTERRUPTED
from .evaluate import print_metrics
from .lazy import library
from .options import BaseOpt, DeviceOpt, JsonOpt, OverwriteOpt, QuietOpt, assignments, positive
from .prune import RestartOpt, ResumeOpt

recovering = library("zoo.recovering")
resume_state = library("zoo.resume")


def recover(
    checkpoint: Annotated[
        Path, typer.Argument(metavar="CKPT", help="A pruned checkpoint folder written by `obsdiff-hub prune`.")
    ],
    out: Annotated[Path, typer.Option("--out", metavar="DIR", help="Folder for the recovered checkpoint.")],
    base: BaseOpt = None,
    steps: Annotated[Optional[int], typer.Option("--steps", metavar="N", help="Optimizer steps at most.")] = None,
    set_: Annotated[
        Optional[list[str]],
        typer.Option(
            "--set",
            metavar="FIELD=VALUE",
            help="Change a recovery setting, e.g. recover.learning_rate=3e-5 (repeatable).",
        ),
    ] = None,
    device: DeviceOpt = None,
    resume: ResumeOpt = False,
    restart: RestartOpt = False,
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Heal a pruned checkpoint: distil it from the dense model on sampling trajectories, keeping the best state.

    \b
    Example: obsdiff-hub recover sdxl-30/ --out sdxl-30-recovered --steps 1000
    """
    changes = assignments(set_ or [])
    foreign = sorted(k for k in changes if not k.startswith("recover."))
    if foreign:
        raise InputError(f"--set {foreign[0]}: recover changes recovery settings only (recover.FIELD=VALUE)")
    display = RecoveryProgress() if not quiet and not as_json else None
    try:
        with display if display is not None else nullcontext():
            result = recovering.recover_checkpoint(
                checkpoint,
                out,
                base=base,
                steps=positive(steps, "--steps"),
                changes=changes,
                device=device,
                resume=resume,
                restart=restart,
                overwrite=overwrite,
                progress=display,
            )
    except KeyboardInterrupt:
        typer.echo(
            f"interrupted: the teacher data and the last saved steps are in {resume_state.partial_folder(out)}: "
            "rerun with --resume",
            err=True,
        )
        raise typer.Exit(INTERRUPTED) from None
    if as_json:
        print_json(summary_record(result))
    elif quiet:
        typer.echo(str(out))
    else:
        print_summary(result)


def summary_record(result: Any) -> dict[str, Any]:
    return {
        "out": str(result.directory),
        "recipe": result.recipe.name,
        "recovery": result.report.to_dict(),
        "evaluation": result.evaluation.to_dict() if result.evaluation else None,
        "one_shot_evaluation": result.one_shot.to_dict() if result.one_shot else None,
    }


def print_summary(result: Any) -> None:
    report = result.report
    table = Table(title=f"{result.recipe.name} recovered → {result.directory}")
    table.add_column("")
    table.add_column("value", justify="right")
    kept = f"step {report.kept_step} of {report.steps_run}" if not report.rejected else "none (one-shot weights kept)"
    table.add_row("state kept", kept)
    table.add_row("validation loss", f"{report.one_shot_validation:.4g} → {report.best_validation:.4g}")
    table.add_row("stopped early", "yes" if report.stopped_early else "no")
    for stage, seconds in report.seconds.items():
        table.add_row(stage, f"{seconds:.1f} s")
    print_table(table)
    if result.evaluation:
        print_metrics(result.evaluation)
    console.print(f"wrote {result.directory}")
