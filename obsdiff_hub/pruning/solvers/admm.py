"""``solver: admm``: masks and weights refined by ADMM from the OBS result (ALPS), then re-fitted."""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field

from ...maths.admm import AdmmSettings
from .base import SOLVERS, RefitSolver


@SOLVERS.register
class Admm(RefitSolver):
    """ADMM over masks and weights in the scaled problem (see :mod:`obsdiff_hub.maths.admm`), started from
    the OBS result, then the final mask re-fitted exactly; a layer keeps the better of the two."""

    name: Literal["admm"] = "admm"
    iterations: int = Field(10, ge=1, le=10_000, description="ADMM steps at most")
    rho: float = Field(
        0.2, gt=0, le=1e6, description="the first penalty, relative to the scaled Hessian's unit diagonal"
    )
    rho_growth: float = Field(3.0, ge=1, le=1e3, description="the factor ρ grows by every rho_every steps")
    rho_every: int = Field(5, ge=1, le=10_000, description="steps per ρ (each ρ costs one factorisation)")
    refit_iterations: int = Field(2, ge=1, le=100_000, description="conjugate-gradient steps of the re-fit at most")
    refit_tolerance: float = Field(1e-6, gt=0, lt=1, description="relative residual at which the re-fit stops")
    step_dtype: Literal["bfloat16", "float32"] = Field(
        "bfloat16", description="dtype of the ADMM steps' product (the factorisation and re-fit stay float32)"
    )
    thorough_below: int = Field(
        1 << 19,
        ge=0,
        le=1 << 40,
        description="layer groups with fewer weights run the 60-step schedule (a second or less there); 0: never",
    )

    summary: ClassVar[str] = "masks and weights refined by ADMM from the OBS result, then re-fitted"
    granularities: ClassVar[tuple[str, ...]] = ("unstructured", "n:m")  # structured: measured not to win

    def card_text(self, granularity: str) -> str:
        return (
            f"OBS, then masks and weights refined by ADMM ({self.iterations} steps at most, first penalty "
            f"{self.rho}) and re-fitted; no layer kept worse than OBS"
        )

    def admm_settings(self) -> AdmmSettings:
        return AdmmSettings(
            self.iterations,
            self.rho,
            self.rho_growth,
            self.rho_every,
            self.refit_iterations,
            self.refit_tolerance,
            getattr(torch, self.step_dtype),
            self.thorough_below,
        )
