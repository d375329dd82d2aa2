"""Calibration prompts: the shipped sets, a local file, a file in a Hub dataset repo, or inline.

Prompt files come from outside: they are read as text only, must be regular files under a
size cap, and a file named by a recipe must lie inside the recipe's folder (a recipe from a
stranger must not make this tool read, and then publish, a file like ``~/.ssh/id_rsa``).
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Iterable, Sequence

from ..errors import InputError
from ..hub import HubClient
from ..storage import jsonio
from .config import PromptSource

BUILTIN_PROMPT_SETS = {"captions": "calibration_prompts.txt", "shapes": "shapes_prompts.txt"}
MAX_PROMPT_FILE_BYTES = 64 * 1024**2
MAX_PROMPT_CHARS = 4096  # T5's 512 tokens are about 2,000 characters; CLIP reads 77 tokens


class PromptError(InputError):
    """Prompts that cannot be read; the message names the file and the problem."""


def builtin_prompts(name: str = "captions") -> list[str]:
    """A shipped prompt set: ``captions`` (Conceptual Captions style, 240) or ``shapes`` (the embedded model's 150)."""
    if name not in BUILTIN_PROMPT_SETS:
        raise PromptError(f"unknown built-in prompt set {name!r}; choose {', '.join(BUILTIN_PROMPT_SETS)}")
    text = resources.files("obsdiff_hub").joinpath("data", BUILTIN_PROMPT_SETS[name]).read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def read_prompt_file(path: str | Path, column: str | None = None) -> list[str]:
    """``.txt`` (one per line), ``.jsonl`` (``column`` or ``prompt``/``caption``/``text``), ``.csv``/``.tsv``
    (``column``)."""
    path = Path(path)
    if not path.is_file():
        raise PromptError(f"cannot read prompt file {path}: not a regular file")
    if path.stat().st_size > MAX_PROMPT_FILE_BYTES:
        raise PromptError(f"prompt file {path} is larger than {MAX_PROMPT_FILE_BYTES >> 20} MiB; use a smaller file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise PromptError(
            f"cannot read prompt file {path}: {error.strerror if isinstance(error, OSError) else error}"
        ) from error
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        try:
            rows = list(csv.DictReader(text.splitlines(), delimiter="\t" if suffix == ".tsv" else ","))
        except csv.Error as error:
            raise PromptError(
                f"{path}: not a readable {suffix[1:]} file ({error}); a prompt is at most {MAX_PROMPT_CHARS} "
                "characters"
            ) from None
        key = column or _guess_column(rows[0].keys() if rows else [], path)
        if rows and key not in rows[0]:
            raise PromptError(f"{path}: no column {key!r}; columns are {', '.join(rows[0])}")
        prompts = [row[key] or "" for row in rows]
    elif suffix == ".jsonl":
        prompts = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = jsonio.loads(line)
            except ValueError as error:
                raise PromptError(f"{path}:{number}: not JSON ({getattr(error, 'msg', error)})") from error
            if not isinstance(record, dict):
                raise PromptError(f"{path}:{number}: each line must be a JSON object")
            key = column or _guess_column(record.keys(), path)
            if key not in record:
                raise PromptError(f"{path}:{number}: no field {key!r}")
            prompts.append(str(record[key]))
    else:
        prompts = text.splitlines()
    prompts = [p.strip() for p in prompts if p and p.strip()]
    if not prompts:
        raise PromptError(f"{path}: contains no prompts")
    return check_lengths(prompts, str(path))


def check_lengths(prompts: list[str], where: str) -> list[str]:
    """``prompts``, unless one is longer than any text encoder reads (checked before tokenising:
    a tokenizer fed a 60 MB line takes gigabytes)."""
    for number, prompt in enumerate(prompts, 1):
        if len(prompt) > MAX_PROMPT_CHARS:
            raise PromptError(
                f"{where}: prompt {number} has {len(prompt):,} characters, more than the {MAX_PROMPT_CHARS} a "
                "prompt may have"
            )
    return prompts


def _guess_column(keys: Iterable[str], path: Path) -> str:
    keys = list(keys)
    for name in ("prompt", "caption", "text"):
        if name in keys:
            return name
    raise PromptError(
        f"{path}: no prompt, caption or text column; name the column with `prompt_column` "
        f"(recipes: `calibration.prompts.column`); columns: {', '.join(keys)}"
    )


def contained_path(relative: str, base_dir: Path) -> Path:
    """``base_dir / relative`` for a relative, normalised path that stays inside ``base_dir``."""
    posix = PurePosixPath(relative.replace("\\", "/"))
    if (
        posix.is_absolute()
        or not posix.parts
        or any(part in ("..", "") for part in posix.parts)
        or ":" in posix.parts[0]
    ):
        raise PromptError(f"prompt file {relative!r} must be a relative path inside the recipe's folder")
    path = base_dir / Path(*posix.parts)
    if not path.resolve().is_relative_to(base_dir.resolve()):
        raise PromptError(f"prompt file {relative!r} resolves outside the recipe's folder")
    return path


def prompts_sha256(prompts: Sequence[str]) -> str:
    """Identity of a prompt set (recorded in effective recipes, evaluations and Hessian stores; checked on re-runs)."""
    return hashlib.sha256("\n".join(prompts).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class PromptSet:
    """Prompts resolved from their source once per run, with their identity."""

    texts: tuple[str, ...]
    sha256: str

    @classmethod
    def of(cls, texts: Sequence[str]) -> PromptSet:
        return cls(tuple(texts), prompts_sha256(texts))


def resolve_prompts(source: PromptSource, base_dir: Path | None = None) -> list[str]:
    """The ``source.count`` prompts of ``source`` (cycled if it has fewer), checked against its sha256.

    ``base_dir``: the folder of the recipe that named ``source``; file paths are then
    relative to it and may not leave it. ``None`` (a path given directly by the user):
    the path is used as given.
    """
    return counted_prompts(source, source_prompts(source, base_dir))


def source_prompts(source: PromptSource, base_dir: Path | None = None) -> list[str]:
    """Every prompt ``source`` holds, once, in its order (``base_dir`` as for :func:`resolve_prompts`)."""
    if source.source == "builtin":
        prompts = builtin_prompts(source.path or "captions")
    elif source.source == "inline":
        prompts = check_lengths([t.strip() for t in source.texts or [] if t.strip()], "the inline prompts")
    elif source.source == "file":
        path = contained_path(source.path or "", base_dir) if base_dir is not None else Path(source.path or "")
        prompts = read_prompt_file(path, source.column)
    else:
        local = HubClient().download_file(
            source.repo_id or "", source.path or "", repo_type="dataset", revision=source.revision
        )
        prompts = read_prompt_file(local, source.column)
    if not prompts:
        raise PromptError("the calibration prompt list is empty")
    return prompts


def counted_prompts(source: PromptSource, prompts: list[str]) -> list[str]:
    """``source.count`` of ``prompts`` (the source's own, cycled if it has fewer), checked against its sha256."""
    chosen = [prompts[i % len(prompts)] for i in range(source.count)]
    if source.sha256 is not None and prompts_sha256(chosen) != source.sha256:
        raise PromptError(
            f"the {source.count} calibration prompts from {source.source} {source.path or ''}".rstrip()
            + f" do not match the recipe's sha256 {source.sha256[:12]}…; the source changed since the recipe was "
            "written"
        )
    return chosen
