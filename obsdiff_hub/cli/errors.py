"""How a failure reaches the person at the terminal: one line on stderr, and an exit code that
tells their mistake from ours.

- An :class:`~obsdiff_hub.errors.ObsDiffError` (bad input, a bad checkpoint, the Hub, this
  machine) is the user's to fix: ``error: <what and how>``, exit 2. Parameters the library names
  in backquotes become this command's flags (`` `overwrite` `` → ``--overwrite``).
- Running out of memory is the machine's limit: ``error: out of memory (...)``, exit 2.
- Anything else is a bug in obsdiff-hub: ``internal error: <type>: <message>`` and how to
  report it, exit 1.

``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import functools
import inspect
import re
import sys
import typing
from typing import Any, Callable

import typer
from typer.models import ArgumentInfo, OptionInfo

from ..errors import ObsDiffError, first_line
from .lazy import library

verbosity = library("verbosity")

USER_ERROR = 2
INTERNAL_ERROR = 1
INTERRUPTED = 130
_PARAMETER = re.compile(r"`([A-Za-z_][A-Za-z0-9_.]*)`")

settings = {"debug": False, "verbose": False}


def flags_of(command: Callable[..., Any]) -> dict[str, str]:
    """Parameter name → how the command line spells it (``out`` → ``--out``, ``directory`` → ``DIRECTORY``)."""
    hints = typing.get_type_hints(command, include_extras=True)
    flags = {}
    for name, parameter in inspect.signature(command).parameters.items():
        infos = [parameter.default, *getattr(hints.get(name), "__metadata__", ())]
        info = next((i for i in infos if isinstance(i, (OptionInfo, ArgumentInfo))), None)
        if isinstance(info, ArgumentInfo):
            flags[name] = name.upper()
        elif isinstance(info, OptionInfo):
            # inside Annotated, typer reads a leading "--flag" given as the default as a declaration
            decls = [*([info.default] if isinstance(info.default, str) else []), *(info.param_decls or ())]
            declared = [d for d in decls if d.startswith("--")]
            flags[name] = declared[0] if declared else "--" + name.replace("_", "-")
    return flags


def with_flags(message: str, flags: dict[str, str]) -> str:
    """``message`` with every backquoted parameter the command takes replaced by its flag; any other
    backquoted text (recipe fields, library-only arguments, another library's words) stays as it is."""
    return _PARAMETER.sub(lambda match: flags.get(match[1], match[0]), message)


def explain(error: BaseException, flags: dict[str, str]) -> tuple[str, int]:
    """The line to print and the exit code for an exception that ended a command."""
    if isinstance(error, ObsDiffError):
        return f"error: {with_flags(first_line(error), flags)}", USER_ERROR
    torch = sys.modules.get("torch")  # imported by then if the failure came from it
    if isinstance(error, MemoryError) or (torch is not None and isinstance(error, torch.OutOfMemoryError)):
        return f"error: out of memory ({first_line(error)})", USER_ERROR
    return (
        f"internal error: {type(error).__name__}: {first_line(error).rstrip('.')}. This is a bug in obsdiff-hub; "
        "please report it with the traceback that --debug prints",
        INTERNAL_ERROR,
    )


def reports_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Run a command; any failure becomes one line on stderr and its exit code (tracebacks only with ``--debug``)."""

    flags = flags_of(command)

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            if not settings["verbose"]:
                verbosity.quiet_libraries()
            return command(*args, **kwargs)
        except (typer.Exit, typer.Abort, typer.TyperException):  # the command line's own control flow and usage errors
            raise
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(INTERRUPTED) from None
        except Exception as error:
            if settings["debug"]:
                raise
            line, code = explain(error, flags)
            typer.echo(line, err=True)  # one line, never wrapped
            raise typer.Exit(code) from None

    return wrapper
