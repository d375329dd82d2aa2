"""``solver: admm``: masks and weights refined by ADMM from the OBS result (ALPS), then re-fitted."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from ...maths.admm import AdmmSettings
from .base import SOLVERS, RefitSolver


@SOLVERS.register
class Admm(RefitSolver):
    """ADMM over masks and weights in the scaled problem (see :mod:`obsdiff_hub.maths.admm`), started from
    the OBS result, then the final mask re-fitted exactly; a layer keeps the better of the two."""

    name: Literal["admm"] = "admm"
    iterations: int = Field(60, ge=1, le=10_000, description="ADMM steps at most")
    rho: float = Field(
        0.1, gt=0, le=1e6, description="the first penalty, relative to the scaled Hessian's unit diagonal"
    )
    refit_iterations: int = Field(100, ge=1, le=100_000, description="conjugate-gradient steps of the re-fit at most")
    refit_tolerance: float = Field(1e-6, gt=0, lt=1, description="relative residual at which the re-fit stops")

    summary: ClassVar[str] = "masks and weights refined by ADMM from the OBS result, then re-fitted"
    granularities: ClassVar[tuple[str, ...]] = ("unstructured", "n:m")

    def card_text(self, granularity: str) -> str:
        return (
            f"OBS, then masks and weights refined by ADMM ({self.iterations} steps at most, first penalty "
            f"{self.rho}) and re-fitted; no layer kept worse than OBS"
        )

    def admm_settings(self) -> AdmmSettings:
        return AdmmSettings(self.iterations, self.rho, self.refit_iterations, self.refit_tolerance)
