"""The dtype policy of a run: calibrate in one dtype, ship the checkpoint's values untouched.

The *checkpoint dtype* is the dtype the denoiser arrives in (loaders read it from the weight
files). Calibration may run in another *compute dtype*. Every parameter the run does not
prune keeps its checkpoint value bit for bit; every pruned weight goes from the fp32 solve
to the checkpoint dtype once, and the calibration of later packages sees exactly that
rounded value. When the compute dtype holds every checkpoint value exactly (fp32 for
fp16/bf16 checkpoints, or the same dtype) the model itself carries those values; when it
does not (bf16 compute for an fp16 checkpoint, half compute for fp32), a master copy in the
checkpoint dtype is kept on the CPU and becomes the result.
"""

from __future__ import annotations

import copy

import torch
from accelerate.utils import named_module_tensors, set_module_tensor_to_device
from torch import nn

from ..dtypes import DTYPE_NAMES
from ..errors import InputError, UnsupportedEnvironmentError
from ..memory import release_freed_memory

DTYPES = {name: getattr(torch, name) for name in DTYPE_NAMES}
_WIDENS_EXACTLY = {
    (torch.float16, torch.float32),
    (torch.bfloat16, torch.float32),
    (torch.float16, torch.float64),
    (torch.bfloat16, torch.float64),
    (torch.float32, torch.float64),
}


def floating_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of most of a model's floating-point parameters (by element count)."""
    counts: dict[torch.dtype, int] = {}
    for p in model.parameters():
        if p.is_floating_point():
            counts[p.dtype] = counts.get(p.dtype, 0) + p.numel()
    if not counts:
        raise InputError(f"{type(model).__name__} has no floating-point parameters")
    return max(counts, key=counts.__getitem__)


def default_compute_dtype(checkpoint: torch.dtype, device: torch.device) -> torch.dtype:
    """The checkpoint's own dtype; on the CPU, half types compute in fp32 (exact, and CPU half kernels are slow)."""
    if device.type == "cpu" and checkpoint in (torch.float16, torch.bfloat16):
        return torch.float32
    return checkpoint


def check_device_dtype(device: torch.device, dtype: torch.dtype) -> None:
    """One-line errors for a device that does not exist here or a dtype it cannot compute in."""
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UnsupportedEnvironmentError(
                f"device {device} was requested but CUDA is not available here; set `device` to cpu"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UnsupportedEnvironmentError(
                f"device {device} does not exist: this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
        if dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
            raise UnsupportedEnvironmentError(
                f"{torch.cuda.get_device_name(device)} does not support bfloat16; set `dtype` to float16 or float32"
            )
    elif device.type != "cpu":
        raise InputError(f"unsupported device {device}; use cpu or cuda[:N]")


def holds_exactly(compute: torch.dtype, checkpoint: torch.dtype) -> bool:
    """Whether every ``checkpoint`` value is exactly a ``compute`` value (the same dtype, or a wider one)."""
    return compute == checkpoint or (checkpoint, compute) in _WIDENS_EXACTLY


def check_offload_dtype(model: nn.Module, compute: torch.dtype | None, device: torch.device) -> torch.dtype:
    """The checkpoint dtype of ``model``, or a one-line error when ``compute`` cannot hold its values: offloaded
    blocks are stored as the checkpoint, and onloading must not round them."""
    checkpoint = floating_dtype(model)
    compute = compute or default_compute_dtype(checkpoint, device)
    if not holds_exactly(compute, checkpoint):
        name = str(checkpoint).removeprefix("torch.")
        allowed = name if checkpoint == torch.float32 else f"{name} or float32"
        raise InputError(
            f"offloading computes in a dtype that holds the {name} checkpoint's values; set `dtype` to {allowed}, "
            f"not {str(compute).removeprefix('torch.')}"
        )
    return checkpoint


def resident_to(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` on ``device``, except its offloaded tensors (on the meta device until their block runs)."""
    for name, tensor in named_module_tensors(model, include_buffers=True, recurse=True):
        if not tensor.is_meta and tensor.device != device:
            set_module_tensor_to_device(model, name, device, clear_cache=False)
    return model


class Precision:
    """Carries one run's weights: ``working`` (compute dtype, on the device) and the result."""

    def __init__(
        self, model: nn.Module, compute: torch.dtype | None, device: torch.device, offloaded: bool = False
    ) -> None:
        self.checkpoint = floating_dtype(model)
        self.compute = compute or default_compute_dtype(self.checkpoint, device)
        exact = holds_exactly(self.compute, self.checkpoint)
        # Lossy compute: keep the checkpoint values (whole model, checkpoint dtype) on the CPU.
        self.master: nn.Module | None = None if exact else copy.deepcopy(model).to("cpu")
        if self.compute != self.checkpoint:
            model.to(dtype=self.compute)
            release_freed_memory()
        self.working = resident_to(model, device) if offloaded else model.to(device)
        self.device = device

    @property
    def models(self) -> list[nn.Module]:
        """Every model an edit must reach (working first)."""
        return [self.working] + ([self.master] if self.master is not None else [])

    def write(self, path: str, weight: torch.Tensor) -> torch.Tensor:
        """Store a solved weight (fp32) at ``path``: rounded to the checkpoint dtype once, then
        widened or narrowed for the working copy. Returns the checkpoint-dtype value."""
        value = weight.to(self.checkpoint)
        for model in self.models:
            target = model.get_submodule(path).weight
            target.data = value.to(device=target.device, dtype=target.dtype).contiguous()
        return value

    def result(self) -> nn.Module:
        """The pruned model in the checkpoint dtype, on the working device."""
        if self.master is None:
            if self.compute == self.checkpoint:
                return self.working
            result = self.working.to(self.checkpoint)
        else:
            device = next(self.working.parameters()).device
            self.working.to("meta")  # the lossy copy is not needed any more
            result = self.master.to(device)
        release_freed_memory()
        return result
