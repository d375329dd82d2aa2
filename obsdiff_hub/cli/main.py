"""The ``obsdiff-hub`` application: global options, the commands, and the entry point.

Nothing here imports torch or diffusers: the commands bind the library lazily (``lazy.py``), so
``--help`` and usage errors answer at once (``benchmarks/startup.py`` measures it).
"""

from __future__ import annotations

import os
import sys
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from .._version import __version__
from . import bench, convert, evaluate, export, generate, inspect, prune, publish, recipes, recover
from .display import Command
from .errors import INTERRUPTED, reports_errors, settings

GLOBAL_FLAGS = ("--debug", "--verbose")


class Commands(TyperGroup):
    """The command group; ``--debug`` and ``--verbose`` are accepted after the command too."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        cut = args.index("--") if "--" in args else len(args)
        hoisted = [a for a in args[:cut] if a in GLOBAL_FLAGS]
        rest = [a for a in args[:cut] if a not in GLOBAL_FLAGS] + args[cut:]
        return super().parse_args(ctx, hoisted + rest)


app = typer.Typer(
    name="obsdiff-hub",
    cls=Commands,
    help="Prune diffusion models with OBS-Diff and publish them as diffusers checkpoints.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(recipes.recipes_app, name="recipes")
for name, command in (
    ("prune", prune.prune),
    ("recover", recover.recover),
    ("eval", evaluate.evaluate),
    ("bench", bench.bench),
    ("plan", recipes.plan),
    ("inspect", inspect.inspect),
    ("generate", generate.generate),
    ("convert-legacy", convert.convert_legacy),
    ("export", export.export),
    ("push", publish.push),
    ("pull", publish.pull),
    ("card", publish.card),
):
    app.command(name, cls=Command)(reports_errors(command))


def _version(value: bool) -> None:
    if value:
        typer.echo(f"obsdiff-hub {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks (anywhere on the line).")] = False,
    verbose: Annotated[
        bool, typer.Option("--verbose", help="Show the libraries' own logs, bars and warnings (anywhere on the line).")
    ] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    settings["debug"] = debug
    settings["verbose"] = verbose
    if not verbose:  # before the libraries are imported: transformers reads it then
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def main() -> None:
    """Entry point: usage errors as one line too (exit 2), like every other user error."""
    try:
        code = app(standalone_mode=False)  # the exit code of typer.Exit is returned here
    except typer.TyperException as error:  # usage errors of the command line itself
        if type(error).__name__ == "NoArgsIsHelpError":
            error.show()  # type: ignore[attr-defined]
        else:
            typer.echo(f"error: {error.format_message()} (see --help)", err=True)  # type: ignore[attr-defined]
        sys.exit(getattr(error, "exit_code", 2))
    except typer.Exit as done:
        sys.exit(done.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        typer.echo("interrupted", err=True)
        sys.exit(INTERRUPTED)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
