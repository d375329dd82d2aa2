"""``obsdiff-hub prune``: run a recipe and write the checkpoint, its effective recipe, report and card."""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Iterator, Optional

import typer
from rich.table import Table

from ..errors import InputError
from .display import PruneProgress, console, human, print_json, print_table
from .errors import INTERRUPTED
from .evaluate import print_metrics
from .lazy import library
from .options import (
    DeviceOpt,
    JsonOpt,
    OffloadOpt,
    OverwriteOpt,
    QuietOpt,
    RevisionOpt,
    assignments,
    dtype_option,
    packages_option,
    renamed,
)

distributed = library("pruning.distributed")
recipes = library("zoo.recipes")
resume_state = library("zoo.resume")
runs = library("zoo.runs")

if TYPE_CHECKING:
    from ..zoo.runs import Overrides, RunOutput


RecipeOpt = Annotated[
    list[str],
    typer.Option(
        "--recipe",
        "-r",
        metavar="RECIPE",
        help="A shipped recipe's name (see `recipes list`) or a recipe YAML file; repeat it for a family of "
        "sparsities calibrated once (one folder each under --out).",
    ),
]
BaseOpt = Annotated[
    Optional[str],
    typer.Option(
        "--base", metavar="BASE", help="The dense model to prune: Hub repo id or folder (default: the recipe's)."
    ),
]
OutOpt = Annotated[Optional[Path], typer.Option("--out", metavar="DIR", help="Output folder (default: ./RECIPE).")]
DtypeOpt = Annotated[
    Optional[str],
    typer.Option(
        "--dtype",
        metavar="DTYPE",
        help="Calibration dtype: float32, float16 or bfloat16 (default: the checkpoint's own).",
    ),
]
PromptsOpt = Annotated[
    Optional[str],
    typer.Option(
        "--prompts",
        metavar="SOURCE",
        help="Calibration prompts: a .txt/.jsonl/.csv/.tsv file, or builtin:captions / builtin:shapes.",
    ),
]
PromptColumnOpt = Annotated[
    Optional[str],
    typer.Option("--prompt-column", metavar="COLUMN", help="Column of a .csv/.tsv/.jsonl prompt file."),
]
NumPromptsOpt = Annotated[
    Optional[int],
    typer.Option("--num-prompts", metavar="INT", help="Calibration prompts to use (a shorter source is cycled)."),
]
PackagesOpt = Annotated[
    Optional[str],
    typer.Option(
        "--packages", metavar="P|auto", help="Module packages: a count, or auto (the fewest that fit in memory)."
    ),
]
SetOpt = Annotated[
    Optional[list[str]],
    typer.Option(
        "--set", metavar="FIELD=VALUE", help="Change any recipe field, e.g. prune.sparsity=0.4 (repeatable)."
    ),
]
ResumeOpt = Annotated[
    bool, typer.Option("--resume", help="Continue an interrupted run from its last finished package.")
]
RestartOpt = Annotated[
    bool, typer.Option("--restart", help="Discard the saved progress of an interrupted run and start over.")
]
SaveHessiansOpt = Annotated[
    Optional[Path],
    typer.Option(
        "--save-hessians",
        metavar="DIR",
        help="Save every package's Hessians (fp32 safetensors) to reuse with --hessians.",
    ),
]
HessiansOpt = Annotated[
    Optional[Path],
    typer.Option(
        "--hessians",
        metavar="DIR",
        help="Take the Hessians from a store --save-hessians wrote (same base and calibration): no trajectories.",
    ),
]


def prune(
    recipe: RecipeOpt,
    base: BaseOpt = None,
    model: Annotated[Optional[str], typer.Option("--model", hidden=True, help="Old spelling of --base.")] = None,
    revision: RevisionOpt = None,
    out: OutOpt = None,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    prompts: PromptsOpt = None,
    prompt_column: PromptColumnOpt = None,
    num_prompts: NumPromptsOpt = None,
    packages: PackagesOpt = None,
    offload: OffloadOpt = None,
    set_: SetOpt = None,
    resume: ResumeOpt = False,
    restart: RestartOpt = False,
    save_hessians: SaveHessiansOpt = None,
    hessians: HessiansOpt = None,
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Prune a model with a recipe and write a loadable checkpoint, its effective recipe, report and card.

    \b
    Example: obsdiff-hub prune -r tiny-shapes-unstructured-50 --out tiny-out
    Family:  obsdiff-hub prune -r sdxl-10 -r sdxl-20 -r sdxl-30 --out zoo
    """
    options = overrides(
        renamed(base, model, "--base", "--model"),
        revision,
        dtype,
        prompts,
        prompt_column,
        num_prompts,
        packages,
        [*(set_ or []), *([f"prune.offload={offload}"] if offload else [])],
    )
    if len(recipe) > 1:
        if save_hessians or hessians:
            raise InputError(
                "--save-hessians and --hessians apply to single-recipe runs (a family already calibrates its first "
                "package once)"
            )
        output = dict(out=out, resume=resume or restart, overwrite=overwrite, quiet=quiet, as_json=as_json)
        family(recipe, options, device=device, **output)
        return
    loaded = recipes.load_recipe(recipe[0])
    target = out or Path(loaded.name)
    main = distributed.is_main_process()  # under torchrun / accelerate, rank 0 reports
    display = PruneProgress() if main and not quiet and not as_json else None
    with interrupted_saves_progress(target), display if display is not None else nullcontext():
        result = runs.run_recipe(
            loaded,
            target,
            options,
            device=device,
            resume=resume,
            restart=restart,
            overwrite=overwrite,
            progress=display,
            save_hessians=save_hessians,
            hessians=hessians,
        )
    if not main:
        return
    if as_json:
        print_json(summary_record(result))
    elif quiet:
        typer.echo(str(target))
    else:
        print_summary(result)


@contextmanager
def interrupted_saves_progress(target: Path) -> Iterator[None]:
    """Ctrl-C: say how much progress is saved and how to resume, and exit with the interrupt's code."""
    try:
        yield
    except KeyboardInterrupt:
        done = resume_state.saved_packages(target)
        where = resume_state.partial_folder(target)
        saved = (
            f"progress of {done} finished package(s) is saved in {where}: rerun with --resume"
            if done
            else "no package had finished, nothing was saved"
        )
        typer.echo(f"interrupted: {saved}", err=True)
        raise typer.Exit(INTERRUPTED) from None


def overrides(
    base: str | None,
    revision: str | None,
    dtype: str | None,
    prompts: str | None,
    prompt_column: str | None,
    num_prompts: int | None,
    packages: str | None,
    set_: list[str] | None,
) -> Overrides:
    """The run options as the library takes them (``zoo.runs.Overrides``), each checked."""
    return runs.Overrides(
        base=base,
        revision=revision,
        dtype=dtype_option(dtype),
        prompts=prompts,
        prompt_column=prompt_column,
        num_prompts=num_prompts,
        packages=packages_option(packages),
        changes=assignments(set_ or []),
    )


def family(
    names: list[str],
    options: Overrides,
    *,
    out: Path | None,
    device: str | None,
    resume: bool,
    overwrite: bool,
    quiet: bool,
    as_json: bool,
) -> None:
    """``prune`` with several recipes: one calibration of the first package, a folder per member."""
    if resume:
        raise InputError(
            "--resume and --restart apply to single-recipe runs; rerun the member that was interrupted on its own"
        )
    if out is None:
        raise InputError("a family run needs --out, the folder that will hold one folder per member")
    loaded = [recipes.load_recipe(name) for name in names]
    display = PruneProgress() if not quiet and not as_json else None
    records: list[dict[str, Any]] = []

    def written(output: RunOutput) -> None:
        records.append(summary_record(output))
        if quiet:
            typer.echo(str(output.directory))
        elif not as_json:
            print_summary(output)

    with display if display is not None else nullcontext():
        runs.run_family(loaded, out, options, device=device, overwrite=overwrite, progress=display, on_output=written)
    if as_json:
        print_json(records)


def summary_record(result: RunOutput) -> dict[str, Any]:
    """What the summary table shows, as data."""
    report = result.result.report
    return {
        "out": str(result.directory),
        "recipe": result.recipe.name,
        "recipe_version": result.recipe.version,
        "params_before": report.params_before,
        "params_after": report.params_after,
        "nonzero_params_after": report.params_after - report.zeroed_weights,
        "heads_removed": report.removed("heads"),
        "neurons_removed": report.removed("neurons"),
        "mean_sparsity": report.mean_sparsity,
        "mean_relative_error": report.mean_relative_error,
        "mean_start_error": report.mean_start_error,
        "calibration_prompts": result.recipe.calibration.prompts.count,
        "distinct_prompts": result.distinct_prompts,
        "packages": report.package_plan.get("packages"),
        "dtypes": {**report.precision, "saved": result.recipe.output.dtype},
        "stages_s": report.stages,
        "peak_memory_bytes": report.peak_memory_bytes,
        "evaluation": result.evaluation.to_dict() if result.evaluation else None,
    }


def print_summary(result: RunOutput) -> None:
    report = result.result.report
    table = Table(title=f"{result.recipe.name} v{result.recipe.version} → {result.directory}")
    table.add_column("")
    table.add_column("value", justify="right")
    table.add_row("parameters", f"{human(report.params_before)} → {human(report.params_after)}")
    if report.zeroed_weights:
        table.add_row(
            "non-zero parameters",
            f"{human(report.params_before)} → {human(report.params_after - report.zeroed_weights)}",
        )
    if report.structure:
        table.add_row("heads removed", str(report.removed("heads")))
        table.add_row("FFN neurons removed", str(report.removed("neurons")))
    count = result.recipe.calibration.prompts.count
    repeats = f" ({result.distinct_prompts} distinct, cycled)" if result.distinct_prompts < count else ""
    table.add_row("calibration prompts", f"{count}{repeats}")
    table.add_row("mean sparsity (targeted layers)", f"{report.mean_sparsity:.3f}")
    table.add_row("mean relative reconstruction error", f"{report.mean_relative_error:.4g}")
    if report.mean_start_error is not None:
        table.add_row(f"  before {result.recipe.prune.solver.name} (the obs result)", f"{report.mean_start_error:.4g}")
    if result.plan is not None and result.plan.flops_before:
        table.add_row(
            "FLOPs per forward (1024², batch 1)",
            f"{human(result.plan.flops_before)} → {human(result.plan.flops_after or 0)}",
        )
    plan = report.package_plan
    table.add_row(
        "module packages", f"{plan['packages']} ({plan['mode']}; Hessians {human(plan['hessian_bytes_total'], 'B')})"
    )
    table.add_row(
        "dtypes",
        f"calibration {report.precision['compute']}, base checkpoint {report.precision['checkpoint']}, saved "
        f"{result.recipe.output.dtype}",
    )
    for stage, seconds in report.stages.items():
        table.add_row(stage.removesuffix("_s").replace("_", " "), f"{seconds:.2f} s")
    on_gpu = report.device.startswith("cuda")
    table.add_row("peak GPU memory" if on_gpu else "peak memory (process RSS)", human(report.peak_memory_bytes, "B"))
    if on_gpu and report.peak_host_bytes:
        table.add_row("peak host memory (process RSS)", human(report.peak_host_bytes, "B"))
    print_table(table)
    if result.evaluation:
        print_metrics(result.evaluation)
    console.print(f"wrote {result.directory}")
