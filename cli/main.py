"""The ``obsdiff-hub`` command line: parses arguments, calls the library, prints results.

Results go to stdout, progress to stderr (one rich display; the libraries' own bars and known
deprecation warnings are silenced unless ``--verbose``). Every user error is one line on
stderr and exit code 2; tracebacks only with ``--debug``. Tables never truncate names, and
the listing commands take ``--json`` for scripts.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

app = typer.Typer(
    name="obsdiff-hub",
    help="Prune diffusion models with OBS-Diff and publish them as diffusers checkpoints.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
recipes_app = typer.Typer(help="List and show the versioned pruning recipes.", no_args_is_help=True)
app.add_typer(recipes_app, name="recipes")

console = Console(highlight=False, soft_wrap=True)  # paths and class names are never wrapped
_state = {"debug": False, "verbose": False}


def _version(value: bool) -> None:
    if value:
        from obsdiff_hub import __version__

        typer.echo(f"obsdiff-hub {__version__}")
        raise typer.Exit()


def quiet_libraries() -> None:
    """No tqdm bars, info logs or known deprecation warnings from diffusers, transformers and the Hub client."""
    import diffusers
    import transformers
    from huggingface_hub.utils import disable_progress_bars
    from huggingface_hub.utils import logging as hub_logging

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    disable_progress_bars()
    hub_logging.set_verbosity_error()  # e.g. its retry lines: a failure ends in one error line of ours
    for category in (FutureWarning, DeprecationWarning, UserWarning):
        warnings.filterwarnings("ignore", category=category)


@app.callback()
def _main(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks."),
    verbose: bool = typer.Option(False, "--verbose", help="Show the libraries' own logs, bars and warnings."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    _state["debug"] = debug
    _state["verbose"] = verbose
    if not verbose:
        quiet_libraries()


def reports_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Known failures become one line on stderr and exit code 2 (tracebacks only with --debug)."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except (typer.Exit, typer.Abort):  # typer's control flow, itself a RuntimeError
            raise
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None
        except (ValueError, OSError, ImportError, RuntimeError, MemoryError) as error:
            if _state["debug"]:
                raise
            message = str(error).splitlines()[0] if str(error) else type(error).__name__
            message = f"out of memory ({message})" if isinstance(error, MemoryError) else message
            typer.echo(f"error: {message}", err=True)  # one line, never wrapped
            raise typer.Exit(2) from None

    return wrapper


def print_table(table: Table) -> None:
    """Print at the table's natural width, so nothing is cut whatever the terminal or pipe width."""
    width = console.measure(table, options=console.options.update_width(10_000)).maximum
    Console(width=max(console.width, width), highlight=False).print(table)


def print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2))


def _human(n: float, unit: str = "") -> str:
    from obsdiff_hub.units import human  # the package is imported lazily: `--help` stays instant

    return human(n, unit)


class Bars:
    """Progress bars on stderr, started at the first update (so an early error prints nothing
    else); where stderr is not a terminal (a log file, CI), one plain line per finished step
    with its time instead."""

    def __init__(self) -> None:
        self.console = Console(stderr=True)
        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=self.console)
        self.started = False
        self.tasks: dict[str, TaskID] = {}
        self.reported: set[str] = set()
        self.begun: float | None = None  # the first event: loading and downloads before it are not a step's time
        self.last = 0.0

    def __enter__(self) -> Bars:
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.started:
            self.progress.stop()

    def update(self, label: str, done: int, total: int, overall: bool = False) -> None:
        """``overall``: the line's time counts from the start, not from the previous line."""
        if self.begun is None:
            self.begun = self.last = time.monotonic()
        if not self.console.is_terminal:
            if done >= total and label not in self.reported:
                self.reported.add(label)
                now = time.monotonic()
                typer.echo(f"{label.strip()}: {done}/{total} ({now - (self.begun if overall else self.last):.1f} s)", err=True)
                self.last = now
            return
        if not self.started:
            self.progress.start()
            self.started = True
        if label not in self.tasks:
            self.tasks[label] = self.progress.add_task(label, total=total)
        self.progress.update(self.tasks[label], completed=done, total=total)

    def drop(self, label: str) -> None:
        task = self.tasks.pop(label, None)
        if task is not None:
            self.progress.remove_task(task)


class RichProgress(Bars):
    """The engine's progress events: packages, and the current package's trajectories or solves."""

    step = ""

    def __call__(self, event: Any) -> None:
        if "packages" not in self.tasks:  # the overall bar stays on top
            self.update("packages", event.package, event.packages, overall=True)
        if event.stage != "package":
            label = f"  package {event.package + 1}: {'trajectories' if event.stage == 'trajectories' else 'solves'}"
            if label != self.step:
                self.drop(self.step)
                self.step = label
            self.update(label, event.done, event.total)
        solved = event.stage == "solve" and event.done == event.total  # the package is finished
        self.update("packages", event.package + solved, event.packages, overall=True)
        if solved or event.stage == "package":
            self.drop(self.step)


def _saved_packages(partial: Path) -> int:
    try:
        return int(json.loads((partial / "progress.json").read_text())["completed"])
    except (OSError, ValueError, KeyError):
        return 0


def _packages(value: str | None) -> int | str | None:
    """``--packages``: a count, or ``auto``."""
    if value is None or value == "auto":
        return value
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"--packages must be a positive count or auto, got {value!r}")
    return int(value)


@app.command()
@reports_errors
def prune(
    recipe: str = typer.Option(..., "--recipe", "-r", help="Recipe name (see `recipes list`) or path to a recipe YAML."),
    model: Optional[str] = typer.Option(None, help="Base model repo id or local dir (default: the recipe's)."),
    revision: Optional[str] = typer.Option(None, help="Base model revision (default: the recipe's)."),
    out: Optional[Path] = typer.Option(None, help="Output directory (default: ./RECIPE)."),
    device: Optional[str] = typer.Option(None, help="cpu, cuda, cuda:1 ... (default: cuda if available)."),
    dtype: Optional[str] = typer.Option(None, help="Calibration dtype: float32, float16, bfloat16 (default: the checkpoint's)."),
    prompts: Optional[Path] = typer.Option(None, help="Calibration prompts: .txt, .jsonl, .csv or .tsv."),
    prompt_column: Optional[str] = typer.Option(None, help="Column of --prompts (csv/tsv/jsonl) that holds the prompts."),
    num_prompts: Optional[int] = typer.Option(None, help="Number of calibration prompts."),
    packages: Optional[str] = typer.Option(None, help="Module packages: a count P, or auto (the fewest that fit in memory); default: the recipe's."),
    set_: list[str] = typer.Option([], "--set", help="Change any recipe field: SECTION.FIELD=VALUE (repeatable)."),
    resume: bool = typer.Option(False, help="Continue an interrupted run from its last finished package."),
    restart: bool = typer.Option(False, help="Discard the saved progress of an interrupted run and start over."),
    overwrite: bool = typer.Option(False, help="Replace an earlier output of this tool (never a folder with other files)."),
    quiet: bool = typer.Option(False, help="Print only errors and the output path."),
) -> None:
    """Prune a model with a recipe and write a loadable checkpoint, its effective recipe, report and card."""
    from obsdiff_hub.zoo.recipes import load_recipe, parse_assignments
    from obsdiff_hub.zoo.runs import run_recipe

    if dtype is not None and dtype not in ("float32", "float16", "bfloat16"):
        raise ValueError(f"--dtype must be float32, float16 or bfloat16, got {dtype!r}")
    loaded = load_recipe(recipe)
    target = out or Path(loaded.name)
    quiet = quiet or int(os.environ.get("RANK", "0")) != 0  # under torchrun / accelerate, rank 0 reports
    display = None if quiet else RichProgress()
    try:
        if display is not None:
            display.__enter__()
        result = run_recipe(
            loaded,
            target,
            model=model,
            revision=revision,
            device=device,
            dtype=dtype,
            prompts_file=str(prompts) if prompts else None,
            prompt_column=prompt_column,
            num_prompts=num_prompts,
            packages=_packages(packages),
            changes=parse_assignments(set_),
            resume=resume,
            restart=restart,
            overwrite=overwrite,
            progress=display,
        )
    except KeyboardInterrupt:
        partial = target.with_name(target.name + ".partial")
        done = _saved_packages(partial)
        saved = f"progress of {done} finished package(s) is saved in {partial}: rerun with --resume" if done else "no package had finished, nothing was saved"
        typer.echo(f"interrupted: {saved}", err=True)
        raise typer.Exit(130) from None
    finally:
        if display is not None:
            display.__exit__(None, None, None)
    if int(os.environ.get("RANK", "0")) != 0:
        return
    if quiet:
        typer.echo(str(target))
        return
    _print_summary(result, target)


def _print_summary(result: Any, target: Path) -> None:
    report = result.result.report
    table = Table(title=f"{result.recipe.name} v{result.recipe.version} → {target}")
    table.add_column("")
    table.add_column("value", justify="right")
    table.add_row("parameters", f"{_human(report.params_before)} → {_human(report.params_after)}")
    count = result.recipe.calibration.prompts.count
    repeats = f" ({result.distinct_prompts} distinct, cycled)" if result.distinct_prompts < count else ""
    table.add_row("calibration prompts", f"{count}{repeats}")
    table.add_row("mean sparsity (targeted layers)", f"{report.mean_sparsity:.3f}")
    table.add_row("mean relative reconstruction error", f"{report.mean_relative_error:.4g}")
    if result.plan and result.plan.get("flops_before"):
        table.add_row("FLOPs per forward (1024², batch 1)", f"{_human(result.plan['flops_before'])} → {_human(result.plan['flops_after'])}")
    plan = report.package_plan
    table.add_row("module packages", f"{plan['packages']} ({plan['mode']}; Hessians {_human(plan['hessian_bytes_total'], 'B')})")
    table.add_row("dtypes", f"calibration {report.precision['compute']}, checkpoint {report.precision['checkpoint']}")
    for stage, seconds in report.stages.items():
        table.add_row(stage.removesuffix("_s").replace("_", " "), f"{seconds:.2f} s")
    table.add_row("peak memory", _human(report.peak_memory_bytes, "B"))
    print_table(table)
    if result.evaluation:
        _print_metrics(result.evaluation)
    console.print(f"wrote {target}")


def _print_metrics(evaluation: dict[str, Any]) -> None:
    scores = Table(title="quality (reloaded from disk, same prompts and seeds as dense)")
    for column in ("metric", "dense", "pruned", "95% interval", "images"):
        scores.add_column(column)
    for m in evaluation["metrics"]:
        low, high = m["ci95"]
        dense = "–" if m.get("dense") is None else f"{m['dense']:.4g}"
        scores.add_row(m["label"], dense, f"{m['pruned']:.4g}", f"[{low:.4g}, {high:.4g}]", str(m["samples"]))
    print_table(scores)


@app.command("eval")
@reports_errors
def eval_(
    model: str = typer.Option(..., help="Pruned checkpoint: folder or Hub repo id."),
    base: Optional[str] = typer.Option(None, help="Dense base (folder, Hub id or builtin:NAME; default: the checkpoint's provenance)."),
    metrics: str = typer.Option("psnr,clip", help="Comma-separated: psnr, clip, fid, imagereward, shapes."),
    prompts: str = typer.Option("builtin:captions", help="builtin:captions, builtin:shapes, or a prompt file."),
    num: int = typer.Option(60, help="Images per model."),
    steps: int = typer.Option(25, help="Sampling steps."),
    guidance: Optional[float] = typer.Option(None, help="Guidance scale (default: the pipeline's)."),
    resolution: Optional[int] = typer.Option(None, help="Height and width (default: the pipeline's)."),
    seed: int = typer.Option(0, help="Image i uses seed + i, for both models."),
    batch_size: int = typer.Option(8, help="Images per sampling call."),
    reference: Optional[Path] = typer.Option(None, help="Folder of reference images for FID (e.g. MS-COCO 2014 val)."),
    fid_features: str = typer.Option("inception", help="inception (standard FID) or clip."),
    clip_model: Optional[str] = typer.Option(None, help="CLIP for the clip metric (default: OpenAI ViT-B/16, pinned revision)."),
    device: Optional[str] = typer.Option(None, help="cpu, cuda, cuda:N (default: cuda if available)."),
    out: Optional[Path] = typer.Option(None, help="Where eval.json and samples.png go (default: the checkpoint's folder)."),
    quiet: bool = typer.Option(False, help="Print only errors and the path of eval.json."),
) -> None:
    """Measure quality next to the dense model (same prompts and seeds): eval.json with 95% intervals, a captioned grid."""
    from pydantic import ValidationError

    from obsdiff_hub.checkpoints.inspection import base_model_of
    from obsdiff_hub.pruning.config import describe_error
    from obsdiff_hub.zoo.bench import results_folder
    from obsdiff_hub.zoo.evaluation import EVAL_FILE, evaluate_checkpoint
    from obsdiff_hub.zoo.recipes import EvaluationSpec
    from obsdiff_hub.zoo.runs import parse_device

    try:
        spec = EvaluationSpec.model_validate({
            "metrics": [m.strip() for m in metrics.split(",") if m.strip()], "prompts": prompts, "num": num, "steps": steps,
            "guidance_scale": guidance, "resolution": resolution, "seed": seed, "batch_size": batch_size,
            "reference": str(reference) if reference else None, "fid_features": fid_features, "clip_model": clip_model,
        })
    except ValidationError as error:
        raise ValueError(f"eval option {describe_error(error, EvaluationSpec)}") from None
    run_device = parse_device(device)
    folder = results_folder(model, out)
    base = base or base_model_of(model)
    display = None if quiet else ImageProgress()
    with display if display is not None else contextlib.nullcontext():
        record = evaluate_checkpoint(model, base, spec, folder, device=run_device, on_image=display)
    if quiet:
        typer.echo(str(folder / EVAL_FILE))
        return
    _print_metrics(record)
    console.print(f"wrote {folder / EVAL_FILE} and {folder / record['grid']}")


@app.command()
@reports_errors
def bench(
    model: str = typer.Option(..., help="Pruned checkpoint: folder or Hub repo id."),
    base: Optional[str] = typer.Option(None, help="Dense base (folder or Hub id; default: the checkpoint's provenance)."),
    resolution: int = typer.Option(1024, help="Image side the latents correspond to."),
    batch_size: int = typer.Option(1, help="Latents per forward."),
    repeats: int = typer.Option(10, help="Timed repetitions (after 2 warm-up runs); at least 10."),
    device: Optional[str] = typer.Option(None, help="cpu, cuda, cuda:N (default: cuda if available)."),
    dtype: Optional[str] = typer.Option(None, help="float16, bfloat16 or float32 (default: float16 on CUDA, float32 on CPU)."),
    sparse_kernels: bool = typer.Option(False, help="2:4 checkpoints: time with semi-structured sparse kernels (CUDA)."),
    out: Optional[Path] = typer.Option(None, help="Where bench.json goes (default: the checkpoint's folder)."),
) -> None:
    """Latency (whole denoiser and per block), peak memory, parameters and FLOPs, dense vs pruned."""
    from obsdiff_hub.checkpoints.inspection import base_model_of
    from obsdiff_hub.checkpoints.outputs import add_owned, write_atomic
    from obsdiff_hub.pruning.engine import DTYPES
    from obsdiff_hub.zoo.bench import BENCH_FILE, results_folder
    from obsdiff_hub.zoo.bench import bench as measure
    from obsdiff_hub.zoo.runs import parse_device

    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"--dtype must be float32, float16 or bfloat16, got {dtype!r}")
    if resolution <= 0:
        raise ValueError(f"--resolution must be positive, got {resolution}")
    folder = results_folder(model, out)
    record = measure(model, base or base_model_of(model), resolution=resolution, batch=batch_size, device=parse_device(device),
                     dtype=DTYPES[dtype] if dtype else None, repeats=repeats, sparse_kernels=sparse_kernels)
    folder.mkdir(parents=True, exist_ok=True)
    write_atomic(folder / BENCH_FILE, json.dumps(record, indent=2) + "\n")
    add_owned(folder, [BENCH_FILE])
    table = Table(title=f"{record['device']}, {record['dtype']}, {resolution}², batch {batch_size} (median of {repeats}, ms)")
    for column in ("", "dense", "pruned", "change"):
        table.add_column(column, justify="right")
    d = record["denoiser"]
    table.add_row("denoiser forward", f"{d['dense']['median_ms']:.2f}", f"{d['pruned']['median_ms']:.2f}", f"{d['speedup']:.2f}×")
    table.add_row("parameters", _human(record["params"]["dense"]), _human(record["params"]["pruned"]), f"{100 * (record['params']['pruned'] / record['params']['dense'] - 1):+.2f}%")
    table.add_row("FLOPs per forward", _human(record["flops"]["dense"]), _human(record["flops"]["pruned"]), f"{100 * (record['flops']['pruned'] / record['flops']['dense'] - 1):+.2f}%")
    peak = record["peak_memory_bytes"]
    if peak["dense"] is not None:
        table.add_row("peak memory", _human(peak["dense"], "B"), _human(peak["pruned"], "B"), f"{100 * (peak['pruned'] / peak['dense'] - 1):+.2f}%")
    speedups = [b["speedup"] for b in record["blocks"]]
    if speedups:
        table.add_row("blocks (median speed-up)", "", "", f"{sorted(speedups)[len(speedups) // 2]:.2f}×")
    print_table(table)
    console.print(f"wrote {folder / BENCH_FILE}")


class ImageProgress(Bars):
    """Image generation progress of ``eval`` on stderr."""

    def __call__(self, which: str, done: int, total: int) -> None:
        self.update(f"{which} images", done, total)


@recipes_app.command("list")
@reports_errors
def recipes_list(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """Every shipped recipe, with its method and ratio."""
    from obsdiff_hub.zoo.recipes import load_recipe, recipe_names

    recipes = [load_recipe(name) for name in recipe_names()]
    if as_json:
        print_json([_recipe_json(r) for r in recipes])
        return
    table = Table()
    for column in ("name", "version", "base model", "granularity", "ratio", "blocks"):
        table.add_column(column, no_wrap=True)
    for r in recipes:
        table.add_row(r.name, str(r.version), r.base_model.repo_id, r.prune.granularity, r.prune.ratio_label, str(r.prune.blocks or "all"))
    print_table(table)


def _recipe_json(recipe: Any) -> dict[str, Any]:
    return {"name": recipe.name, "version": recipe.version, "sha256": recipe.sha256, "recipe": recipe.model_dump(mode="json")}


@recipes_app.command("show")
@reports_errors
def recipes_show(
    name: str = typer.Argument(..., help="Recipe name or path."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Print a recipe as YAML with its identity (version and sha256)."""
    from obsdiff_hub.zoo.recipes import load_recipe

    r = load_recipe(name)
    if as_json:
        print_json(_recipe_json(r))
        return
    typer.echo(f"# {r.name} v{r.version} sha256 {r.sha256}")
    typer.echo(r.to_yaml(), nl=False)


@app.command()
@reports_errors
def plan(
    recipe: str = typer.Option(..., "--recipe", "-r", help="Recipe name or path."),
    resolution: Optional[int] = typer.Option(None, help="Image resolution for the FLOP count (default: 1024, or a built-in model's own)."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Parameters and FLOPs before/after a recipe, offline (from the shipped public config)."""
    from obsdiff_hub.zoo.recipes import load_recipe
    from obsdiff_hub.zoo.runs import plan_recipe

    if resolution is not None and resolution <= 0:
        raise ValueError(f"--resolution must be positive, got {resolution}")
    result = plan_recipe(load_recipe(recipe), resolution)
    if as_json:
        print_json(result.to_dict())
        return
    table = Table(title=f"{recipe} (FLOPs: {result.convention}, {result.resolution}²)")
    for column in ("", "dense", "pruned", "change"):
        table.add_column(column, justify="right")
    table.add_row("parameters", _human(result.params_before), _human(result.params_after), f"{100 * (result.params_after / result.params_before - 1):+.2f}%")
    if result.zeroed_weights:
        nonzero = result.params_after - result.zeroed_weights
        table.add_row("non-zero parameters", _human(result.params_before), _human(nonzero), f"{100 * (nonzero / result.params_before - 1):+.2f}%")
    table.add_row("FLOPs (dense kernels)", _human(result.flops_before), _human(result.flops_after), f"{-100 * result.flop_reduction + 0.0:+.2f}%")
    table.add_row("heads removed", "", str(result.heads_removed), "")
    table.add_row("FFN neurons removed", "", str(result.neurons_removed), "")
    print_table(table)


@app.command()
@reports_errors
def inspect(
    source: str = typer.Argument(..., help="Checkpoint directory or Hub repo id."),
    revision: Optional[str] = typer.Option(None, help="Hub revision."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Class (and how to load it), shapes per block, sparsity and provenance of a checkpoint."""
    from obsdiff_hub.checkpoints.inspection import inspect_checkpoint

    info = inspect_checkpoint(source, revision=revision)
    if as_json:
        print_json(info)
        return
    console.print(f"[bold]{info['path']}[/bold]  {info['class']}  (load with {info['load_with']})")
    table = Table(title="provenance")
    table.add_column("field")
    table.add_column("value")
    for key, value in sorted(info["provenance"].items()):
        table.add_row(key, value)
    print_table(table)
    if info["structure"]:
        table = Table(title="pruned shapes")
        for column in ("module", "dense", "now"):
            table.add_column(column)
        for module, (dense, now) in info["structure"].items():
            table.add_row(module, str(dense), str(now))
        print_table(table)
    console.print(f"zero fraction of attention/FFN weights: {info['sparsity']:.4f} over {info['targeted_weights']} tensors")


@app.command()
@reports_errors
def generate(
    model: str = typer.Option(..., help="Pipeline directory, Hub repo id, or builtin:NAME."),
    prompt: list[str] = typer.Option(..., help="Prompt (repeat for several)."),
    out: Path = typer.Option(Path("samples.png"), help="Output PNG."),
    compare: Optional[str] = typer.Option(None, help="Dense base pipeline: write a dense (top) vs pruned (bottom) grid."),
    seed: int = typer.Option(0, help="Seed of the first image; image i uses seed + i."),
    steps: int = typer.Option(25, help="Sampling steps."),
    guidance: Optional[float] = typer.Option(None, help="Guidance scale (default: the pipeline's)."),
    resolution: Optional[int] = typer.Option(None, help="Height and width."),
    device: Optional[str] = typer.Option(None, help="cpu, cuda, cuda:N (default: cuda if available)."),
) -> None:
    """Sample images with fixed seeds (optionally side by side with the dense model)."""
    from obsdiff_hub.zoo.runs import parse_device
    from obsdiff_hub.zoo.sampling import generate_images, image_grid

    if steps < 1:
        raise ValueError(f"--steps must be at least 1, got {steps}")
    run_device = str(parse_device(device))
    kwargs = dict(seed=seed, steps=steps, guidance=guidance, resolution=resolution, device=run_device)
    rows = [generate_images(compare, prompt, **kwargs)] if compare else []
    rows.append(generate_images(model, prompt, **kwargs))
    image_grid(rows, row_labels=["dense", "pruned"] if compare else None).save(out)
    console.print(f"wrote {out}")


@app.command("convert-legacy")
@reports_errors
def convert_legacy(
    path: Path = typer.Argument(..., help="Reference project's whole-module .pth file."),
    out: Path = typer.Option(..., help="Output directory (safetensors + config)."),
    overwrite: bool = typer.Option(False, help="Replace an earlier output of this tool."),
) -> None:
    """Convert a legacy pickle into safetensors without executing anything in it."""
    from obsdiff_hub import convert_legacy as convert

    if not path.is_file():
        raise ValueError(f"{path} is not a file")
    model = convert(path, out, overwrite=overwrite)
    console.print(f"converted {path} → {out} ({type(model).__name__})")


@app.command()
@reports_errors
def push(
    directory: Path = typer.Argument(..., help="Output directory of `obsdiff-hub prune`."),
    repo_id: str = typer.Option(..., "--repo-id", help="NAMESPACE/NAME on the Hub."),
    private: bool = typer.Option(False, help="Create the repo private."),
    branch: Optional[str] = typer.Option(None, help="Push to this branch (created if needed)."),
    tag: Optional[str] = typer.Option(None, help="Tag for the commit (default: RECIPE-vVERSION)."),
    commit_message: Optional[str] = typer.Option(None, help="Commit message."),
    token: Optional[str] = typer.Option(None, help="Hub token (default: HF_TOKEN or `hf auth login`). Never printed."),
    endpoint: Optional[str] = typer.Option(None, help="Hub endpoint (default: HF_ENDPOINT or huggingface.co)."),
) -> None:
    """Publish a pruned checkpoint: card, recipe, report, manifest and weights in one tagged commit."""
    from obsdiff_hub.zoo.hub import push as push_dir

    result = push_dir(directory, repo_id, private=private, branch=branch, tag=tag, commit_message=commit_message, token=token, endpoint=endpoint)
    console.print(f"pushed {directory} to {repo_id} at {result['commit'][:12]} (tag {result['tag']})")


@app.command()
@reports_errors
def pull(
    repo_id: str = typer.Argument(..., help="NAMESPACE/NAME on the Hub."),
    revision: Optional[str] = typer.Option(None, help="Branch, tag or commit sha."),
    local_dir: Optional[Path] = typer.Option(None, help="Download here instead of the Hub cache."),
    token: Optional[str] = typer.Option(None, help="Hub token (default: HF_TOKEN or the login cache)."),
    endpoint: Optional[str] = typer.Option(None, help="Hub endpoint (default: HF_ENDPOINT)."),
    verify: bool = typer.Option(True, help="Check every weight file against the push-time sha256 manifest."),
) -> None:
    """Download a published checkpoint and verify it."""
    from obsdiff_hub.zoo.hub import pull as pull_repo

    path = pull_repo(repo_id, revision=revision, local_dir=local_dir, token=token, endpoint=endpoint, verify=verify)
    console.print(f"{repo_id} → {path}" + (" (verified)" if verify else ""))


@app.command()
@reports_errors
def card(
    directory: Path = typer.Argument(..., help="Output directory of `obsdiff-hub prune`."),
    repo_id: Optional[str] = typer.Option(None, "--repo-id", help="Repo id used in the usage snippets."),
) -> None:
    """Render the model card locally (writes DIR/README.md) for review before pushing."""
    from obsdiff_hub.checkpoints.outputs import add_owned, write_atomic
    from obsdiff_hub.zoo.cards import card_for_folder

    write_atomic(directory / "README.md", card_for_folder(directory, repo_id))
    add_owned(directory, ["README.md"])
    console.print(f"wrote {directory / 'README.md'}")


def main() -> None:
    """Entry point: usage errors as one line too (exit 2), like every other user error."""
    from typer.exceptions import TyperException

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # import-time notices about optional backends
    try:
        code = app(standalone_mode=False)  # the exit code of typer.Exit is returned here
    except TyperException as error:  # usage errors of the command line itself
        if type(error).__name__ == "NoArgsIsHelpError":
            error.show()  # type: ignore[attr-defined]
        else:
            typer.echo(f"error: {error.format_message()} (see --help)", err=True)
        sys.exit(error.exit_code)
    except typer.Exit as done:
        sys.exit(done.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        typer.echo("interrupted", err=True)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
