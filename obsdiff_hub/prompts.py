"""Calibration prompts from the built-in set, a local file, or a file in a Hub dataset repo."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

from .calibration import builtin_prompts


class PromptError(ValueError):
    """Prompts that cannot be read; the message names the file and the problem."""


def read_prompt_file(path: str | Path, column: str | None = None) -> list[str]:
    """``.txt`` (one per line), ``.jsonl`` (``column`` or ``prompt``/``caption``/``text``), ``.csv``/``.tsv`` (``column``)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise PromptError(f"cannot read prompt file {path}: {error.strerror if isinstance(error, OSError) else error}") from error
    suffix = path.suffix.lower()
    if suffix in (".csv", ".tsv"):
        rows = list(csv.DictReader(text.splitlines(), delimiter="\t" if suffix == ".tsv" else ","))
        key = column or _guess_column(rows[0].keys() if rows else [], path)
        if rows and key not in rows[0]:
            raise PromptError(f"{path}: no column {key!r}; columns are {', '.join(rows[0])}")
        prompts = [row[key] for row in rows]
    elif suffix == ".jsonl":
        prompts = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise PromptError(f"{path}:{number}: not JSON ({error.msg})") from error
            key = column or _guess_column(record.keys(), path)
            if key not in record:
                raise PromptError(f"{path}:{number}: no field {key!r}")
            prompts.append(str(record[key]))
    else:
        prompts = text.splitlines()
    prompts = [p.strip() for p in prompts if p and p.strip()]
    if not prompts:
        raise PromptError(f"{path}: contains no prompts")
    return prompts


def _guess_column(keys, path: Path) -> str:
    for name in ("prompt", "caption", "text"):
        if name in keys:
            return name
    raise PromptError(f"{path}: say which column holds the prompts (columns: {', '.join(keys)})")


def load_prompts(
    source: str = "builtin",
    *,
    path: str | None = None,
    repo_id: str | None = None,
    column: str | None = None,
    count: int = 100,
    revision: str | None = None,
) -> list[str]:
    """``count`` prompts (cycled if the source has fewer) from the chosen source.

    ``builtin``: ``path`` names the shipped set (``captions``, ``shapes``); ``file``: a local
    file; ``hub-dataset``: ``path`` inside the dataset repo ``repo_id``.
    """
    if source == "builtin":
        prompts = builtin_prompts(path or "captions")
    elif source == "file":
        prompts = read_prompt_file(path or "", column)
    elif source == "hub-dataset":
        from huggingface_hub import hf_hub_download

        local = hf_hub_download(repo_id or "", path or "", repo_type="dataset", revision=revision)
        prompts = read_prompt_file(local, column)
    else:
        raise PromptError(f"unknown prompt source {source!r}; use builtin, file or hub-dataset")
    return [prompts[i % len(prompts)] for i in range(count)]


def prompts_sha256(prompts: list[str]) -> str:
    """Identity of a calibration set (recorded in every checkpoint's provenance)."""
    return hashlib.sha256("\n".join(prompts).encode("utf-8")).hexdigest()
