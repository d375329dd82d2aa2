"""The pruned model classes: diffusers' own, plus per-block head counts and FFN widths in the config."""

from __future__ import annotations

import inspect
from typing import Any, Callable

from diffusers import ControlNetModel, FluxTransformer2DModel, ModelMixin, SD3Transformer2DModel, UNet2DConditionModel

from ..architectures import Architecture, architecture_of
from ..architectures.surgery import apply_structure
from ..architectures.unet import ControlNetArchitecture
from ..storage.files import check_config_bounds
from .keys import STRUCTURE_KEY
from .loaders import DenseAdapterMixin, PrunedLoadingMixin

# The classes' public home: diffusers writes it into model_index.json (["obsdiff_hub.models", "OBSDiffUNet"]),
# so it is the stable import path whichever submodule defines them.
MODULE = "obsdiff_hub.models"


def _pruned_init(base: type[ModelMixin], architecture: Architecture | None = None) -> Callable[..., None]:
    """An ``__init__`` with the base class's signature plus ``obsdiff_structure`` (``architecture``: the
    one that reads the shapes, default the model's own).

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
            apply_structure(self, architecture or architecture_of(self), dict(obsdiff_structure))

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


class OBSDiffControlNet(ControlNetModel):
    """``ControlNetModel`` with the pruned head counts and GEGLU widths of the UNet it was made from, for
    ControlNets trained on (and deployed with) a pruned UNet. Saves and loads like any diffusers model."""

    __module__ = MODULE
    __init__ = _pruned_init(ControlNetModel, ControlNetArchitecture())

    @classmethod
    def from_unet(
        cls,
        unet: UNet2DConditionModel,
        controlnet_conditioning_channel_order: str = "rgb",
        conditioning_embedding_out_channels: tuple[int, ...] | None = (16, 32, 96, 256),
        load_weights_from_unet: bool = True,
        conditioning_channels: int = 3,
    ) -> OBSDiffControlNet:
        """diffusers' ``ControlNetModel.from_unet`` (same arguments) for a pruned UNet: the copied encoder half
        has the UNet's pruned shapes, and with ``load_weights_from_unet`` its pruned weights."""
        controlnet = super().from_unet(
            unet,
            controlnet_conditioning_channel_order=controlnet_conditioning_channel_order,
            conditioning_embedding_out_channels=conditioning_embedding_out_channels,
            load_weights_from_unet=False,
            conditioning_channels=conditioning_channels,
        )
        structure = {
            key: count
            for key, count in (unet.config.get(STRUCTURE_KEY) or {}).items()
            if key.startswith(("down_blocks.", "mid_block."))
        }
        apply_structure(controlnet, ControlNetArchitecture(), structure)
        controlnet.register_to_config(**{STRUCTURE_KEY: structure})
        if load_weights_from_unet:
            for name in ENCODER_HALF:
                source, target = getattr(unet, name, None), getattr(controlnet, name, None)
                if source is not None and target is not None:
                    target.load_state_dict(source.state_dict())
        return controlnet  # type: ignore[return-value]


# What ControlNetModel.from_unet copies from the UNet.
ENCODER_HALF = (
    "conv_in",
    "time_proj",
    "time_embedding",
    "class_embedding",
    "add_embedding",
    "down_blocks",
    "mid_block",
)

PRUNED_CLASSES: dict[type[ModelMixin], type[ModelMixin]] = {
    UNet2DConditionModel: OBSDiffUNet,
    SD3Transformer2DModel: OBSDiffSD3Transformer,
    FluxTransformer2DModel: OBSDiffFluxTransformer,
}
BASE_CLASSES: tuple[type[ModelMixin], ...] = tuple(PRUNED_CLASSES)
