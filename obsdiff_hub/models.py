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
import warnings
from typing import Any, Callable, Mapping, Sequence

import torch
from accelerate import init_empty_weights
from diffusers import (
    FluxTransformer2DModel,
    ModelMixin,
    SD3Transformer2DModel,
    UNet2DConditionModel,
)
from diffusers.loaders.lora_base import _fetch_state_dict
from diffusers.utils import convert_unet_state_dict_to_peft

from ._version import __version__
from .architectures import adapter_for
from .architectures.dense_adapters import (
    map_lora_state_dict,
    slice_ip_adapter_processors,
)
from .architectures.kept import Selection, compose, decode, dense_selections
from .architectures.sparse_kernels import enable_sparse_kernels
from .architectures.surgery import apply_structure, structure_of
from .errors import CheckpointError, InputError, ObsDiffError
from .hub import HubClient, cached_snapshot, fetch
from .storage.diagnostics import diagnose
from .storage.files import check_config_bounds

STRUCTURE_KEY = "obsdiff_structure"
# Leading underscore: diffusers keeps private config keys through save/load without passing
# them to __init__, so plain classes load unstructured checkpoints without warnings.
PROVENANCE_KEY = "_obsdiff_provenance"
# Which heads and neurons of the dense base a structured checkpoint kept (architectures.kept).
KEPT_KEY = "_obsdiff_kept"


def first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


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
        if kwargs.get("use_safetensors") is False:
            raise InputError(
                "obsdiff-hub loads safetensors only (pickled weights can run code); leave `use_safetensors` at True"
            )
        kwargs["use_safetensors"] = True
        source = str(pretrained_model_name_or_path)
        if verify:
            fetch(
                source,
                revision=kwargs.get("revision"),
                subfolder=kwargs.get("subfolder"),
                cache_dir=kwargs.get("cache_dir"),
                local_files_only=bool(kwargs.get("local_files_only", False)),
                client=HubClient(token=kwargs.get("token")),
            )
        try:
            with HubClient(token=kwargs.get("token")).errors(source, maybe_folder=True):
                model = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)  # type: ignore[misc]
        except (ObsDiffError, MemoryError, torch.OutOfMemoryError):
            raise
        except Exception as error:
            snapshot = cached_snapshot(source, kwargs.get("revision"), kwargs.get("cache_dir"))
            folder = snapshot / (kwargs.get("subfolder") or "") if snapshot is not None else None
            if folder is None or not folder.is_dir():
                raise
            reason = (
                diagnose(folder, cls)
                or f"{folder}: does not load as {cls.__name__} ({type(error).__name__}: {first_line(error)})"
            )
            raise CheckpointError(reason) from error
        if sparse_kernels:
            enable_sparse_kernels(model)
        return model


class _DenseAdapters:
    """Adapters made for the dense base work on the pruned model: LoRA tensors and IP-Adapter
    projections are restricted to the kept heads and neurons; fusing into a sparse checkpoint warns."""

    def kept_selections(self) -> tuple[dict[str, Selection], bool]:
        """Per reshaped layer, the dense rows and columns it kept; and whether the checkpoint
        records its kept indices at all (checkpoints from before 0.3 do not)."""
        record = self.config.get(KEPT_KEY)  # type: ignore[attr-defined]
        if not isinstance(record, Mapping):
            return {}, not self.config.get(STRUCTURE_KEY)  # type: ignore[attr-defined]
        kept = {
            key: decode(entry, f"{type(self).__name__} config {KEPT_KEY}[{key!r}]") for key, entry in record.items()
        }
        dense = {key: int(entry["of"]) for key, entry in record.items()}
        return dense_selections(self, adapter_for(self), kept, dense), True  # type: ignore[arg-type]

    def load_lora_adapter(
        self,
        pretrained_model_name_or_path_or_dict: Any,
        prefix: str | None = "transformer",
        hotswap: bool = False,
        **kwargs: Any,
    ) -> None:
        """diffusers' ``load_lora_adapter`` (every argument), for a LoRA of the dense base or of this
        pruned model: tensors of reshaped layers are restricted to the kept rows and columns first."""
        state_dict = pretrained_model_name_or_path_or_dict
        if not isinstance(state_dict, dict):
            fetch_args = (
                "weight_name",
                "use_safetensors",
                "local_files_only",
                "cache_dir",
                "force_download",
                "proxies",
                "token",
                "revision",
                "subfolder",
            )
            state_dict, metadata = _fetch_state_dict(
                pretrained_model_name_or_path_or_dict=state_dict,
                allow_pickle=False,
                metadata=kwargs.pop("metadata", None),
                user_agent={"file_type": "attn_procs_weights", "framework": "pytorch"},
                **{k: kwargs.pop(k, None) for k in fetch_args},
            )
            kwargs["metadata"] = metadata
        if state_dict and not any("lora_A" in k or ".lokr_" in k for k in state_dict):
            state_dict = convert_unet_state_dict_to_peft(state_dict)
        selections, recorded = self.kept_selections()
        state_dict = map_lora_state_dict(state_dict, self, selections, prefix, recorded)  # type: ignore[arg-type]
        super().load_lora_adapter(state_dict, prefix=prefix, hotswap=hotswap, **kwargs)  # type: ignore[misc]

    def _convert_ip_adapter_attn_to_diffusers(
        self, state_dicts: list[dict[str, Any]], *args: Any, **kwargs: Any
    ) -> dict[str, Any]:
        """diffusers builds the IP-Adapter processors at the dense widths; they are cut to the kept heads here."""
        processors = super()._convert_ip_adapter_attn_to_diffusers(state_dicts, *args, **kwargs)  # type: ignore[misc]
        selections, recorded = self.kept_selections()
        slice_ip_adapter_processors(self, processors, selections, recorded)  # type: ignore[arg-type]
        return processors

    def fuse_lora(self, *args: Any, **kwargs: Any) -> None:
        """diffusers' ``fuse_lora``; on an unstructured or N:M checkpoint it warns that the fused
        weights are dense (the LoRA delta fills the pruned zeros)."""
        record = self.config.get(PROVENANCE_KEY)  # type: ignore[attr-defined]
        granularity = record.get("granularity") if isinstance(record, Mapping) else None
        if granularity in ("unstructured", "n:m"):
            warnings.warn(
                f"fusing a LoRA into this {granularity}-sparse model fills its pruned zeros (the weights become dense "
                "and sparse kernels no longer apply); keep the adapter unfused (load_lora_weights + set_adapters) to stay sparse",
                UserWarning,
                stacklevel=2,
            )
        super().fuse_lora(*args, **kwargs)  # type: ignore[misc]


class OBSDiffUNet(_DenseAdapters, _PrunedLoading, UNet2DConditionModel):
    """``UNet2DConditionModel`` (SD 2.1, SDXL) with per-block head counts and GEGLU widths."""

    __init__ = _pruned_init(UNet2DConditionModel)


class OBSDiffSD3Transformer(_DenseAdapters, _PrunedLoading, SD3Transformer2DModel):
    """``SD3Transformer2DModel`` (SD3, SD3.5) with per-block joint-attention heads and FFN widths."""

    __init__ = _pruned_init(SD3Transformer2DModel)


class OBSDiffFluxTransformer(_DenseAdapters, _PrunedLoading, FluxTransformer2DModel):
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
    name = (
        model_or_name
        if isinstance(model_or_name, str)
        else getattr(model_or_name, "__name__", type(model_or_name).__name__)
    )
    raise InputError(f"unsupported model class {name!r}; supported: {', '.join(b.__name__ for b in BASE_CLASSES)}")


def pruned_class_for(model_or_name: ModelMixin | type | str) -> type[ModelMixin]:
    """The OBSDiff class for a model's (or class name's) diffusers base class."""
    return PRUNED_CLASSES[base_class_for(model_or_name)]


def plain_config(config: dict[str, Any]) -> dict[str, Any]:
    """A config without the private (``_``) and obsdiff keys: the base class's arguments."""
    return {k: v for k, v in config.items() if not k.startswith("_") and k != STRUCTURE_KEY}


def build_model(
    config: dict[str, Any],
    *,
    structure: dict[str, int] | None = None,
    empty: bool = True,
    base: type[ModelMixin] | None = None,
    source: str | None = None,
) -> ModelMixin:
    """The one place a model is built from a config: the dense base class (``base``, or the one
    ``_class_name`` names), or its OBSDiff class when ``structure`` prunes anything.
    ``empty``: parameters on the meta device (no memory). ``source``: the file the config came
    from; a config that does not build is then a :class:`CheckpointError` naming it."""
    check_config_bounds(config, source or f"{config.get('_class_name', 'model')} config")
    if source is not None:
        try:
            return build_model(config, structure=structure, empty=empty, base=base)
        except ObsDiffError:
            raise
        except (TypeError, ValueError, KeyError, AttributeError, IndexError, RuntimeError) as error:
            raise CheckpointError(
                f"{source}: does not build a model ({type(error).__name__}: {first_line(error)})"
            ) from None
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


def promote(
    model: ModelMixin,
    provenance: dict[str, str] | None = None,
    kept: Mapping[str, tuple[int, Sequence[int]]] | None = None,
) -> ModelMixin:
    """``model`` as the class its checkpoint must be loaded with, provenance in its config.

    A model whose shapes were pruned becomes a new instance of its OBSDiff class, built on
    the meta device from the config plus the pruned structure, that takes over the existing
    tensors (no copy); others are returned as they are. The config then describes the
    shapes, so ``save_pretrained`` and ``push_to_hub`` write loadable checkpoints.
    ``kept``: per coupling pruned by this run, (units before, indices kept), recorded relative to
    the dense base (through the model's own record when it was pruned before).
    """
    config = dict(model.config)
    record = kept_record(config, kept or {})
    structure = structure_of(model, adapter_for(model))
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
        private = {
            k: v for k, v in config.items() if k.startswith("_") and k not in ("_class_name", "_diffusers_version")
        }
        promoted.register_to_config(**private)
        model = promoted.train(model.training)
    elif pruned:
        model.register_to_config(**{STRUCTURE_KEY: structure})
    if record is not None:
        model.register_to_config(**{KEPT_KEY: record})
    recorded = model.config.get(KEPT_KEY)
    if provenance is not None and isinstance(recorded, Mapping):
        provenance = {**provenance, "kept_indices": f"{len(recorded)} pruned modules, in config {KEPT_KEY}"}
    if provenance is not None:
        model.register_to_config(**{PROVENANCE_KEY: dict(provenance)})
    return model


def kept_record(config: Mapping[str, Any], kept: Mapping[str, tuple[int, Sequence[int]]]) -> dict[str, Any] | None:
    """The config's kept-indices record updated with ``kept``; None when nothing was removed, or when
    the model was pruned before by a version that did not record its indices (no true record exists)."""
    removed = {key: value for key, value in kept.items() if 0 < len(value[1]) < value[0]}
    previous = config.get(KEPT_KEY) if isinstance(config.get(KEPT_KEY), Mapping) else None
    if not removed or (config.get(STRUCTURE_KEY) and previous is None):
        return None
    record = dict(previous or {})
    for key, (before, indices) in removed.items():
        record[key] = compose(record.get(key), indices, before, f"{KEPT_KEY}[{key!r}]")
    return record


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
