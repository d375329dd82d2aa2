"""The options every command spells the same way, and the parsing of values typer cannot type.

One vocabulary: the checkpoint a command reads is its first argument (``--model`` still works,
with a note); ``--base`` is always the dense base; options that mirror diffusers' arguments use
its names (``--guidance-scale``, ``--num-inference-steps``), the old spellings kept as aliases.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional

import typer
import yaml

from ..dtypes import DTYPE_NAMES
from ..errors import InputError

ModelArg = Annotated[
    Optional[str],
    typer.Argument(
        metavar="MODEL", help="The pruned checkpoint: a folder this tool wrote or a Hub repo id.", show_default=False
    ),
]
ModelAlias = Annotated[Optional[str], typer.Option("--model", hidden=True, help="Old spelling of the MODEL argument.")]
BaseOpt = Annotated[
    Optional[str],
    typer.Option(
        "--base",
        metavar="BASE",
        help="The dense base: folder, Hub repo id or builtin:NAME (default: the checkpoint's provenance).",
    ),
]
DeviceOpt = Annotated[
    Optional[str], typer.Option("--device", metavar="DEVICE", help="cpu, cuda or cuda:N (default: cuda if available).")
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Print only errors and the path written.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON (for scripts).")]
OverwriteOpt = Annotated[
    bool, typer.Option("--overwrite", help="Replace an earlier output of this tool (never a folder or file of yours).")
]
RevisionOpt = Annotated[
    Optional[str], typer.Option("--revision", metavar="REVISION", help="Branch, tag or commit sha.")
]
TokenOpt = Annotated[
    Optional[str],
    typer.Option("--token", metavar="TOKEN", help="Hub token (default: HF_TOKEN or `hf auth login`). Never printed."),
]
EndpointOpt = Annotated[
    Optional[str],
    typer.Option("--endpoint", metavar="URL", help="Hub endpoint (default: HF_ENDPOINT or huggingface.co)."),
]
ResolutionOpt = Annotated[
    Optional[int],
    typer.Option("--resolution", metavar="PIXELS", help="Image height and width (default: the pipeline's own)."),
]
GuidanceOpt = Annotated[
    Optional[float],
    typer.Option(
        "--guidance-scale", metavar="FLOAT", help="Classifier-free guidance scale (default: the pipeline's)."
    ),
]
GuidanceAlias = Annotated[
    Optional[float], typer.Option("--guidance", hidden=True, help="Old spelling of --guidance-scale.")
]
StepsOpt = Annotated[Optional[int], typer.Option("--num-inference-steps", metavar="INT", help="Sampling steps.")]
StepsAlias = Annotated[
    Optional[int], typer.Option("--steps", hidden=True, help="Old spelling of --num-inference-steps.")
]
SeedOpt = Annotated[
    Optional[int], typer.Option("--seed", metavar="INT", help="Image i uses seed + i, for every model compared.")
]


def dtype_option(value: str | None, flag: str = "--dtype") -> str | None:
    """A dtype name (``float32``, ``float16``, ``bfloat16``) or unset."""
    if value is not None and value not in DTYPE_NAMES:
        raise InputError(f"{flag} must be float32, float16 or bfloat16, got {value!r}")
    return value


DtypeOpt = Annotated[Optional[str], typer.Option("--dtype", metavar="DTYPE", help="float32, float16 or bfloat16.")]


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
            reason = str(error).splitlines()[0]
            raise InputError(f"--set {item[:80]!r}: the value is not valid YAML ({reason})") from None
        except RecursionError:
            raise InputError(f"--set {key}: the value is nested too deeply to be a setting") from None
    return changes


def positive(value: int | None, flag: str) -> int | None:
    if value is not None and value <= 0:
        raise InputError(f"{flag} must be positive, got {value}")
    return value


def note(message: str) -> None:
    """One line on stderr that is not an error (an old spelling, a default that was chosen)."""
    typer.echo(f"note: {message}", err=True)


def renamed(value: Any, old_value: Any, flag: str, old_flag: str) -> Any:
    """The value of ``flag``, or of its old spelling ``old_flag`` (with a note); not both."""
    if old_value is None:
        return value
    if value is not None:
        raise InputError(f"{flag} and {old_flag} are the same option; give it once")
    note(f"{old_flag} is now {flag}")
    return old_value


def checkpoint(argument: str | None, alias: str | None, command: str) -> str:
    """The checkpoint a command reads: its first argument, or the old ``--model`` (with a note)."""
    if alias is not None:
        if argument is not None:
            raise InputError("give the checkpoint once: as the first argument (--model is its old spelling)")
        note(f"the checkpoint is now the first argument: obsdiff-hub {command} {alias}")
        return alias
    if argument is None:
        raise InputError(f"give the checkpoint: obsdiff-hub {command} MODEL (a folder or a Hub repo id)")
    return argument


OffloadOpt = Annotated[
    Optional[str],
    typer.Option(
        "--offload",
        metavar="none|blocks|blocks-to-disk",
        help="Keep the blocks off the device: in host memory (blocks) or in files on disk (blocks-to-disk).",
    ),
]
