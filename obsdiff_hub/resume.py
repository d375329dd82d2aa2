"""Interrupt-safe runs: after every module package the model and the report go to disk.

The state lives in ``<out>.partial/``: ``state/`` is the denoiser after the last finished
package (safetensors, pruned shapes in its config) and ``progress.json`` says how many
packages are done and for which recipe sha256. Each write goes to a temp dir renamed
over the old one, so a crash mid-write leaves the previous package's state intact.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoint import mark_pruned, write_safetensors
from .models import STRUCTURE_KEY, pruned_class_for
from .report import PruneReport

PROGRESS = "progress.json"


class ResumeError(ValueError):
    """A partial run that cannot be resumed; the message says what to do."""


class DiskState:
    """``PackageState`` backed by ``directory`` (see :func:`obsdiff_hub.engine.prune`)."""

    def __init__(self, directory: str | Path, run_id: str) -> None:
        self.directory = Path(directory)
        self.run_id = run_id
        self.completed = 0
        self.previous_report: PruneReport | None = None

    @property
    def state_dir(self) -> Path:
        return self.directory / "state"

    def package_done(self, index: int, model: nn.Module, report: PruneReport) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.directory / "state.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        mark_pruned(model, {})  # records shrunk shapes in the config when there are any
        write_safetensors(model, tmp)
        old = self.directory / "state.old"
        shutil.rmtree(old, ignore_errors=True)
        if self.state_dir.exists():
            self.state_dir.rename(old)
        tmp.rename(self.state_dir)
        shutil.rmtree(old, ignore_errors=True)
        progress = {"run_id": self.run_id, "completed": index + 1, "report": report.to_dict()}
        (self.directory / "progress.tmp").write_text(json.dumps(progress))
        (self.directory / "progress.tmp").replace(self.directory / PROGRESS)
        self.completed = index + 1

    def load(self, model: nn.Module) -> nn.Module:
        """Restore the denoiser saved after the last finished package; returns the model to use."""
        path = self.directory / PROGRESS
        if not path.is_file():
            raise ResumeError(f"nothing to resume in {self.directory}; run without --resume")
        progress: dict[str, Any] = json.loads(path.read_text())
        if progress["run_id"] != self.run_id:
            raise ResumeError(
                f"{self.directory} holds a run of a different recipe or settings; delete it or run without --resume"
            )
        config = json.loads((self.state_dir / "config.json").read_text())
        cls = pruned_class_for(model) if config.get(STRUCTURE_KEY) else type(model)
        dtype = next(model.parameters()).dtype
        restored = cls.from_pretrained(self.state_dir, torch_dtype=dtype).to(next(model.parameters()).device)
        self.completed = int(progress["completed"])
        self.previous_report = PruneReport.from_dict(progress["report"])
        return restored.eval().requires_grad_(False) if isinstance(restored, nn.Module) else restored

    def clear(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


def default_dtype(device: torch.device) -> torch.dtype:
    """Calibration dtype when none is given: bf16 on GPUs that support it, fp16 on others, fp32 on CPU."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32
