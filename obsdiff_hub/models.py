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

import inspect
import os
from typing import Any, Callable

from accelerate import init_empty_weights
from diffusers import (
    FluxTransformer2DModel,
    ModelMixin,
    SD3Transformer2DModel,
    UNet2DConditionModel,
)

from ._version import __version__
from .architectures import adapter_for
from .architectures.sparse_kernels import enable_sparse_kernels
from .architectures.surgery import apply_structure, structure_of
from .errors import CheckpointError, InputError
from .hub import HubClient, cached_snapshot, fetch_verified
from .storage.diagnostics import diagnose

STRUCTURE_KEY = "obsdiff_structure"
# Leading underscore: diffusers keeps private config keys through save/load without passing
# them to __init__, so plain classes load unstructured checkpoints without warnings.
PROVENANCE_KEY = "_obsdiff_provenance"


def _pruned_init(base: type[ModelMixin]) -> Callable[..., None]:
    """An ``__init__`` with the base class's signature plus ``obsdiff_structure``.

    diffusers reads the accepted config keys from ``inspect.signature(cls.__init__)``; a
    bare ``**kwargs`` would silently build a default-sized model instead.
    """

    def __init__(
        self: ModelMixin,
        *args: Any,
        obsdiff_structure: dict[str, int] | None = None,
        **kwargs: Any,
    ) -> None:
        base.__init__(self, *args, **kwargs)
        self.register_to_config(obsdiff_structure=obsdiff_structure or {})
        if obsdiff_structure:
            apply_structure(self, adapter_for(self), dict(obsdiff_structure))

    base_parameters = list(inspect.signature(base.__init__).parameters.values())
    extra = inspect.Parameter(STRUCTURE_KEY, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=dict | None)
    __init__.__signature__ = inspect.Signature(base_parameters + [extra])  # type: ignore[attr-defined]
    __init__.__doc__ = f"{base.__name__}'s arguments, plus the pruned shapes (see module docstring)."
    return __init__


class _PrunedLoading:
    """``from_pretrained`` of the OBSDiff classes: the base loader plus verification, kernels and diagnostics."""

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        *args: Any,
        verify: bool = False,
        sparse_kernels: bool = False,
        **kwargs: Any,
    ) -> Any:
        """diffusers' ``from_pretrained`` (all its arguments), plus:

        ``verify``: check the files against the repo's ``obsdiff-manifest.json`` first (a
        mismatching file is deleted from the snapshot and the load refused).
        ``sparse_kernels``: swap 2:4-sparse Linear weights to semi-structured sparse
        kernels (CUDA, compute capability ≥ 8.0, fp16/bf16).
        A failing load is explained in one line when the cause is found (missing shard,
        truncated file, config/weights mismatch naming the module).
        """
        source = str(pretrained_model_name_or_path)
        if verify:
            fetch_verified(
                source, revision=kwargs.get("revision"), subfolder=kwargs.get("subfolder"), cache_dir=kwargs.get("cache_dir"),
                local_files_only=bool(kwargs.get("local_files_only", False)), client=HubClient(token=kwargs.get("token")),
            )
        try:
            model = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)  # type: ignore[misc]
        except Exception as error:
            snapshot = cached_snapshot(source, kwargs.get("revision"), kwargs.get("cache_dir"))
            folder = snapshot / (kwargs.get("subfolder") or "") if snapshot is not None else None
            reason = diagnose(folder, cls) if folder is not None and folder.is_dir() else None
            if reason is None:
                raise
            raise CheckpointError(reason) from error
        if sparse_kernels:
            enable_sparse_kernels(model)
        return model


class OBSDiffUNet(_PrunedLoading, UNet2DConditionModel):
    """``UNet2DConditionModel`` (SD 2.1, SDXL) with per-block head counts and GEGLU widths."""

    __init__ = _pruned_init(UNet2DConditionModel)


class OBSDiffSD3Transformer(_PrunedLoading, SD3Transformer2DModel):
    """``SD3Transformer2DModel`` (SD3, SD3.5) with per-block joint-attention heads and FFN widths."""

    __init__ = _pruned_init(SD3Transformer2DModel)


class OBSDiffFluxTransformer(_PrunedLoading, FluxTransformer2DModel):
    """``FluxTransformer2DModel`` with per-block heads, FFN widths and single-block MLP widths."""

    __init__ = _pruned_init(FluxTransformer2DModel)


PRUNED_CLASSES: dict[type[ModelMixin], type[ModelMixin]] = {
    UNet2DConditionModel: OBSDiffUNet,
    SD3Transformer2DModel: OBSDiffSD3Transformer,
    FluxTransformer2DModel: OBSDiffFluxTransformer,
}
BASE_CLASSES: tuple[type[ModelMixin], ...] = tuple(PRUNED_CLASSES)


def provenance(**fields: Any) -> dict[str, str]:
    """String → string provenance (safetensors metadata allows nothing else); None fields are dropped."""
    record = {"obsdiff_hub_version": __version__}
    record.update({k: str(v) for k, v in fields.items() if v is not None})
    return record


def base_class_for(model_or_name: ModelMixin | type | str) -> type[ModelMixin]:
    """The diffusers base class of a model instance or class, or of a base or OBSDiff class name."""
    for base, pruned in PRUNED_CLASSES.items():
        if isinstance(model_or_name, str):
            if model_or_name in (base.__name__, pruned.__name__):
                return base
        elif isinstance(model_or_name, type) and issubclass(model_or_name, base) or isinstance(model_or_name, base):
            return base
    name = model_or_name if isinstance(model_or_name, str) else getattr(model_or_name, "__name__", type(model_or_name).__name__)
    raise InputError(f"unsupported model class {name!r}; supported: {', '.join(b.__name__ for b in BASE_CLASSES)}")


def pruned_class_for(model_or_name: ModelMixin | type | str) -> type[ModelMixin]:
    """The OBSDiff class for a model's (or class name's) diffusers base class."""
    return PRUNED_CLASSES[base_class_for(model_or_name)]


def plain_config(config: dict[str, Any]) -> dict[str, Any]:
    """A config without the private (``_``) and obsdiff keys: the base class's arguments."""
    return {k: v for k, v in config.items() if not k.startswith("_") and k != STRUCTURE_KEY}


def build_model(
    config: dict[str, Any], *, structure: dict[str, int] | None = None, empty: bool = True, base: type[ModelMixin] | None = None
) -> ModelMixin:
    """The one place a model is built from a config: the dense base class (``base``, or the one
    ``_class_name`` names), or its OBSDiff class when ``structure`` prunes anything.
    ``empty``: parameters on the meta device (no memory)."""
    base = base or base_class_for(str(config.get("_class_name", "")))
    cls, extra = (PRUNED_CLASSES[base], {STRUCTURE_KEY: dict(structure)}) if structure else (base, {})
    if not empty:
        return cls.from_config({**plain_config(config), **extra})
    with init_empty_weights():
        return cls.from_config({**plain_config(config), **extra})


def dense_structure(config: dict[str, Any], base: type[ModelMixin] | None = None) -> dict[str, int]:
    """Heads and widths of the dense model a config describes."""
    skeleton = build_model(config, base=base)
    return structure_of(skeleton, adapter_for(skeleton))


def promote(model: ModelMixin, provenance: dict[str, str] | None = None) -> ModelMixin:
    """``model`` as the class its checkpoint must be loaded with, provenance in its config.

    A model whose shapes were pruned becomes a new instance of its OBSDiff class, built on
    the meta device from the config plus the pruned structure, that takes over the existing
    tensors (no copy); others are returned as they are. The config then describes the
    shapes, so ``save_pretrained`` and ``push_to_hub`` write loadable checkpoints.
    """
    structure = structure_of(model, adapter_for(model))
    config = dict(model.config)
    base = base_class_for(model)
    pruned = structure != dense_structure(config, base)
    if pruned and not isinstance(model, tuple(PRUNED_CLASSES.values())):
        promoted = build_model(config, structure=structure, base=base)
        promoted.load_state_dict(model.state_dict(), strict=True, assign=True)
        for name, buffer in model.named_buffers():  # non-persistent buffers are not in the state dict
            owner, _, leaf = name.rpartition(".")
            promoted.get_submodule(owner)._buffers[leaf] = buffer
        if hasattr(model, "attn_processors"):
            promoted.set_attn_processor(model.attn_processors)
        private = {k: v for k, v in config.items() if k.startswith("_") and k not in ("_class_name", "_diffusers_version")}
        promoted.register_to_config(**private)
        model = promoted.train(model.training)
    elif pruned:
        model.register_to_config(**{STRUCTURE_KEY: structure})
    if provenance is not None:
        model.register_to_config(**{PROVENANCE_KEY: dict(provenance)})
    return model


__all__ = [
    "BASE_CLASSES",
    "ModelMixin",
    "OBSDiffFluxTransformer",
    "OBSDiffSD3Transformer",
    "OBSDiffUNet",
    "base_class_for",
    "build_model",
    "promote",
    "provenance",
    "pruned_class_for",
]
