"""diffusers model classes whose config records per-block pruned shapes.

A structurally pruned block has its own head count and FFN width, which a stock
diffusers config cannot describe. Each class here takes every argument of its base
class plus ``obsdiff_structure`` (module path → heads or hidden width) and rebuilds
those modules right after the dense skeleton is built, so under ``from_pretrained``
(meta device) no dense weight is ever materialised.

``DiffusionPipeline.from_pretrained`` finds these classes through ``model_index.json``
(``["obsdiff_hub.models", "OBSDiffUNet"]``) once ``obsdiff_hub`` is imported; it looks
up ``ModelMixin`` on this module, hence the import below.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

from diffusers import (
    FluxTransformer2DModel,
    ModelMixin,
    SD3Transformer2DModel,
    UNet2DConditionModel,
)

from .adapters import adapter_for
from .surgery import apply_structure

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
            apply_structure(self, adapter_for(self), {k: int(v) for k, v in obsdiff_structure.items()})

    base_parameters = list(inspect.signature(base.__init__).parameters.values())
    extra = inspect.Parameter(STRUCTURE_KEY, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=dict | None)
    __init__.__signature__ = inspect.Signature(base_parameters + [extra])  # type: ignore[attr-defined]
    __init__.__doc__ = f"{base.__name__}'s arguments, plus the pruned shapes (see module docstring)."
    return __init__


class OBSDiffUNet(UNet2DConditionModel):
    """``UNet2DConditionModel`` (SD 2.1, SDXL) with per-block head counts and GEGLU widths."""

    __init__ = _pruned_init(UNet2DConditionModel)


class OBSDiffSD3Transformer(SD3Transformer2DModel):
    """``SD3Transformer2DModel`` (SD3, SD3.5) with per-block joint-attention heads and FFN widths."""

    __init__ = _pruned_init(SD3Transformer2DModel)


class OBSDiffFluxTransformer(FluxTransformer2DModel):
    """``FluxTransformer2DModel`` with per-block heads, FFN widths and single-block MLP widths."""

    __init__ = _pruned_init(FluxTransformer2DModel)


PRUNED_CLASSES: dict[type[ModelMixin], type[ModelMixin]] = {
    UNet2DConditionModel: OBSDiffUNet,
    SD3Transformer2DModel: OBSDiffSD3Transformer,
    FluxTransformer2DModel: OBSDiffFluxTransformer,
}


def register_with_diffusers() -> None:
    """Let ``DiffusionPipeline.from_pretrained`` load components declared as ``obsdiff_hub.models``.

    For Hub repos diffusers 0.42 accepts only libraries in its ``LOADABLE_CLASSES`` registry
    (otherwise it looks for a remote ``.py`` file, i.e. remote code); registering this
    module there, with ``ModelMixin``'s save/load methods, is the same extension point
    diffusers uses for ``onnxruntime.training``. No remote code is ever involved.
    """
    from diffusers.pipelines import pipeline_loading_utils

    pipeline_loading_utils.LOADABLE_CLASSES.setdefault(__name__, {"ModelMixin": ["save_pretrained", "from_pretrained"]})


BASE_CLASSES: tuple[type[ModelMixin], ...] = tuple(PRUNED_CLASSES)


def base_class_for(model_or_name: ModelMixin | str) -> type[ModelMixin]:
    """The diffusers base class of a model instance, or of a base or OBSDiff class name."""
    for base, pruned in PRUNED_CLASSES.items():
        if isinstance(model_or_name, str) and model_or_name in (base.__name__, pruned.__name__):
            return base
        if not isinstance(model_or_name, str) and isinstance(model_or_name, base):
            return base
    name = model_or_name if isinstance(model_or_name, str) else type(model_or_name).__name__
    raise ValueError(f"unsupported model class {name!r}; supported: {', '.join(b.__name__ for b in BASE_CLASSES)}")


def pruned_class_for(model: ModelMixin) -> type[ModelMixin]:
    """The obsdiff class for a model's diffusers base class."""
    return PRUNED_CLASSES[base_class_for(model)]


__all__ = [
    "BASE_CLASSES",
    "ModelMixin",
    "OBSDiffFluxTransformer",
    "OBSDiffSD3Transformer",
    "OBSDiffUNet",
    "base_class_for",
    "pruned_class_for",
]
