"""Timestep-aware Hessians for the layer problem ``min ||W X - Ŵ X||²``.

The Hessian of that objective is ``H = 2 X Xᵀ``. OBS-Diff weights the calibration
inputs of each denoising step by ``α_t`` so that early steps, whose errors compound
over the rest of the trajectory, count more (SPEC §1). This module knows torch only.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterator, Literal

import torch

WeightingStrategy = Literal["uniform", "linear_increase", "linear_decrease", "log_increase", "log_decrease"]
WEIGHTING_STRATEGIES: tuple[str, ...] = (
    "uniform",
    "linear_increase",
    "linear_decrease",
    "log_increase",
    "log_decrease",
)
AccumulationPrecision = Literal["fp32", "tf32"]


def timestep_weights(
    strategy: WeightingStrategy,
    num_steps: int,
    alpha_min: float = 0.8,
    alpha_max: float = 1.2,
) -> torch.Tensor:
    """Return the weight ``α`` of every sampling step (index 0 = first step), float64.

    ``log_decrease`` is the paper's default:
    ``α_t = α_min + (α_max − α_min) / ln(T) · ln(T − t + 1)`` with ``t = index + 1``,
    which falls from ``α_max`` at the first step to ``α_min`` at the last.
    ``log_increase`` is its mirror; the linear strategies interpolate between the
    same end points; ``uniform`` gives every step weight 1.
    """
    if strategy not in WEIGHTING_STRATEGIES:
        raise ValueError(f"unknown weighting strategy {strategy!r}; choose one of {', '.join(WEIGHTING_STRATEGIES)}")
    if num_steps < 1:
        raise ValueError(f"num_steps must be at least 1, got {num_steps}")
    if not 0 < alpha_min <= alpha_max:
        raise ValueError(f"need 0 < alpha_min <= alpha_max, got alpha_min={alpha_min}, alpha_max={alpha_max}")
    if strategy == "uniform":
        return torch.ones(num_steps, dtype=torch.float64)
    if num_steps == 1:  # every ramp degenerates to its first value; normalisation makes it irrelevant
        first = alpha_max if strategy.endswith("decrease") else alpha_min
        return torch.full((1,), first, dtype=torch.float64)
    t = torch.arange(1, num_steps + 1, dtype=torch.float64)
    span = alpha_max - alpha_min
    if strategy == "log_decrease":
        return alpha_min + span / math.log(num_steps) * torch.log(num_steps - t + 1)
    if strategy == "log_increase":
        return alpha_min + span / math.log(num_steps) * torch.log(t)
    ramp = (t - 1) / (num_steps - 1)
    if strategy == "linear_increase":
        return alpha_min + span * ramp
    return alpha_max - span * ramp  # linear_decrease


@contextmanager
def _matmul_precision(precision: AccumulationPrecision) -> Iterator[None]:
    """Scope the fp32 matmul precision to one accumulation, restoring the caller's setting."""
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest" if precision == "fp32" else "high")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


class HessianAccumulator:
    """Accumulates ``H = 2 Σ α X Xᵀ / Σ α·samples`` for one layer input, in fp32.

    Inputs may have any leading shape; the last dimension is the layer's input width.
    The sum is updated in place with one GEMM per call (``addmm_``), so no d×d
    temporary is allocated per hooked forward. ``precision="tf32"`` lets CUDA use
    TF32 tensor cores for the GEMM (fp32 accumulation); measure its error with
    ``benchmarks/hessian_precision.py`` before choosing it.
    """

    def __init__(
        self,
        num_columns: int,
        *,
        device: torch.device | str | None = None,
        precision: AccumulationPrecision = "fp32",
    ) -> None:
        if num_columns < 1:
            raise ValueError(f"num_columns must be positive, got {num_columns}")
        if precision not in ("fp32", "tf32"):
            raise ValueError(f"precision must be 'fp32' or 'tf32', got {precision!r}")
        self.num_columns = num_columns
        self.precision: AccumulationPrecision = precision
        self._sum = torch.zeros(num_columns, num_columns, dtype=torch.float32, device=device)
        self.total_weight = 0.0  # Σ α · samples, kept in Python float64
        self.num_samples = 0

    @property
    def device(self) -> torch.device:
        return self._sum.device

    def add(self, inputs: torch.Tensor, weight: float = 1.0) -> None:
        """Add ``2·weight·XᵀX`` for the rows of ``inputs`` (shape ``[..., num_columns]``)."""
        if inputs.shape[-1] != self.num_columns:
            raise ValueError(f"input width {inputs.shape[-1]} does not match the Hessian's {self.num_columns} columns")
        if weight < 0:
            raise ValueError(f"timestep weight must be non-negative, got {weight}")
        x = inputs.detach().reshape(-1, self.num_columns).to(device=self._sum.device, dtype=torch.float32)
        with _matmul_precision(self.precision):
            self._sum.addmm_(x.T, x, alpha=2.0 * weight)
        self.total_weight += weight * x.shape[0]
        self.num_samples += x.shape[0]

    def merge(self, other: HessianAccumulator) -> None:
        """Add another accumulator's sums into this one (e.g. from another calibration worker)."""
        if other.num_columns != self.num_columns:
            raise ValueError(f"cannot merge a {other.num_columns}-column Hessian into a {self.num_columns}-column one")
        self._sum.add_(other._sum.to(self._sum.device))
        self.total_weight += other.total_weight
        self.num_samples += other.num_samples

    def hessian(self) -> torch.Tensor:
        """The normalised Hessian (a new tensor). Raises if nothing was accumulated."""
        if self.total_weight <= 0:
            raise ValueError("no calibration inputs reached this layer; check that the calibration run calls the model")
        return self._sum / self.total_weight

    def release(self) -> None:
        """Free the d×d buffer once the layer has been solved."""
        self._sum = torch.empty(0, device=self._sum.device)
