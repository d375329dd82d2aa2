"""The baselines the paper compares against (magnitude, Wanda, DSnoT, L1), run by the same engine."""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field

from ...maths import baselines
from ...maths.counts import removal_count
from .base import METHODS, GroupProblem, GroupResult, LayerProblem, LayerResult, PruningMethod


class _OneLayerAtATime(PruningMethod):
    """A baseline that scores each layer on its own and never updates the kept weights."""

    granularities: ClassVar[tuple[str, ...]] = ("unstructured", "n:m")

    def prune_one(
        self, W: torch.Tensor, H: torch.Tensor, ratio: float, n: int, m: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def prune_layers(self, problem: LayerProblem) -> LayerResult:
        p = problem
        return [self.prune_one(W, p.H, ratio, p.n, p.m) for W, ratio in zip(p.weights, p.ratios)]


@METHODS.register
class Magnitude(_OneLayerAtATime):
    """The smallest ``|w|`` of each layer."""

    name: Literal["magnitude"] = "magnitude"
    summary: ClassVar[str] = "baseline: the smallest |w| of each layer, no compensation"

    def card_text(self, granularity: str) -> str:
        return "magnitude (baseline): the smallest |w| of each layer, kept weights unchanged"

    def prune_one(
        self, W: torch.Tensor, H: torch.Tensor, ratio: float, n: int, m: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return baselines.magnitude_prune(W, H, ratio, n, m)


@METHODS.register
class Wanda(_OneLayerAtATime):
    """Wanda (Sun et al. 2023): ``|w| · ‖x‖`` compared within each output."""

    name: Literal["wanda"] = "wanda"
    summary: ClassVar[str] = "baseline: |w|·‖x‖ within each output row, no compensation"

    def card_text(self, granularity: str) -> str:
        return "Wanda (baseline): |w|·‖x‖ within each output row, kept weights unchanged"

    def removal_count(self, rows: int, cols: int, ratio: float) -> int:
        return rows * removal_count(cols, ratio)

    def prune_one(
        self, W: torch.Tensor, H: torch.Tensor, ratio: float, n: int, m: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return baselines.wanda_prune(W, H, ratio, n, m)


@METHODS.register
class DSnoT(_OneLayerAtATime):
    """DSnoT-style training-free mask swaps from the Wanda mask, by the Hessian's reconstruction error."""

    name: Literal["dsnot"] = "dsnot"
    max_cycles: int = Field(50, ge=1, le=10_000, description="swap rounds at most (each row: one regrow, one prune)")
    summary: ClassVar[str] = "baseline: the Wanda mask improved by error-reducing swaps, no compensation"

    def card_text(self, granularity: str) -> str:
        return f"DSnoT (baseline): the Wanda mask with error-reducing swaps ({self.max_cycles} rounds at most)"

    def removal_count(self, rows: int, cols: int, ratio: float) -> int:
        return rows * removal_count(cols, ratio)

    def prune_layers(self, problem: LayerProblem) -> LayerResult:
        p = problem
        return [
            baselines.dsnot_prune(W, p.H, ratio, p.n, p.m, self.max_cycles, p.damping_fraction)
            for W, ratio in zip(p.weights, p.ratios)
        ]


@METHODS.register
class L1(PruningMethod):
    """Structured baseline: the heads and neurons whose columns have the smallest ``Σ|w|``."""

    name: Literal["l1"] = "l1"
    summary: ClassVar[str] = "structured baseline: heads and neurons with the smallest Σ|w|, no compensation"
    granularities: ClassVar[tuple[str, ...]] = ("structured",)

    def card_text(self, granularity: str) -> str:
        return "L1 (baseline): the heads and FFN neurons with the smallest Σ|w|, kept weights unchanged"

    def remove_groups(self, problem: GroupProblem) -> GroupResult:
        p = problem
        return baselines.l1_remove_groups(p.weights, p.hessians, p.groups, p.selections)
