"""``obsdiff-hub recipes list|show`` and ``obsdiff-hub plan``: the zoo's recipes, and what one would do, offline."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from .display import Command, change, human, print_json, print_table
from .errors import reports_errors
from .lazy import library
from .options import JsonOpt, OffloadOpt, ResolutionOpt, positive

recipes = library("zoo.recipes")
runs = library("zoo.runs")
methods = library("pruning.methods")
solvers = library("pruning.solvers")

if TYPE_CHECKING:
    from ..zoo.recipes import Recipe

recipes_app = typer.Typer(
    help="List and show the versioned pruning recipes.", no_args_is_help=True, rich_markup_mode=None
)
RecipeOpt = Annotated[
    str, typer.Option("--recipe", "-r", metavar="RECIPE", help="A shipped recipe's name or a recipe YAML file.")
]


def recipe_record(recipe: Recipe) -> dict[str, Any]:
    return {
        "name": recipe.name,
        "version": recipe.version,
        "sha256": recipe.sha256,
        "recipe": recipe.model_dump(mode="json"),
    }


@recipes_app.command("list", cls=Command)
@reports_errors
def list_recipes(as_json: JsonOpt = False) -> None:
    """Every shipped recipe, with its method and ratio.

    \b
    Example: obsdiff-hub recipes list --json
    """
    shipped = [recipes.load_recipe(name) for name in recipes.recipe_names()]
    if as_json:
        print_json([recipe_record(r) for r in shipped])
        return
    table = Table()
    for column in ("name", "version", "base model", "granularity", "ratio", "blocks"):
        table.add_column(column, no_wrap=True)
    for r in shipped:
        table.add_row(
            r.name,
            str(r.version),
            r.base_model.repo_id,
            r.prune.granularity,
            r.prune.ratio_label,
            str(r.prune.blocks or "all"),
        )
    print_table(table)


@recipes_app.command("show", cls=Command)
@reports_errors
def show_recipe(
    name: Annotated[str, typer.Argument(metavar="RECIPE", help="A shipped recipe's name or a recipe YAML file.")],
    as_json: JsonOpt = False,
) -> None:
    """Print a recipe as YAML with its identity (version and sha256).

    \b
    Example: obsdiff-hub recipes show sdxl-30
    """
    recipe = recipes.load_recipe(name)
    if as_json:
        print_json(recipe_record(recipe))
        return
    typer.echo(f"# {recipe.name} v{recipe.version} sha256 {recipe.sha256}")
    typer.echo(recipe.to_yaml(), nl=False)


def choice_record(cls: Any) -> dict[str, Any]:
    """A registered method or solver as data: its name, where it applies, and its settings."""
    settings = {
        name: {"default": field.default, "description": field.description or ""}
        for name, field in cls.model_fields.items()
        if name != "name"
    }
    return {
        "name": cls.name_of(),
        "summary": cls.summary,
        "granularities": list(cls.granularities),
        "settings": settings,
    }


@recipes_app.command("methods", cls=Command)
@reports_errors
def list_methods(as_json: JsonOpt = False) -> None:
    """The methods (prune.method) and refining solvers (prune.solver) a recipe can name, with their settings.

    A recipe names one alone (its defaults) or with settings, e.g. solver: {name: admm, iterations: 30}.

    \b
    Example: obsdiff-hub recipes methods
    """
    kinds = {"method": list(methods.METHODS), "solver": list(solvers.SOLVERS)}
    if as_json:
        print_json({kind: [choice_record(cls) for cls in classes] for kind, classes in kinds.items()})
        return
    for kind, classes in kinds.items():
        table = Table(title=f"prune.{kind}")
        for column in ("name", "granularities", "what it does", "settings (default)"):
            table.add_column(column)
        for cls in classes:
            record = choice_record(cls)
            settings = "\n".join(f"{k} ({v['default']}): {v['description']}" for k, v in record["settings"].items())
            table.add_row(record["name"], ", ".join(record["granularities"]), record["summary"], settings or "–")
        print_table(table)


def plan(
    recipe: RecipeOpt, resolution: ResolutionOpt = None, offload: OffloadOpt = None, as_json: JsonOpt = False
) -> None:
    """Parameters and FLOPs before and after a recipe, offline (from the shipped public config).

    \b
    Example: obsdiff-hub plan -r sdxl-30
    """
    positive(resolution, "--resolution")
    loaded = recipes.load_recipe(recipe)
    if offload is not None:
        loaded = loaded.with_changes({"prune.offload": offload})
    result = runs.plan_recipe(loaded, resolution)
    if as_json:
        print_json(result.to_dict())
        return
    table = Table(title=f"{recipe} (FLOPs: {result.convention}, {result.resolution}²)")
    for column in ("", "dense", "pruned", "change"):
        table.add_column(column, justify="right")
    table.add_row(
        "parameters",
        human(result.params_before),
        human(result.params_after),
        change(result.params_before, result.params_after),
    )
    if result.zeroed_weights:
        nonzero = result.params_after - result.zeroed_weights
        table.add_row(
            "non-zero parameters", human(result.params_before), human(nonzero), change(result.params_before, nonzero)
        )
    reduction = result.flop_reduction or 0.0
    table.add_row(
        "FLOPs (dense kernels)",
        human(result.flops_before or 0),
        human(result.flops_after or 0),
        f"{-100 * reduction + 0.0:+.2f}%",
    )
    table.add_row("heads removed", "", str(result.heads_removed), "")
    table.add_row("FFN neurons removed", "", str(result.neurons_removed), "")
    if result.offload != "none":
        table.add_row(
            f"parameters on the device while calibrating (offload {result.offload})",
            human(result.resident_params),
            "",
            change(result.params_before, result.resident_params),
        )
    print_table(table)
