"""Building models from configs, and promoting a pruned model to the class its checkpoint loads with."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from accelerate import init_empty_weights
from diffusers import ModelMixin

from ..architectures import architecture_of
from ..architectures.kept import compose
from ..architectures.surgery import structure_of
from ..errors import CheckpointError, InputError, ObsDiffError, first_line
from ..storage.files import check_config_bounds
from .classes import BASE_CLASSES, PRUNED_CLASSES
from .keys import KEPT_KEY, PROVENANCE_KEY, STRUCTURE_KEY, plain_config
from .offload import offload_of


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


def build_model(
    config: dict[str, Any],
    *,
    structure: dict[str, int] | None = None,
    empty: bool = True,
    base: type[ModelMixin] | None = None,
    source: str | None = None,
    obsdiff_class: bool = False,
) -> ModelMixin:
    """The one place a model is built from a config: the dense base class (``base``, or the one
    ``_class_name`` names), or its OBSDiff class when ``structure`` prunes anything or ``obsdiff_class``.
    ``empty``: parameters on the meta device (no memory). ``source``: the file the config came
    from; a config that does not build is then a :class:`CheckpointError` naming it."""
    check_config_bounds(config, source or f"{config.get('_class_name', 'model')} config")
    if source is not None:
        try:
            return build_model(config, structure=structure, empty=empty, base=base, obsdiff_class=obsdiff_class)
        except ObsDiffError:
            raise
        except (TypeError, ValueError, KeyError, AttributeError, IndexError, RuntimeError) as error:
            raise CheckpointError(
                f"{source}: does not build a model ({type(error).__name__}: {first_line(error)})"
            ) from None
    base = base or base_class_for(str(config.get("_class_name", "")))
    cls = PRUNED_CLASSES[base] if structure or obsdiff_class else base
    extra = {STRUCTURE_KEY: dict(structure)} if structure else {}
    if not empty:
        return cls.from_config({**plain_config(config), **extra})
    with init_empty_weights():
        return cls.from_config({**plain_config(config), **extra})


def dense_structure(config: dict[str, Any], base: type[ModelMixin] | None = None) -> dict[str, int]:
    """Heads and widths of the dense model a config describes."""
    skeleton = build_model(config, base=base)
    return structure_of(skeleton, architecture_of(skeleton))


def promote(
    model: ModelMixin,
    provenance: dict[str, str] | None = None,
    kept: Mapping[str, tuple[int, Sequence[int]]] | None = None,
) -> ModelMixin:
    """``model`` as the class its checkpoint must be loaded with, provenance in its config.

    A pruning result (``provenance`` given, every granularity) or a model whose shapes were pruned
    becomes a new instance of its OBSDiff class, built on the meta device from the config plus the
    pruned structure, that takes over the existing tensors (no copy), so loading it by default gives
    the class that warns on ``fuse_lora`` and offers ``verify=True``; others are returned as they are.
    The config then describes the shapes, so ``save_pretrained`` and ``push_to_hub`` write loadable
    checkpoints.
    ``provenance``: this run's record, replacing an earlier run's. ``kept``: per coupling pruned
    by this run, (units before, indices kept), recorded relative to the dense base (through the
    model's own record when it was pruned before). Called once per run, where its result is made.
    """
    config = dict(model.config)
    record = kept_record(config, kept or {})
    structure = structure_of(model, architecture_of(model))
    base = base_class_for(model)
    known_pruned = isinstance(model, tuple(PRUNED_CLASSES.values())) and bool(config.get(STRUCTURE_KEY))
    pruned = known_pruned or structure != dense_structure(config, base)  # a meta skeleton only when not known
    if (pruned or provenance is not None) and not isinstance(model, tuple(PRUNED_CLASSES.values())):
        promoted = build_model(config, structure=structure if pruned else None, base=base, obsdiff_class=True)
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
        offloaded = offload_of(model)
        if offloaded is not None:  # the new instance's blocks read the same stored weights
            offloaded.attach(promoted)
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
