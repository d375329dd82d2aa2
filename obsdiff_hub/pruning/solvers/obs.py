"""``solver: obs``: the method's result as it is (the paper's greedy pass)."""

from __future__ import annotations

from typing import ClassVar, Literal

from ..methods import LayerProblem, LayerResult
from .base import SOLVERS, RefiningSolver


@SOLVERS.register
class GreedyPass(RefiningSolver):
    """No refinement: OBS-Diff's single left-to-right pass."""

    name: Literal["obs"] = "obs"
    summary: ClassVar[str] = "the paper's greedy pass as it is (no refinement)"
    refines: ClassVar[bool] = False

    def card_text(self, granularity: str) -> str:
        return "OBS (the paper's greedy pass)"

    def refine(self, problem: LayerProblem, starts: LayerResult) -> LayerResult:
        return list(starts)
