"""diffusers model classes whose config records per-block pruned shapes.

This module path is written into every structured checkpoint's ``model_index.json``
(``["obsdiff_hub.models", "OBSDiffUNet"]``), so it is the stable import path of the classes.

A structurally pruned block has its own head count and FFN width, which a stock diffusers
config cannot describe. Each class here takes every argument of its base class plus
``obsdiff_structure`` (module path → heads or hidden width) and rebuilds those modules right
after the dense skeleton is built, so under ``from_pretrained`` (meta device) no dense weight
is ever materialised. Their ``from_pretrained`` also takes ``verify=True`` (sha256 manifest)
and ``sparse_kernels=True`` (2:4 kernels), and turns load failures into one line naming the
file and module. diffusers' own classes are left exactly as diffusers ships them.
"""

from __future__ import annotations

from diffusers import ModelMixin

from ..errors import first_line
from .building import (
    base_class_for,
    build_model,
    dense_structure,
    kept_record,
    promote,
    pruned_class_for,
)
from .classes import (
    BASE_CLASSES,
    PRUNED_CLASSES,
    OBSDiffControlNet,
    OBSDiffFluxTransformer,
    OBSDiffSD3Transformer,
    OBSDiffUNet,
)
from .keys import KEPT_KEY, PROVENANCE_KEY, STRUCTURE_KEY, plain_config, provenance, stamp_provenance
from .loaders import DenseAdapterMixin, PrunedLoadingMixin

__all__ = [
    "BASE_CLASSES",
    "KEPT_KEY",
    "PROVENANCE_KEY",
    "PRUNED_CLASSES",
    "STRUCTURE_KEY",
    "DenseAdapterMixin",
    "ModelMixin",
    "OBSDiffControlNet",
    "OBSDiffFluxTransformer",
    "OBSDiffSD3Transformer",
    "OBSDiffUNet",
    "PrunedLoadingMixin",
    "base_class_for",
    "build_model",
    "dense_structure",
    "first_line",
    "kept_record",
    "plain_config",
    "promote",
    "provenance",
    "pruned_class_for",
    "stamp_provenance",
]
