"""``obsdiff-hub prune``: run a recipe and write the checkpoint, its effective recipe, report and card."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from ..pruning.distributed import is_main_process
from ..zoo.recipes import load_recipe
from ..zoo.resume import partial_folder, saved_packages
from ..zoo.runs import RunOutput, run_recipe
from .display import PruneProgress, console, human, print_table
from .errors import INTERRUPTED
from .evaluate import print_metrics
from .options import DeviceOpt, QuietOpt, assignments, dtype_option, packages_option


def prune(
    recipe: Annotated[str, typer.Option("--recipe", "-r", help="Recipe name (see `recipes list`) or path to a recipe YAML.")],
    model: Annotated[Optional[str], typer.Option(help="Base model repo id or local dir (default: the recipe's).")] = None,
    revision: Annotated[Optional[str], typer.Option(help="Base model revision (default: the recipe's).")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Output directory (default: ./RECIPE).")] = None,
    device: DeviceOpt = None,
    dtype: Annotated[Optional[str], typer.Option(help="Calibration dtype: float32, float16, bfloat16 (default: the checkpoint's).")] = None,
    prompts: Annotated[Optional[Path], typer.Option(help="Calibration prompts: .txt, .jsonl, .csv or .tsv.")] = None,
    prompt_column: Annotated[Optional[str], typer.Option(help="Column of --prompts (csv/tsv/jsonl) that holds the prompts.")] = None,
    num_prompts: Annotated[Optional[int], typer.Option(help="Number of calibration prompts.")] = None,
    packages: Annotated[Optional[str], typer.Option(help="Module packages: a count P, or auto (the fewest that fit in memory); default: the recipe's.")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Change any recipe field: SECTION.FIELD=VALUE (repeatable).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run from its last finished package.")] = False,
    restart: Annotated[bool, typer.Option(help="Discard the saved progress of an interrupted run and start over.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an earlier output of this tool (never a folder with other files).")] = False,
    quiet: QuietOpt = False,
) -> None:
    """Prune a model with a recipe and write a loadable checkpoint, its effective recipe, report and card."""
    loaded = load_recipe(recipe)
    target = out or Path(loaded.name)
    main = is_main_process()  # under torchrun / accelerate, rank 0 reports
    display = PruneProgress() if main and not quiet else None
    try:
        with display if display is not None else nullcontext():
            result = run_recipe(
                loaded, target, model=model, revision=revision, device=device, dtype=dtype_option(dtype),
                prompts_file=str(prompts) if prompts else None, prompt_column=prompt_column, num_prompts=num_prompts,
                packages=packages_option(packages), changes=assignments(set_ or []), resume=resume, restart=restart,
                overwrite=overwrite, progress=display,
            )
    except KeyboardInterrupt:
        done = saved_packages(target)
        where = partial_folder(target)
        saved = f"progress of {done} finished package(s) is saved in {where}: rerun with --resume" if done else "no package had finished, nothing was saved"
        typer.echo(f"interrupted: {saved}", err=True)
        raise typer.Exit(INTERRUPTED) from None
    if not main:
        return
    if quiet:
        typer.echo(str(target))
        return
    print_summary(result, target)


def print_summary(result: RunOutput, target: Path) -> None:
    report = result.result.report
    table = Table(title=f"{result.recipe.name} v{result.recipe.version} → {target}")
    table.add_column("")
    table.add_column("value", justify="right")
    table.add_row("parameters", f"{human(report.params_before)} → {human(report.params_after)}")
    count = result.recipe.calibration.prompts.count
    repeats = f" ({result.distinct_prompts} distinct, cycled)" if result.distinct_prompts < count else ""
    table.add_row("calibration prompts", f"{count}{repeats}")
    table.add_row("mean sparsity (targeted layers)", f"{report.mean_sparsity:.3f}")
    table.add_row("mean relative reconstruction error", f"{report.mean_relative_error:.4g}")
    if result.plan is not None and result.plan.flops_before:
        table.add_row("FLOPs per forward (1024², batch 1)", f"{human(result.plan.flops_before)} → {human(result.plan.flops_after or 0)}")
    plan = report.package_plan
    table.add_row("module packages", f"{plan['packages']} ({plan['mode']}; Hessians {human(plan['hessian_bytes_total'], 'B')})")
    table.add_row("dtypes", f"calibration {report.precision['compute']}, checkpoint {report.precision['checkpoint']}")
    for stage, seconds in report.stages.items():
        table.add_row(stage.removesuffix("_s").replace("_", " "), f"{seconds:.2f} s")
    table.add_row("peak memory", human(report.peak_memory_bytes, "B"))
    print_table(table)
    if result.evaluation:
        print_metrics(result.evaluation)
    console.print(f"wrote {target}")
