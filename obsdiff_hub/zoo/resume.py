"""Interrupt-safe runs: after every module package the model and the report go to disk.

The state lives in ``<out>.partial/``: ``state/`` is the denoiser after the last finished
package (safetensors in the checkpoint dtype, pruned shapes in its config) and
``progress.json`` says how many packages are done and for which run. Each write goes to a
temp folder renamed over the old one, so a crash mid-write leaves the previous package's
state intact. The folder carries this tool's ownership marker; a folder of that name that
this tool did not write is never touched.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from torch import nn

from ..checkpoints.saving import write_safetensors
from ..errors import InputError
from ..models import KEPT_KEY, STRUCTURE_KEY, kept_record, promote, pruned_class_for
from ..models.lazy import open_offloaded
from ..models.offload import OffloadMode
from ..pruning.precision import floating_dtype
from ..pruning.report import PruneReport
from ..storage.files import read_json
from ..storage.outputs import (
    Destination,
    HeldFolder,
    OutputError,
    apply_umask_modes,
    first_foreign_file,
    read_marker,
)

PROGRESS = "progress.json"


class ResumeError(InputError):
    """A partial run that cannot be resumed; the message says what to do."""


PARTIAL_SUFFIX = ".partial"


def partial_folder(out: Path) -> Path:
    """Where a run writing ``out`` keeps its progress: ``<out>.partial`` beside it."""
    return out.with_name(out.name + PARTIAL_SUFFIX)


def saved_packages(out: Path) -> int:
    """Packages whose progress a run writing ``out`` has saved (0 when none, or nothing readable)."""
    try:
        return int(read_json(partial_folder(out) / PROGRESS)["completed"])
    except (ValueError, KeyError, TypeError):  # a CheckpointError is a ValueError
        return 0


class DiskState:
    """``PackageState`` backed by ``directory`` (see :func:`obsdiff_hub.pruning.engine.prune`)."""

    def __init__(self, directory: str | Path, run_id: str, writer: bool = True) -> None:
        self.directory = Path(directory)
        self.run_id = run_id
        self.writer = writer  # under a launcher only rank 0 writes or removes anything
        self.completed = 0
        self.previous_report: PruneReport | None = None
        self.restored_records = 0  # structure records of the packages before a resume (the restored model has them)
        self.place: Destination | None = None  # the folder's parent, held from the checks on
        self.held: HeldFolder | None = None  # the folder itself, once it exists

    @property
    def state_dir(self) -> Path:
        return self.directory / "state"

    def _progress(self) -> dict[str, Any] | None:
        path = self.directory / PROGRESS
        return read_json(path) if path.is_file() else None

    def prepare(self, *, resume: bool, restart: bool) -> None:
        """Check the partial folder before any work: ours or absent, and resumed only when asked. From here on
        the folder (or, while it does not exist, its parent) is held: every write and delete goes through it."""
        if not (self.writer or resume):
            return
        if self.writer:
            self.place = Destination(self.directory)
        if not self.directory.exists() and not self.directory.is_symlink():
            if resume:
                raise ResumeError(f"nothing to resume: {self.directory} does not exist; run without `resume`")
            return
        record = read_marker(self.directory)
        if record is None:
            raise OutputError(
                f"{self.directory} exists but was not created by obsdiff-hub, so it is left untouched; "
                "move it away or choose another `out`"
            )
        if record.get("kind") != "partial":
            raise OutputError(
                f"{self.directory} is an obsdiff-hub checkpoint, not saved progress; move it away or choose "
                "another `out`"
            )
        foreign = first_foreign_file(self.directory)
        if foreign is not None:
            raise OutputError(
                f"{self.directory} holds {foreign}, which obsdiff-hub did not write; move it away, then rerun"
            )
        progress = self._progress()
        if resume:
            if not progress:
                raise ResumeError(f"nothing to resume in {self.directory}; run without `resume`")
            if progress["run_id"] != self.run_id:
                raise ResumeError(
                    f"{self.directory} holds a run of a different recipe or settings; pass `restart` to discard it"
                )
            return
        if progress and not restart:
            stage = ", recovery begun" if progress.get("work") else ""
            raise OutputError(
                f"{self.directory} holds saved progress of an interrupted run ({progress['completed']} package(s) "
                f"done{stage}); pass `resume` to continue or `restart` to discard it"
            )
        self.clear()

    def _folder(self) -> HeldFolder:
        """The partial folder, held (created through its held parent, marked, on first use); its name must
        still lead to it."""
        if self.held is None:
            assert self.place is not None, "prepare() comes first"
            with self.place.parent() as parent:
                fresh = not parent.exists(self.directory.name)
                self.held = parent.folder(self.directory.name)
            if fresh:
                self.held.mark([], kind="partial")
        self.held.verify()
        return self.held

    def package_done(self, index: int, model: nn.Module, report: PruneReport) -> None:
        folder = self._folder()
        # A fresh temp folder, owned (by the marker) before anything is written into it, so a
        # crash mid-write leaves nothing that looks foreign; only what this run wrote is listed.
        record = self._marker(folder)
        with folder.make_temp_folder(".state.", mark=False) as tmp:
            old = f".state.old.{tmp.path.name}"
            folder.mark([*record["files"], f"{tmp.path.name}/", f"{old}/"], kind="partial")
            write_safetensors(promote(model), tmp.pinned, torch_dtype=floating_dtype(model))  # shapes in its config
            apply_umask_modes(tmp.pinned)
            state = list(os.listdir(tmp.fd))
        if folder.exists("state"):
            folder.rename("state", old)
        folder.rename(tmp.path.name, "state")
        if folder.exists(old):
            folder.remove_tree(old)
        progress = {"run_id": self.run_id, "completed": index + 1, "report": report.to_dict()}
        folder.write(PROGRESS, json.dumps(progress))
        others = [f for f in record["files"] if f.endswith("/") and not f.startswith((".state", "state/"))]
        folder.mark([*others, *(f"state/{name}" for name in state), PROGRESS], kind="partial")
        self.completed = index + 1

    def _marker(self, folder: HeldFolder) -> dict[str, Any]:
        """The progress folder's ownership record, or an error: without it nothing in the folder is provably ours."""
        record = read_marker(folder.pinned)
        if record is None:
            raise OutputError(f"{self.directory}: its ownership marker is gone; the saved progress was tampered with")
        return record

    def claim(self, name: str) -> HeldFolder:
        """The progress folder, held, with its entry ``name`` (a later stage's folder: the one-shot checkpoint,
        the recovery's data) listed as this tool's; ``progress.json`` records that the stage began, so ``resume``
        continues it."""
        folder = self._folder()
        record = self._marker(folder)
        progress = self._progress() or {"run_id": self.run_id, "completed": self.completed, "report": None}
        folder.write(PROGRESS, json.dumps({**progress, "work": name}))
        folder.mark(sorted({*record["files"], PROGRESS, f"{name}/"}), kind="partial")
        return folder

    def workspace(self, name: str) -> HeldFolder:
        """Sub-folder ``name`` of the progress folder (see :meth:`claim`), created and held."""
        return self.claim(name).folder(name)

    def scratch(self, name: str) -> HeldFolder:
        """Sub-folder ``name`` of the progress folder for the run's own working files (offloaded blocks), listed
        as this tool's, created and held; unlike :meth:`claim` it records no stage."""
        folder = self._folder()
        record = self._marker(folder)
        folder.mark(sorted({*record["files"], f"{name}/"}), kind="partial")
        return folder.folder(name)

    def load(self, model: nn.Module, offload: OffloadMode = "none", offload_folder: Path | None = None) -> nn.Module:
        """Restore the denoiser saved after the last finished package; returns the model to use. ``offload``:
        opened with its blocks offloaded (copied out of the saved progress, which the next package replaces)."""
        progress = self._progress()
        if progress is None:
            raise ResumeError(f"nothing to resume in {self.directory}; run without `resume`")
        config = read_json(self.state_dir / "config.json")
        cls = pruned_class_for(model) if config.get(STRUCTURE_KEY) else type(model)
        parameter = next(model.parameters())
        restored = (
            open_offloaded(self.state_dir, offload, offload_folder, own=True)
            if offload != "none"
            else cls.from_pretrained(self.state_dir, dtype=parameter.dtype).to(parameter.device)
        )
        self.completed = int(progress["completed"])
        self.previous_report = PruneReport.from_dict(progress["report"])
        self.restored_records = len(self.previous_report.structure)
        # the heads and neurons the saved packages kept, relative to the base as the run's end records them
        record = kept_record(model.config, self.previous_report.kept())
        if record is not None:
            restored.register_to_config(**{KEPT_KEY: record})
        return restored.eval().requires_grad_(False)

    def clear(self) -> None:
        """Remove the partial folder (only ever this tool's own, and only the folder held or checked)."""
        if not self.writer or not self.directory.exists():
            return
        if self.held is not None:
            self.held.verify()
        foreign = first_foreign_file(self.directory)
        if foreign is not None:
            raise OutputError(
                f"{self.directory} holds {foreign}, which obsdiff-hub did not write; it was left untouched"
            )
        assert self.place is not None, "prepare() comes first"
        with self.place.parent() as parent:
            parent.remove_tree(self.directory.name)
        if self.held is not None:
            self.held.close()
            self.held = None
