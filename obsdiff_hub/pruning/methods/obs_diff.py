"""OBS-Diff's own method (SPEC §1): OBS with timestep-aware Hessians, unstructured, N:M or structured."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from ...maths.counts import layer_removal_count
from ...maths.group_obs import obs_remove_groups
from ...maths.obs import obs_prune_shared
from .base import METHODS, GroupProblem, GroupResult, LayerProblem, LayerResult, PruningMethod


@METHODS.register
class ObsDiff(PruningMethod):
    """Optimal Brain Surgeon: blocked OBS per layer (SparseGPT's walk), or greedy group OBS over heads and neurons."""

    name: Literal["obs-diff"] = "obs-diff"
    blocksize: int = Field(128, ge=1, le=1 << 20, description="columns per block of the OBS walk (unstructured, N:M)")
    head_saliency: Literal["reference", "exact"] = Field(
        "reference",
        description="structured: a head's cost as the reference implementation computes it (conditional "
        "variances), or the exact cost of removing its columns at once",
    )
    rrf_k: int = Field(60, ge=0, le=1_000_000, description="structured MMDiT: k of the reciprocal rank fusion")
    neuron_batch: int = Field(32, ge=1, le=1 << 20, description="structured: FFN neurons removed per OBS round")

    summary: ClassVar[str] = "the paper's method: OBS, compensating the kept weights (every granularity)"
    compensates: ClassVar[bool] = True

    def card_text(self, granularity: str) -> str:
        if granularity == "structured":
            return (
                f"OBS-Diff: greedy group OBS, heads one at a time (saliency {self.head_saliency}; MMDiT streams fused "
                f"by RRF, k {self.rrf_k}), FFN neurons {self.neuron_batch} per round"
            )
        return f"OBS-Diff: blocked OBS (SparseGPT's walk), blocksize {self.blocksize}"

    def removal_count(self, rows: int, cols: int, ratio: float) -> int:
        return layer_removal_count(rows, cols, ratio, self.blocksize)

    def prune_layers(self, problem: LayerProblem) -> LayerResult:
        p = problem
        return obs_prune_shared(p.weights, p.H, p.ratios, p.n, p.m, self.blocksize, p.damping_fraction, p.counts)

    def remove_groups(self, problem: GroupProblem) -> GroupResult:
        p = problem
        options = {"damping_fraction": p.damping_fraction, "saliency": self.head_saliency, "rrf_k": self.rrf_k}
        return obs_remove_groups(p.weights, p.hessians, p.groups, p.selections, **options)

    def group_batch(self, kind: str) -> int:
        return self.neuron_batch if kind == "neurons" else 1
