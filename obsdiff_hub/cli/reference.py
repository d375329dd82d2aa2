"""The command reference (``cli/README.md``), generated from the command itself so it cannot drift.

python -m obsdiff_hub.cli.reference > cli/README.md
"""

from __future__ import annotations

from typing import Any

import typer

from .main import app

HEADER = (
    "# `obsdiff-hub` command reference\n\n"
    "Generated from the command itself: `python -m obsdiff_hub.cli.reference > cli/README.md`\n"
    "(`tests/test_cli_reference.py` fails when this file is out of date). The code lives in\n"
    "`obsdiff_hub/cli/`, one module per command or group.\n"
)


def _option_line(param: Any) -> str:
    value = f" {param.metavar}" if param.param_type_name == "option" and not param.is_flag and param.metavar else ""
    names = ", ".join(f"`{o}{value}`" for o in [*param.opts, *param.secondary_opts])
    if param.param_type_name == "argument":
        names = f"`{param.metavar or param.name.upper()}`"
    text = " ".join((getattr(param, "help", None) or "").split())
    if param.required:
        text += " (required)"
    elif param.param_type_name == "option" and not param.is_flag and param.default not in (None, [], ()):
        text += f" (default: `{param.default}`)"
    return f"- {names}: {text}".rstrip()


def _section(command: Any, path: list[str]) -> list[str]:
    lines = [f"## `{' '.join(path)}`", ""]
    for paragraph in (command.help or "").replace("\b\n", "").split("\n\n"):
        text = " ".join(paragraph.split())
        if text.startswith("Example: "):
            lines += ["```console", "$ " + text.removeprefix("Example: "), "```", ""]
        elif text:
            lines += [text, ""]
    params = [
        p
        for p in command.params
        if p.name not in ("help", "install_completion", "show_completion") and not getattr(p, "hidden", False)
    ]
    if params:
        lines += [_option_line(p) for p in params] + [""]
    for name, sub in getattr(command, "commands", {}).items():
        lines += _section(sub, [*path, name])
    return lines


def reference() -> str:
    """The whole reference as Markdown."""
    return "\n".join([HEADER, *_section(typer.main.get_command(app), ["obsdiff-hub"])]).rstrip() + "\n"


if __name__ == "__main__":
    print(reference(), end="")
