"""What a refining solver is: it improves the method's result on each layer's own objective."""

from __future__ import annotations

from typing import Any, ClassVar, Sequence

import torch

from ..methods import LayerResult
from ..registry import Registry, Settings


class RefiningSolver(Settings):
    """A solver run on the method's result (``starts``); ``refines`` False means it keeps that
    result as it is (the paper's greedy pass alone)."""

    kind: ClassVar[str] = "solver"
    refines: ClassVar[bool] = True

    def check(self, config: Any) -> None:
        super().check(config)
        if self.refines and not config.method.compensates:
            raise ValueError(
                f"solver {self.name!r} refines a method that compensates (obs-diff), not {config.method.name!r}"
            )

    def refine(
        self,
        targets: Sequence[torch.Tensor],
        H: torch.Tensor,
        starts: LayerResult,
        *,
        n: int,
        m: int,
        damping_fraction: float,
    ) -> LayerResult:
        """Layers that share ``H``, from their pruned ``starts``: the refined ``(W, mask)`` per layer,
        each no worse than its start on ``tr((Ŵ − W) H (Ŵ − W)ᵀ)``, with the start's count or N:M pattern."""
        raise NotImplementedError


SOLVERS: Registry[RefiningSolver] = Registry("solver", RefiningSolver, default="obs")
