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

from ..errors import InputError

WeightingStrategy = Literal["uniform", "linear_increase", "linear_decrease", "log_increase", "log_decrease"]
WEIGHTING_STRATEGIES: tuple[str, ...] = (
    "uniform",
    "linear_increase",
    "linear_decrease",
    "log_increase",
    "log_decrease",
)
AccumulationPrecision = Literal["fp32", "tf32", "bf16"]
ACCUMULATION_PRECISIONS: tuple[str, ...] = ("fp32", "tf32", "bf16")


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
        raise InputError(f"unknown weighting strategy {strategy!r}; choose one of {', '.join(WEIGHTING_STRATEGIES)}")
    if num_steps < 1:
        raise InputError(f"num_steps must be at least 1, got {num_steps}")
    if not 0 < alpha_min <= alpha_max:
        raise InputError(f"need 0 < alpha_min <= alpha_max, got alpha_min={alpha_min}, alpha_max={alpha_max}")
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


def round_inputs(x: torch.Tensor, precision: AccumulationPrecision) -> torch.Tensor:
    """``x`` (fp32) with its mantissa rounded as the low-precision GEMM would read it.

    ``tf32`` keeps 10 mantissa bits (round to nearest even), ``bf16`` 7. Used on devices
    without those tensor cores, so the Hessian error of a precision setting can be measured
    anywhere (``benchmarks/hessian_precision.py``); ``fp32`` returns ``x`` unchanged.
    """
    if precision == "fp32":
        return x
    if precision == "bf16":
        return x.to(torch.bfloat16).to(torch.float32)
    bits = x.contiguous().view(torch.int32)
    rounded = (bits + 0x0FFF + ((bits >> 13) & 1)) & ~0x1FFF
    return rounded.view(torch.float32)


@contextmanager
def _tf32_matmuls(enabled: bool) -> Iterator[None]:
    """Scope CUDA's TF32 matmul setting to one accumulation, restoring the caller's setting."""
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high" if enabled else "highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


# Lower-panel accumulation pays off once a panel GEMM is still large (measured on CPU:
# 1.6-1.7x faster than one full GEMM at d >= 5120, see BENCHMARKS.md).
_PANEL = 1024


def _compute_device(inputs: torch.Tensor, total: torch.Tensor) -> torch.device:
    """Where a product is computed: on the inputs' accelerator even when the sum is kept in host
    memory (only the d×d panels cross, never the activations), else where the sum lives."""
    return inputs.device if inputs.device.type != "cpu" else total.device


def _add_product(total: torch.Tensor, a: torch.Tensor, b: torch.Tensor, alpha: float) -> None:
    """``total += alpha · a @ b`` in fp32: in place when all three share a device and dtype,
    else through one fp32 product (bf16 inputs, or a sum kept on another device)."""
    if a.device == total.device and a.dtype == torch.float32:
        total.addmm_(a, b, alpha=alpha)
        return
    product = torch.mm(a, b) if a.dtype == torch.float32 else torch.mm(a, b, out_dtype=torch.float32)
    total.add_(product.to(total.device), alpha=alpha)


class HessianAccumulator:
    """Accumulates ``H = 2 Σ α X Xᵀ / Σ α·samples`` for one layer input, in fp32.

    Inputs may have any leading shape; the last dimension is the layer's input width.
    The sum is updated in place (``addmm_``), so no d×d temporary is allocated per
    hooked forward. ``H`` is symmetric: for wide inputs only the lower block triangle is
    accumulated, in row panels of 1024 (about half the FLOPs), and mirrored on read.
    ``precision``: ``fp32`` is strict; ``tf32`` and ``bf16`` read the inputs at that
    precision with fp32 accumulation (CUDA tensor cores; elsewhere the rounding is
    emulated, to measure its error, see ``benchmarks/hessian_precision.py``).
    ``device``: where the sum is kept. A sum in host memory fed CUDA inputs is updated from
    products computed on the GPU, panel by panel (``hessian_device: cpu``).
    """

    def __init__(
        self,
        num_columns: int,
        *,
        device: torch.device | str | None = None,
        precision: AccumulationPrecision = "fp32",
    ) -> None:
        if num_columns < 1:
            raise InputError(f"num_columns must be positive, got {num_columns}")
        if precision not in ACCUMULATION_PRECISIONS:
            raise InputError(f"precision must be one of {', '.join(ACCUMULATION_PRECISIONS)}, got {precision!r}")
        self.num_columns = num_columns
        self.precision: AccumulationPrecision = precision
        self._sum = torch.zeros(num_columns, num_columns, dtype=torch.float32, device=device)
        self.total_weight = 0.0  # Σ α · samples, kept in Python float64
        self.num_samples = 0

    @property
    def device(self) -> torch.device:
        return self._sum.device

    @property
    def sum(self) -> torch.Tensor:
        """The raw accumulated ``2 Σ α X Xᵀ`` (lower block triangle for wide inputs); for reductions."""
        return self._sum

    def add(self, inputs: torch.Tensor, weight: float = 1.0) -> None:
        """Add ``2·weight·XᵀX`` for the rows of ``inputs`` (shape ``[..., num_columns]``)."""
        if inputs.shape[-1] != self.num_columns:
            raise InputError(f"input width {inputs.shape[-1]} does not match the Hessian's {self.num_columns} columns")
        if weight < 0:
            raise InputError(f"timestep weight must be non-negative, got {weight}")
        x = inputs.detach().reshape(-1, self.num_columns)
        device = _compute_device(x, self._sum)
        cuda = device.type == "cuda"
        if self.precision == "bf16" and cuda:
            x = x.to(device=device, dtype=torch.bfloat16)
        else:
            x = round_inputs(x.to(device=device, dtype=torch.float32), "fp32" if cuda else self.precision)
        with _tf32_matmuls(cuda and self.precision == "tf32"):
            self._accumulate(x, 2.0 * weight)
        self.total_weight += weight * x.shape[0]
        self.num_samples += x.shape[0]

    def _accumulate(self, x: torch.Tensor, alpha: float) -> None:
        d = self.num_columns
        in_place = x.dtype == torch.float32 and x.device == self._sum.device
        if in_place and d < 2 * _PANEL:
            self._sum.addmm_(x.T, x, alpha=alpha)
            return
        for start in range(0, d, _PANEL):  # panels bound the temporary of a bf16 or cross-device product
            stop = min(start + _PANEL, d)
            _add_product(self._sum[start:stop, :stop], x[:, start:stop].T, x[:, :stop], alpha)

    def merge(self, other: HessianAccumulator) -> None:
        """Add another accumulator's sums into this one (e.g. from another calibration worker)."""
        if other.num_columns != self.num_columns:
            raise InputError(f"cannot merge a {other.num_columns}-column Hessian into a {self.num_columns}-column one")
        self._sum.add_(other._sum.to(self._sum.device))
        self.total_weight += other.total_weight
        self.num_samples += other.num_samples

    def hessian(self) -> torch.Tensor:
        """The normalised, symmetric Hessian (a new tensor). Raises if nothing was accumulated."""
        if self.total_weight <= 0:
            raise InputError(
                "no calibration inputs reached this layer; check that the calibration run calls the model"
            )
        # The lower triangle is complete in both accumulation paths; mirroring it makes H exactly symmetric.
        return (torch.tril(self._sum) + torch.tril(self._sum, -1).T).div_(self.total_weight)

    def release(self) -> None:
        """Free the d×d buffer once the layer has been solved."""
        self._sum = torch.empty(0, device=self._sum.device)


class CrossTermAccumulator:
    """Accumulates ``G = 2 Σ α (X − X̂)ᵀ X̂ / Σ α·samples`` for asymmetric calibration.

    ``X`` are a layer's inputs in the dense network, ``X̂`` the inputs the same calls give in
    the network being pruned (the same trajectories). With the layer's Hessian ``H`` of ``X̂``,
    ``W + W G H⁻¹`` is the weight that reproduces the *dense* output ``W X`` from ``X̂`` (see
    :func:`obsdiff_hub.maths.factor.asymmetric_target`). Normalised like the Hessian.
    """

    def __init__(self, num_columns: int, *, device: torch.device | str | None = None) -> None:
        self.num_columns = num_columns
        self._sum = torch.zeros(num_columns, num_columns, dtype=torch.float32, device=device)
        self.total_weight = 0.0
        self.num_samples = 0

    @property
    def sum(self) -> torch.Tensor:
        return self._sum

    def add(self, dense: torch.Tensor, pruned: torch.Tensor, weight: float = 1.0) -> None:
        """Add ``2·weight·(dense − pruned)ᵀ pruned`` for matching rows of the two inputs."""
        if dense.shape != pruned.shape or dense.shape[-1] != self.num_columns:
            raise InputError(
                f"dense inputs {tuple(dense.shape)} and pruned inputs {tuple(pruned.shape)} must match, width "
                f"{self.num_columns}"
            )
        device = _compute_device(pruned, self._sum)
        x_hat = pruned.detach().reshape(-1, self.num_columns).to(device=device, dtype=torch.float32)
        delta = dense.detach().reshape(-1, self.num_columns).to(device=device, dtype=torch.float32) - x_hat
        for start in range(0, self.num_columns, _PANEL):
            stop = min(start + _PANEL, self.num_columns)
            _add_product(self._sum[start:stop], delta[:, start:stop].T, x_hat, 2.0 * weight)
        self.total_weight += weight * x_hat.shape[0]
        self.num_samples += x_hat.shape[0]

    def cross_term(self) -> torch.Tensor:
        if self.total_weight <= 0:
            raise InputError("no calibration inputs reached this layer")
        return self._sum / self.total_weight

    def release(self) -> None:
        self._sum = torch.empty(0, device=self._sum.device)
