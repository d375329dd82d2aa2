"""What a pruning run did, per layer, per block and per package: data only, JSON-serialisable."""

from __future__ import annotations

import resource
import sys
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn


@dataclass
class LayerRecord:
    name: str
    block: int
    shape: tuple[int, int]
    sparsity: float  # fraction of zero weights (structured: of zeroed input columns before removal)
    relative_error: float  # ‖(W−Ŵ)X‖² / ‖WX‖² on the calibration Hessian
    start_error: float | None = None  # a refining solver: the same for the obs result it started from
    zeroed: int = 0  # unstructured / N:M: weights set to zero (structured removals change shapes instead)


@dataclass
class StructureRecord:
    module: str
    block: int
    kind: str  # "heads" or "neurons"
    before: int
    after: int
    kept: list[int] = field(default_factory=list)  # indices (of the ``before`` units) that remain


@dataclass
class PackageRecord:
    """Per module package. ``hessian_s`` is wall time inside the accumulation hooks; on CUDA,
    where kernels run asynchronously, it undercounts and ``calibration_s`` holds the rest."""

    index: int
    units: int
    layers: int
    hessian_bytes: int
    calibration_s: float
    hessian_s: float
    solve_s: float


@dataclass
class PruneReport:
    family: str
    model_class: str
    config: dict[str, Any]
    params_before: int
    params_after: int = 0
    layers: list[LayerRecord] = field(default_factory=list)
    structure: list[StructureRecord] = field(default_factory=list)
    packages: list[PackageRecord] = field(default_factory=list)
    stages: dict[str, float] = field(default_factory=dict)
    peak_memory_bytes: int = 0
    peak_host_bytes: int = 0  # peak resident set size of the process (what offloading bounds)
    device: str = ""  # where calibration and solves ran
    package_plan: dict[str, Any] = field(default_factory=dict)  # mode, count, budget, Hessian bytes
    precision: dict[str, str] = field(default_factory=dict)  # checkpoint and compute dtypes
    calibration: dict[str, Any] = field(default_factory=dict)  # prompts, trajectories, unconditional input
    world_size: int = 1

    @property
    def mean_sparsity(self) -> float:
        return sum(r.sparsity for r in self.layers) / max(len(self.layers), 1)

    @property
    def mean_relative_error(self) -> float:
        return sum(r.relative_error for r in self.layers) / max(len(self.layers), 1)

    @property
    def mean_start_error(self) -> float | None:
        """Mean relative error of the obs results a refining solver started from (None for ``solver: obs``)."""
        starts = [r.start_error for r in self.layers if r.start_error is not None]
        return sum(starts) / len(starts) if starts else None

    @property
    def zeroed_weights(self) -> int:
        """Weights an unstructured or N:M run set to zero (shapes unchanged; 0 for structured runs,
        whose removed heads and neurons are gone from the shapes); what ``plan`` predicts."""
        return sum(r.zeroed for r in self.layers)

    def removed(self, kind: str) -> int:
        """Heads (``kind="heads"``) or FFN neurons (``"neurons"``) a structured run removed."""
        return sum(r.before - r.after for r in self.structure if r.kind == kind)

    def kept(self, start: int = 0) -> dict[str, tuple[int, list[int]]]:
        """Per pruned coupling from structure record ``start`` on, (units before, indices kept): what
        ``models.promote`` records as the kept indices."""
        return {r.module: (r.before, r.kept) for r in self.structure[start:]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PruneReport:
        fields = {k: v for k, v in data.items() if k not in ("mean_sparsity", "mean_relative_error")}
        structured = fields.get("config", {}).get("granularity") == "structured"
        fields["layers"] = [_layer_record(r, structured) for r in fields.get("layers", [])]
        fields["structure"] = [StructureRecord(**r) for r in fields.get("structure", [])]
        fields["packages"] = [PackageRecord(**r) for r in fields.get("packages", [])]
        return cls(**fields)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["mean_sparsity"] = self.mean_sparsity
        data["mean_relative_error"] = self.mean_relative_error
        return data


def _layer_record(data: dict[str, Any], structured: bool) -> LayerRecord:
    """A layer's record; reports written before 0.5 carry no ``zeroed`` count, which their sparsity gives exactly."""
    rows, cols = data["shape"]
    zeroed = data.get("zeroed", 0 if structured else round(data["sparsity"] * rows * cols))
    return LayerRecord(**{**data, "shape": (rows, cols), "zeroed": zeroed})


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_bytes(device: torch.device) -> int:
    """Peak accelerator memory on CUDA; peak resident set size of the process on CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return peak_host_bytes()


def peak_host_bytes() -> int:
    """Peak resident set size of this process so far: Linux's ``VmHWM`` (``ru_maxrss`` starts from the parent's
    size at fork, so a process started by a large one reports that instead), ``ru_maxrss`` elsewhere."""
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))
    except (OSError, StopIteration, ValueError, IndexError):
        scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is KiB on Linux
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale)
