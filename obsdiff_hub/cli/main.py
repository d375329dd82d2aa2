"""The ``obsdiff-hub`` application: global options, the commands, and the entry point."""

from __future__ import annotations

import sys
import warnings
from typing import Annotated

import diffusers
import transformers
import typer
from huggingface_hub.utils import disable_progress_bars
from huggingface_hub.utils import logging as hub_logging

from .._version import __version__
from . import bench, convert, evaluate, generate, inspect, prune, publish, recipes
from .errors import INTERRUPTED, reports_errors, settings

app = typer.Typer(
    name="obsdiff-hub",
    help="Prune diffusion models with OBS-Diff and publish them as diffusers checkpoints.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(recipes.recipes_app, name="recipes")
for name, command in (
    ("prune", prune.prune),
    ("eval", evaluate.evaluate),
    ("bench", bench.bench),
    ("plan", recipes.plan),
    ("inspect", inspect.inspect),
    ("generate", generate.generate),
    ("convert-legacy", convert.convert_legacy),
    ("push", publish.push),
    ("pull", publish.pull),
    ("card", publish.card),
):
    app.command(name)(reports_errors(command))


def quiet_libraries() -> None:
    """No tqdm bars, info logs or known deprecation warnings from diffusers, transformers and the Hub client."""
    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    disable_progress_bars()
    hub_logging.set_verbosity_error()  # e.g. its retry lines: a failure ends in one error line of ours
    for category in (FutureWarning, DeprecationWarning, UserWarning):
        warnings.filterwarnings("ignore", category=category)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"obsdiff-hub {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", help="Show the libraries' own logs, bars and warnings.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")] = False,
) -> None:
    settings["debug"] = debug
    if not verbose:
        quiet_libraries()


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
