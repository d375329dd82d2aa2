"""Option types every command spells the same way, and the parsing of values typer cannot type."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import typer
import yaml

from ..errors import InputError
from ..pruning.precision import DTYPES

RepoIdArg = Annotated[str, typer.Argument(help="NAMESPACE/NAME on the Hub.")]
RevisionOpt = Annotated[Optional[str], typer.Option(help="Branch, tag or commit sha.")]
TokenOpt = Annotated[Optional[str], typer.Option(help="Hub token (default: HF_TOKEN or `hf auth login`). Never printed.")]
EndpointOpt = Annotated[Optional[str], typer.Option(help="Hub endpoint (default: HF_ENDPOINT or huggingface.co).")]
DeviceOpt = Annotated[Optional[str], typer.Option(help="cpu, cuda, cuda:N (default: cuda if available).")]
QuietOpt = Annotated[bool, typer.Option(help="Print only errors and the path written.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]
CheckpointArg = Annotated[Path, typer.Argument(help="Output directory of `obsdiff-hub prune`.")]


def dtype_option(value: str | None) -> str | None:
    """``--dtype``: one of float32, float16, bfloat16 (or unset)."""
    if value is not None and value not in DTYPES:
        raise InputError(f"--dtype must be float32, float16 or bfloat16, got {value!r}")
    return value


def packages_option(value: str | None) -> int | Literal["auto"] | None:
    """``--packages``: a count, or ``auto``."""
    if value is None or value == "auto":
        return value  # type: ignore[return-value]
    if not value.isdigit() or int(value) < 1:
        raise InputError(f"--packages must be a positive count or auto, got {value!r}")
    return int(value)


def assignments(items: list[str]) -> dict[str, Any]:
    """``--set KEY=VALUE`` pairs (``prune.sparsity=0.4``), values read as YAML scalars or lists."""
    changes: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key or not all(part.isidentifier() for part in key.split(".")):
            raise InputError(f"--set {item!r}: use SECTION.FIELD=VALUE, e.g. prune.sparsity=0.4")
        try:
            changes[key] = yaml.safe_load(raw) if raw else None
        except yaml.YAMLError as error:
            raise InputError(f"--set {item!r}: the value is not valid YAML ({str(error).splitlines()[0]})") from None
    return changes


def positive(value: int | None, flag: str) -> int | None:
    if value is not None and value <= 0:
        raise InputError(f"{flag} must be positive, got {value}")
    return value
