"""What this package knows of each diffusers model family, and nothing else.

Per family (``unet``, ``mmdit``, ``flux``): which linear layers OBS-Diff targets, how they group
into basic units, which heads and FFN neurons couple which rows and columns (``base``); how to
remove heads and neurons physically and rebuild pruned shapes (``surgery``); seeded forward
inputs (``inputs``); which pipeline component is the denoiser (``components``); 2:4 sparse
kernels (``sparse_kernels``); the original single-file key layouts (``ldm_keys``,
``original_keys``). The engine, the model classes and the loaders all read models
through this description.
"""

from __future__ import annotations

from torch import nn

from ..errors import InputError
from .base import (
    Architecture,
    BasicUnit,
    BlockUnit,
    HeadCoupling,
    LinearSite,
    NeuronCoupling,
    Site,
    StructuredSite,
)
from .flux import FluxArchitecture
from .mmdit import MMDiTArchitecture
from .unet import UNetArchitecture

ARCHITECTURES: tuple[Architecture, ...] = (UNetArchitecture(), MMDiTArchitecture(), FluxArchitecture())


def architecture_of(model: nn.Module) -> Architecture:
    """The architecture for ``model``, or an :class:`InputError` that lists the supported classes."""
    for architecture in ARCHITECTURES:
        if architecture.matches(model):
            return architecture
    supported = ", ".join(a.model_class_name for a in ARCHITECTURES)
    raise InputError(
        f"unsupported model class {type(model).__name__}; obsdiff-hub prunes {supported} (and subclasses)"
    )


__all__ = [
    "ARCHITECTURES",
    "Architecture",
    "BasicUnit",
    "BlockUnit",
    "HeadCoupling",
    "LinearSite",
    "NeuronCoupling",
    "Site",
    "StructuredSite",
    "architecture_of",
]
