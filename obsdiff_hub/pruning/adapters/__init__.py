"""Architecture adapters: which layers of each diffusers family OBS-Diff prunes, and how they couple."""

from __future__ import annotations

from torch import nn

from .base import (
    ArchitectureAdapter,
    BasicUnit,
    BlockUnit,
    HeadCoupling,
    LinearSite,
    NeuronCoupling,
    Site,
    StructuredSite,
)
from .flux import FluxAdapter
from .mmdit import MMDiTAdapter
from .unet import UNetAdapter

ADAPTERS: tuple[ArchitectureAdapter, ...] = (UNetAdapter(), MMDiTAdapter(), FluxAdapter())


def adapter_for(model: nn.Module) -> ArchitectureAdapter:
    """The adapter for ``model``, or a ``ValueError`` that lists the supported classes."""
    for adapter in ADAPTERS:
        if adapter.matches(model):
            return adapter
    supported = ", ".join(a.model_class_name for a in ADAPTERS)
    raise ValueError(f"unsupported model class {type(model).__name__}; obsdiff-hub prunes {supported} (and subclasses)")


__all__ = [
    "ADAPTERS",
    "ArchitectureAdapter",
    "BasicUnit",
    "BlockUnit",
    "HeadCoupling",
    "LinearSite",
    "NeuronCoupling",
    "Site",
    "StructuredSite",
    "adapter_for",
]
