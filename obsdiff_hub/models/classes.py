"""The pruned model classes: diffusers' own, plus per-block head counts and FFN widths in the config."""

from __future__ import annotations

import inspect
from typing import Any, Callable

from diffusers import FluxTransformer2DModel, ModelMixin, SD3Transformer2DModel, UNet2DConditionModel

from ..architectures import architecture_of
from ..architectures.surgery import apply_structure
from ..storage.files import check_config_bounds
from .keys import STRUCTURE_KEY
from .loaders import DenseAdapterMixin, PrunedLoadingMixin

# The classes' public home: diffusers writes it into model_index.json (["obsdiff_hub.models", "OBSDiffUNet"]),
# so it is the stable import path whichever submodule defines them.
MODULE = "obsdiff_hub.models"


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
        check_config_bounds({**kwargs, STRUCTURE_KEY: obsdiff_structure}, f"{type(self).__name__} config")
        base.__init__(self, *args, **kwargs)
        self.register_to_config(obsdiff_structure=obsdiff_structure or {})
        if obsdiff_structure:
            apply_structure(self, architecture_of(self), dict(obsdiff_structure))

    base_parameters = list(inspect.signature(base.__init__).parameters.values())
    extra = inspect.Parameter(STRUCTURE_KEY, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=dict | None)
    __init__.__signature__ = inspect.Signature(base_parameters + [extra])  # type: ignore[attr-defined]
    __init__.__doc__ = f"{base.__name__}'s arguments, plus the pruned shapes (see module docstring)."
    return __init__


class OBSDiffUNet(DenseAdapterMixin, PrunedLoadingMixin, UNet2DConditionModel):
    """``UNet2DConditionModel`` (SD 2.1, SDXL) with per-block head counts and GEGLU widths."""

    __module__ = MODULE
    __init__ = _pruned_init(UNet2DConditionModel)


class OBSDiffSD3Transformer(DenseAdapterMixin, PrunedLoadingMixin, SD3Transformer2DModel):
    """``SD3Transformer2DModel`` (SD3, SD3.5) with per-block joint-attention heads and FFN widths."""

    __module__ = MODULE
    __init__ = _pruned_init(SD3Transformer2DModel)


class OBSDiffFluxTransformer(DenseAdapterMixin, PrunedLoadingMixin, FluxTransformer2DModel):
    """``FluxTransformer2DModel`` with per-block heads, FFN widths and single-block MLP widths."""

    __module__ = MODULE
    __init__ = _pruned_init(FluxTransformer2DModel)


PRUNED_CLASSES: dict[type[ModelMixin], type[ModelMixin]] = {
    UNet2DConditionModel: OBSDiffUNet,
    SD3Transformer2DModel: OBSDiffSD3Transformer,
    FluxTransformer2DModel: OBSDiffFluxTransformer,
}
BASE_CLASSES: tuple[type[ModelMixin], ...] = tuple(PRUNED_CLASSES)
