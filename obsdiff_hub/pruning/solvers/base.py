"""What a refining solver is: it improves the method's result on each layer's own objective."""

from __future__ import annotations

from typing import Any, ClassVar

from ...maths.admm import AdmmSettings, refine
from ..methods import LayerProblem, LayerResult
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

    def refine(self, problem: LayerProblem, starts: LayerResult) -> LayerResult:
        """The layers of ``problem`` from their pruned ``starts``: the refined ``(W, mask)`` per layer, each no
        worse than its start on ``tr((Ŵ − W) H (Ŵ − W)ᵀ)``, with the start's count or N:M pattern."""
        raise NotImplementedError


class RefitSolver(RefiningSolver):
    """A refinement by :func:`obsdiff_hub.maths.admm.refine`: ``search`` ADMM over masks first, or only the
    exact re-fit of the kept weights; the settings say how far each goes."""

    search: ClassVar[bool] = True

    def admm_settings(self) -> AdmmSettings:
        raise NotImplementedError

    def refine(self, problem: LayerProblem, starts: LayerResult) -> LayerResult:
        p = problem
        return refine(
            p.weights,
            p.H,
            [w for w, _ in starts],
            [mask for _, mask in starts],
            search=self.search,
            n=p.n,
            m=p.m,
            damping_fraction=p.damping_fraction,
            settings=self.admm_settings(),
        )


SOLVERS: Registry[RefiningSolver] = Registry("solver", RefiningSolver, default="obs")
