"""A pruned checkpoint folder's records: their names, and the one reader and writer of each.

Beside the diffusers layout, a folder ``prune`` writes holds ``recipe.yaml`` (the effective recipe) and
``report.json`` (the run: its :class:`PruneReport`, the provenance, the offline plan); once measured,
``eval.json`` with ``samples.png`` and ``bench.json``; the card is ``README.md``. Every record is
written atomically and listed in the folder's ownership marker; every read is bounded and a damaged
record is one line naming the file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TypeVar

from ..errors import InputError
from ..pruning.report import PruneReport
from ..storage.files import read_json, readable_file
from ..storage.outputs import (
    FOLDER_SUFFIX_BYTES,
    HeldFolder,
    add_owned,
    check_name_lengths,
    probe_writable,
    read_marker,
    write_atomic,
)

RECIPE_FILE = "recipe.yaml"
REPORT_FILE = "report.json"
EVAL_FILE = "eval.json"
GRID_FILE = "samples.png"
BENCH_FILE = "bench.json"
CARD_FILE = "README.md"

T = TypeVar("T")


class RecordError(InputError):
    """A record that cannot be read back, or a folder that is not a pruned checkpoint; the message names it."""


def read_record(path: Path, parse: Callable[[dict[str, Any]], T]) -> T:
    """One of a checkpoint folder's JSON records, read back; a damaged one is a :class:`RecordError` naming it."""
    data = read_json(path)
    try:
        return parse(data)
    except (KeyError, TypeError, AttributeError, ValueError) as error:
        raise RecordError(
            f"{path}: not a record obsdiff-hub wrote ({type(error).__name__}: {error}); "
            "run the command that writes it again"
        ) from None


def write_record(folder: Path | HeldFolder, name: str, content: dict[str, Any] | bytes | str) -> Path:
    """``folder / name`` written atomically (a dict as indented JSON) and listed as this tool's file. A held
    folder is written through its descriptor, and only while its name still leads to it."""
    data = json.dumps(content, indent=2) + "\n" if isinstance(content, dict) else content
    if isinstance(folder, HeldFolder):
        folder.verify()
        folder.write(name, data)
        add_owned(folder.pinned, [name])
        return folder.path / name
    folder.mkdir(parents=True, exist_ok=True)
    write_atomic(folder / name, data)
    add_owned(folder, [name])
    return folder / name


@dataclass
class RunRecord:
    """``report.json``: what the run did, the provenance stamped into the weights, and the offline plan."""

    report: PruneReport
    provenance: dict[str, str]
    plan: dict[str, Any] | None = None
    recovery: dict[str, Any] | None = None  # a healed checkpoint: the recovery's report and the one-shot evaluation

    def to_dict(self) -> dict[str, Any]:
        data = {**self.report.to_dict(), "provenance": self.provenance, "plan": self.plan}
        return {**data, "recovery": self.recovery} if self.recovery is not None else data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunRecord:
        provenance, plan, recovery = data.get("provenance"), data.get("plan"), data.get("recovery")
        report = PruneReport.from_dict({k: v for k, v in data.items() if k not in ("provenance", "plan", "recovery")})
        return cls(
            report,
            dict(provenance) if isinstance(provenance, dict) else {},
            plan if isinstance(plan, dict) else None,
            recovery if isinstance(recovery, dict) else None,
        )


def read_run_record(folder: Path) -> RunRecord:
    return read_record(folder / REPORT_FILE, RunRecord.from_dict)


def check_checkpoint_folder(directory: Path) -> None:
    """A folder ``prune`` wrote: a diffusers layout with its ``recipe.yaml`` and ``report.json``, both
    real files inside it (never read through a link out of it)."""
    if not directory.is_dir():
        raise RecordError(f"{directory} does not exist or is not a directory")
    missing = [n for n in (RECIPE_FILE, REPORT_FILE) if not readable_file(directory / n, directory)]
    if missing or not ((directory / "model_index.json").is_file() or (directory / "config.json").is_file()):
        raise RecordError(
            f"{directory} is not a pruned checkpoint (needs {RECIPE_FILE}, {REPORT_FILE} and a diffusers layout); "
            "run obsdiff-hub prune first"
        )


def results_folder(model: str, out: Path | None) -> Path:
    """Where ``bench.json`` / ``eval.json`` go: ``out`` (created only when the results are written, so a
    failed run leaves nothing), or the model's own folder when it is an output of this tool;
    anything else needs an ``out`` folder (no writes into a stranger's folder)."""
    if out is not None:
        check_name_lengths(out, FOLDER_SUFFIX_BYTES)
        if out.exists() and not out.is_dir():
            raise InputError(f"{out} is a file; give a folder as the `out` for the results")
        probe_writable(out)
        return out
    if Path(model).is_dir() and read_marker(Path(model)) is not None:
        return Path(model)
    raise InputError(f"{model} is not a checkpoint folder written by obsdiff-hub: pass `out` FOLDER for the results")
