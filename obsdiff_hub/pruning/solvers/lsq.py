"""``solver: obs+lsq``: the OBS mask, with the kept weights solved to the least-squares optimum."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from ...maths.admm import AdmmSettings
from .base import SOLVERS, RefitSolver


@SOLVERS.register
class LeastSquaresRefit(RefitSolver):
    """Keeps the OBS mask and re-fits the kept weights exactly (per row ``ŵ_K H_KK = (W H)_K``), by
    Jacobi-preconditioned conjugate gradients over all rows at once."""

    name: Literal["obs+lsq"] = "obs+lsq"
    iterations: int = Field(100, ge=1, le=100_000, description="conjugate-gradient steps at most")
    tolerance: float = Field(1e-6, gt=0, lt=1, description="relative residual at which the re-fit stops")

    summary: ClassVar[str] = "the OBS mask, kept weights re-fitted to the least-squares optimum (cheap)"
    search: ClassVar[bool] = False
    granularities: ClassVar[tuple[str, ...]] = ("unstructured", "n:m")

    def card_text(self, granularity: str) -> str:
        return (
            f"OBS, then its kept weights re-fitted to the least-squares optimum ({self.iterations} conjugate-gradient "
            f"steps at most, tolerance {self.tolerance}); no layer kept worse than OBS"
        )

    def admm_settings(self) -> AdmmSettings:
        return AdmmSettings(refit_iterations=self.iterations, refit_tolerance=self.tolerance)
