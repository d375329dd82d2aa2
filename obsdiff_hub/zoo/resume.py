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
import shutil
from pathlib import Path
from typing import Any

from torch import nn

from ..checkpoints.loading import read_json
from ..checkpoints.outputs import MARKER, OutputError, mark_owned, read_marker, remove_owned
from ..checkpoints.saving import write_safetensors
from ..models import STRUCTURE_KEY, pruned_class_for
from ..pruning.precision import floating_dtype
from ..pruning.report import PruneReport

PROGRESS = "progress.json"


class ResumeError(ValueError):
    """A partial run that cannot be resumed; the message says what to do."""


class DiskState:
    """``PackageState`` backed by ``directory`` (see :func:`obsdiff_hub.pruning.engine.prune`)."""

    def __init__(self, directory: str | Path, run_id: str, writer: bool = True) -> None:
        self.directory = Path(directory)
        self.run_id = run_id
        self.writer = writer  # under a launcher only rank 0 writes or removes anything
        self.completed = 0
        self.previous_report: PruneReport | None = None

    @property
    def state_dir(self) -> Path:
        return self.directory / "state"

    def _progress(self) -> dict[str, Any] | None:
        path = self.directory / PROGRESS
        return read_json(path) if path.is_file() else None

    def prepare(self, *, resume: bool, restart: bool) -> None:
        """Check the partial folder before any work: ours or absent, and resumed only when asked."""
        if not (self.writer or resume):
            return
        if not self.directory.exists() and not self.directory.is_symlink():
            if resume:
                raise ResumeError(f"nothing to resume: {self.directory} does not exist; run without --resume")
            return
        if read_marker(self.directory) is None:
            raise OutputError(
                f"{self.directory} exists but was not created by obsdiff-hub, so it is left untouched; "
                "move it away or choose another --out"
            )
        progress = self._progress()
        done = int(progress["completed"]) if progress else 0
        if resume:
            if not done:
                raise ResumeError(f"nothing to resume in {self.directory}; run without --resume")
            if progress["run_id"] != self.run_id:
                raise ResumeError(
                    f"{self.directory} holds a run of a different recipe or settings; pass --restart to discard it"
                )
            return
        if done and not restart:
            raise OutputError(
                f"{self.directory} holds saved progress of an interrupted run ({done} package(s) done); "
                "pass --resume to continue or --restart to discard it"
            )
        self.clear()

    def package_done(self, index: int, model: nn.Module, report: PruneReport) -> None:
        fresh = not self.directory.exists()
        self.directory.mkdir(parents=True, exist_ok=True)
        if fresh:
            mark_owned(self.directory, [], kind="partial")
        tmp = self.directory / "state.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        write_safetensors(model, tmp, torch_dtype=floating_dtype(model))
        old = self.directory / "state.old"
        shutil.rmtree(old, ignore_errors=True)
        if self.state_dir.exists():
            self.state_dir.rename(old)
        tmp.rename(self.state_dir)
        shutil.rmtree(old, ignore_errors=True)
        progress = {"run_id": self.run_id, "completed": index + 1, "report": report.to_dict()}
        (self.directory / "progress.tmp").write_text(json.dumps(progress))
        (self.directory / "progress.tmp").replace(self.directory / PROGRESS)
        owned = [p.relative_to(self.directory).as_posix() for p in self.directory.rglob("*") if p.is_file() and p.name != MARKER]
        mark_owned(self.directory, owned, kind="partial")
        self.completed = index + 1

    def load(self, model: nn.Module) -> nn.Module:
        """Restore the denoiser saved after the last finished package; returns the model to use."""
        progress = self._progress()
        if progress is None:
            raise ResumeError(f"nothing to resume in {self.directory}; run without --resume")
        config = read_json(self.state_dir / "config.json")
        cls = pruned_class_for(model) if config.get(STRUCTURE_KEY) else type(model)
        parameter = next(model.parameters())
        restored = cls.from_pretrained(self.state_dir, dtype=parameter.dtype).to(parameter.device)
        self.completed = int(progress["completed"])
        self.previous_report = PruneReport.from_dict(progress["report"])
        return restored.eval().requires_grad_(False)

    def clear(self) -> None:
        """Remove the partial folder (only ever this tool's own)."""
        if self.writer and self.directory.exists():
            remove_owned(self.directory)
