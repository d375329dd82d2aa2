"""Opt-in 2:4 sparse tensor-core kernels for N:M-pruned checkpoints (CUDA, Ampere or newer)."""

from __future__ import annotations

import torch
from torch import nn
from torch.sparse import to_sparse_semi_structured

from ..errors import InputError, UnsupportedEnvironmentError


def is_2_of_4(weight: torch.Tensor) -> bool:
    """True when every group of 4 consecutive input weights of every row has at least 2 zeros."""
    if weight.dim() != 2 or weight.shape[1] % 4:
        return False
    return bool(((weight == 0).reshape(weight.shape[0], -1, 4).sum(-1) >= 2).all())


def enable_sparse_kernels(model: nn.Module) -> int:
    """Swap every 2:4-sparse Linear weight to ``torch.sparse.to_sparse_semi_structured``.

    Returns the number of layers converted. Needs the model on a CUDA GPU with compute
    capability ≥ 8.0 in fp16 or bf16 (PyTorch's semi-structured kernels); raises otherwise.
    """
    params = list(model.parameters())
    device, dtype = params[0].device, params[0].dtype
    if device.type != "cuda" or torch.cuda.get_device_capability(device) < (8, 0):
        raise UnsupportedEnvironmentError(
            "`sparse_kernels` needs the model on a CUDA GPU with compute capability >= 8.0; put it on one "
            "(`device` cuda)"
        )
    if dtype not in (torch.float16, torch.bfloat16):
        raise InputError(f"`sparse_kernels` needs the dtype float16 or bfloat16, got {dtype}")
    converted = 0
    for module in model.modules():
        if isinstance(module, nn.Linear) and is_2_of_4(module.weight) and min(module.weight.shape) >= 64:
            module.weight = nn.Parameter(to_sparse_semi_structured(module.weight.detach()), requires_grad=False)
            converted += 1
    if converted == 0:
        raise InputError("no 2:4-sparse Linear layers found; `sparse_kernels` only applies to N:M (2:4) checkpoints")
    return converted
