"""The ``obsdiff-hub`` command line: parses arguments, calls the library, prints results."""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any, Callable, Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(name="obsdiff-hub", help="Prune diffusion models with OBS-Diff and publish them as diffusers checkpoints.", no_args_is_help=True)
recipes_app = typer.Typer(help="List and show the versioned pruning recipes.", no_args_is_help=True)
app.add_typer(recipes_app, name="recipes")

console = Console()
_state = {"debug": False}


def _version(value: bool) -> None:
    if value:
        from obsdiff_hub import __version__

        console.print(f"obsdiff-hub {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    _state["debug"] = debug


def reports_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Known failures become one line on stderr and exit code 2 (tracebacks only with --debug)."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except KeyboardInterrupt:
            typer.echo("interrupted: progress is saved after each package; rerun with --resume", err=True)
            raise typer.Exit(130) from None
        except (ValueError, OSError, ImportError) as error:
            if _state["debug"]:
                raise
            message = str(error).splitlines()[0] if str(error) else type(error).__name__
            typer.echo(f"error: {message}", err=True)  # one line, never wrapped
            raise typer.Exit(2) from None

    return wrapper


def _human(n: float, unit: str = "") -> str:
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {suffix}{unit}"
    return f"{n:.0f} {unit}".strip()


@app.command()
@reports_errors
def prune(
    recipe: str = typer.Option(..., "--recipe", "-r", help="Recipe name (see `recipes list`) or path to a recipe YAML."),
    model: Optional[str] = typer.Option(None, help="Base model repo id or local dir (default: the recipe's)."),
    revision: Optional[str] = typer.Option(None, help="Base model revision (default: the recipe's)."),
    out: Optional[Path] = typer.Option(None, help="Output directory (default: ./RECIPE)."),
    device: Optional[str] = typer.Option(None, help="cpu, cuda, cuda:1 ... (default: cuda if available)."),
    dtype: Optional[str] = typer.Option(None, help="Calibration dtype: float32, float16, bfloat16."),
    prompts: Optional[Path] = typer.Option(None, help="Calibration prompts: .txt, .jsonl, .csv or .tsv."),
    num_prompts: Optional[int] = typer.Option(None, min=1, help="Number of calibration prompts."),
    packages: Optional[int] = typer.Option(None, min=1, help="Module packages P (overrides the recipe)."),
    resume: bool = typer.Option(False, help="Continue an interrupted run from its last finished package."),
    overwrite: bool = typer.Option(False, help="Replace an existing output directory."),
    quiet: bool = typer.Option(False, help="No progress bars."),
) -> None:
    """Prune a model with a recipe and write a loadable checkpoint, its recipe, report and card."""
    from obsdiff_hub.recipes import load_recipe
    from obsdiff_hub.run import DTYPES, run_recipe

    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    loaded = load_recipe(recipe)
    target = out or Path(loaded.name)
    result = run_recipe(
        loaded,
        target,
        model=model,
        revision=revision,
        device=device,
        dtype=dtype,
        prompts_file=str(prompts) if prompts else None,
        num_prompts=num_prompts,
        packages=packages,
        resume=resume,
        overwrite=overwrite,
        progress=not quiet,
    )
    report = result.result.report
    table = Table(title=f"{loaded.name} v{loaded.version} → {target}")
    table.add_column("")
    table.add_column("value", justify="right")
    table.add_row("parameters", f"{_human(report.params_before)} → {_human(report.params_after)}")
    table.add_row("mean sparsity (targeted layers)", f"{report.mean_sparsity:.3f}")
    table.add_row("mean relative reconstruction error", f"{report.mean_relative_error:.4g}")
    if result.plan and result.plan.get("flops_before"):
        table.add_row("FLOPs per forward (1024², batch 1)", f"{_human(result.plan['flops_before'])} → {_human(result.plan['flops_after'])}")
    for stage, seconds in report.stages.items():
        table.add_row(stage.removesuffix("_s").replace("_", " "), f"{seconds:.2f} s")
    table.add_row("peak memory", _human(report.peak_memory_bytes, "B"))
    console.print(table)
    if result.metrics:
        scores = Table(title="quality (reloaded from disk, same seeds as dense)")
        for column in ("metric", "dense", "pruned"):
            scores.add_column(column)
        for m in result.metrics:
            scores.add_row(m["name"], m["dense"], m["pruned"])
        console.print(scores)
        console.print(f"dense (top) vs pruned (bottom) grid: {target / 'samples.png'}")


@recipes_app.command("list")
@reports_errors
def recipes_list() -> None:
    """Every shipped recipe, with its method and ratio."""
    from obsdiff_hub.recipes import load_recipe, recipe_names

    table = Table()
    for column in ("name", "version", "base model", "granularity", "ratio", "blocks"):
        table.add_column(column)
    for name in recipe_names():
        r = load_recipe(name)
        table.add_row(r.name, str(r.version), r.base_model.repo_id, r.prune.granularity, r.prune_config().ratio_label, str(r.prune.blocks or "all"))
    console.print(table)


@recipes_app.command("show")
@reports_errors
def recipes_show(name: str = typer.Argument(..., help="Recipe name or path.")) -> None:
    """Print a recipe as YAML with its identity (version and sha256)."""
    from obsdiff_hub.recipes import load_recipe

    r = load_recipe(name)
    console.print(f"# {r.name} v{r.version} sha256 {r.sha256}", highlight=False)
    console.print(r.to_yaml(), highlight=False, markup=False)


@app.command()
@reports_errors
def plan(
    recipe: str = typer.Option(..., "--recipe", "-r", help="Recipe name or path."),
    resolution: int = typer.Option(1024, help="Image resolution for the FLOP count."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Parameters and FLOPs before/after a recipe, offline (from the shipped public config)."""
    from obsdiff_hub.recipes import load_recipe
    from obsdiff_hub.run import plan_recipe

    result = plan_recipe(load_recipe(recipe), resolution)
    if as_json:
        console.print_json(json.dumps(result.to_dict()))
        return
    table = Table(title=f"{recipe} (FLOPs: {result.convention}, {resolution}²)")
    for column in ("", "dense", "pruned", "change"):
        table.add_column(column, justify="right")
    table.add_row("parameters", f"{result.params_before / 1e9:.2f} B", f"{result.params_after / 1e9:.2f} B", f"{100 * (result.params_after / result.params_before - 1):+.2f}%")
    table.add_row("FLOPs", _human(result.flops_before), _human(result.flops_after), f"{-100 * result.flop_reduction:+.2f}%")
    table.add_row("heads removed", "", str(result.heads_removed), "")
    table.add_row("FFN neurons removed", "", str(result.neurons_removed), "")
    console.print(table)


@app.command()
@reports_errors
def inspect(
    source: str = typer.Argument(..., help="Checkpoint directory or Hub repo id."),
    revision: Optional[str] = typer.Option(None, help="Hub revision."),
) -> None:
    """Shapes per block, sparsity and provenance of a pruned checkpoint."""
    from obsdiff_hub.inspection import inspect_checkpoint

    info = inspect_checkpoint(source, revision=revision)
    console.print(f"[bold]{info['path']}[/bold]  {info['class']}")
    table = Table(title="provenance")
    table.add_column("field")
    table.add_column("value")
    for key, value in sorted(info["provenance"].items()):
        table.add_row(key, value)
    console.print(table)
    table = Table(title="pruned shapes")
    for column in ("module", "dense", "now"):
        table.add_column(column)
    for module, (dense, now) in info["structure"].items():
        table.add_row(module, str(dense), str(now))
    if info["structure"]:
        console.print(table)
    console.print(f"zero fraction of attention/FFN weights: {info['sparsity']:.4f} over {info['targeted_weights']} tensors")


@app.command()
@reports_errors
def generate(
    model: str = typer.Option(..., help="Pipeline directory or Hub repo id."),
    prompt: list[str] = typer.Option(..., help="Prompt (repeat for several)."),
    out: Path = typer.Option(Path("samples.png"), help="Output PNG."),
    compare: Optional[str] = typer.Option(None, help="Dense base pipeline: write a dense (top) vs pruned (bottom) grid."),
    seed: int = typer.Option(0, help="Seed of the first image; image i uses seed + i."),
    steps: int = typer.Option(25, min=1),
    guidance: Optional[float] = typer.Option(None, help="Guidance scale (default: the pipeline's)."),
    resolution: Optional[int] = typer.Option(None, help="Height and width."),
    device: Optional[str] = typer.Option(None),
) -> None:
    """Sample images with fixed seeds (optionally side by side with the dense model)."""
    from obsdiff_hub.sampling import generate_images, image_grid

    kwargs = dict(seed=seed, steps=steps, guidance=guidance, resolution=resolution, device=device)
    rows = [generate_images(compare, prompt, **kwargs)] if compare else []
    rows.append(generate_images(model, prompt, **kwargs))
    image_grid(rows).save(out)
    console.print(f"wrote {out}")


@app.command("convert-legacy")
@reports_errors
def convert_legacy(
    path: Path = typer.Argument(..., help="Reference project's whole-module .pth file."),
    out: Path = typer.Option(..., help="Output directory (safetensors + config)."),
) -> None:
    """Convert a legacy pickle into safetensors without executing untrusted code."""
    from obsdiff_hub import convert_legacy as convert

    model = convert(path, out)
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
    from obsdiff_hub.hub import push as push_dir

    result = push_dir(directory, repo_id, private=private, branch=branch, tag=tag, commit_message=commit_message, token=token, endpoint=endpoint)
    console.print(f"pushed {directory} to {repo_id} at {result['commit'][:12]} (tag {result['tag']})", highlight=False)


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
    from obsdiff_hub.hub import pull as pull_repo

    path = pull_repo(repo_id, revision=revision, local_dir=local_dir, token=token, endpoint=endpoint, verify=verify)
    console.print(f"{repo_id} → {path}" + (" (verified)" if verify else ""), highlight=False)


@app.command()
@reports_errors
def card(
    directory: Path = typer.Argument(..., help="Output directory of `obsdiff-hub prune`."),
    repo_id: Optional[str] = typer.Option(None, "--repo-id", help="Repo id used in the usage snippets."),
) -> None:
    """Render the model card locally (writes DIR/README.md) for review before pushing."""
    from obsdiff_hub.hub import render_card_for

    content = render_card_for(directory, repo_id)
    (directory / "README.md").write_text(content, encoding="utf-8")
    console.print(f"wrote {directory / 'README.md'}")


def main() -> None:
    # transformers warns at import about optional vision backends this tool never uses.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    app()


if __name__ == "__main__":
    main()
