"""Convert the reference project's whole-module ``.pth`` pickles without running untrusted code.

The reference publishes ``torch.save(module)`` files that need ``weights_only=False``.
Here the unpickler resolves every global the pickle names through an allow-list:
classes from ``torch`` and ``diffusers``, ``torch.nn.functional`` functions, and the
few tensor-rebuilding helpers torch checkpoints use. Anything else (``os.system``,
``builtins.eval``, ...) stops the load before it can be called, with its name in the
error. The result is rebuilt into a fresh
model by this package's own code and saved as safetensors.
"""

from __future__ import annotations

import _compat_pickle
import importlib
import os
import pickle
import types
from pathlib import Path
from typing import Any

import torch
from accelerate import init_empty_weights
from diffusers import (
    ModelMixin,
)

from .adapters import HeadCoupling, adapter_for
from .models import BASE_CLASSES, STRUCTURE_KEY, base_class_for, pruned_class_for
from .surgery import structure_of


class UnsafePickleError(ValueError):
    """The file references code outside the allow-list; nothing from it was executed."""


# Non-class callables a torch checkpoint legitimately references: tensor/parameter rebuilders.
_ALLOWED_FUNCTIONS = {
    "torch._utils._rebuild_tensor_v2",
    "torch._utils._rebuild_parameter",
    "torch._utils._rebuild_parameter_with_state",
    "torch._utils._rebuild_device_tensor_from_numpy",
    "torch._tensor._rebuild_from_type_v2",
    "collections.OrderedDict",
    "builtins.set",
    "builtins.frozenset",
    "builtins.slice",
}


def _resolve(qualified: str) -> Any:
    """The object a pickle GLOBAL names, if it is on the allow-list; raise otherwise."""
    module, _, name = qualified.rpartition(".")
    trusted_module = module == "torch" or module.startswith(("torch.", "diffusers."))
    if qualified not in _ALLOWED_FUNCTIONS and not trusted_module:
        raise UnsafePickleError(f"refusing to load: the pickle references {qualified}, which is not a torch or diffusers type")
    try:
        obj: Any = importlib.import_module(module)
        for part in name.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as error:
        raise UnsafePickleError(f"refusing to load: {qualified} does not exist in this installation") from error
    if qualified in _ALLOWED_FUNCTIONS or isinstance(obj, type) or module == "torch.nn.functional":
        return obj
    raise UnsafePickleError(f"refusing to load: {qualified} is a callable, not a class")


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:  # noqa: D102 - pickle's hook
        # Protocol-2 pickles (torch.save's default) use Python 2 names such as __builtin__.set.
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        return _resolve(f"{_compat_pickle.IMPORT_MAPPING.get(module, module)}.{name}")


# torch.load's ``pickle_module``: torch keeps handling tensor storage, every global goes through us.
_restricted_pickle = types.SimpleNamespace(
    Unpickler=_RestrictedUnpickler,
    load=lambda file, **kw: _RestrictedUnpickler(file, **kw).load(),
    __name__="obsdiff_hub.restricted_pickle",
)


def restricted_load(path: str | os.PathLike) -> Any:
    """Unpickle a torch checkpoint, instantiating only allow-listed torch/diffusers types."""
    try:
        return torch.load(str(path), map_location="cpu", weights_only=False, pickle_module=_restricted_pickle)
    except UnsafePickleError:
        raise
    except Exception as error:
        raise UnsafePickleError(f"{path}: not a readable torch checkpoint ({error})") from error


def convert_legacy(path: str | os.PathLike, output_dir: str | os.PathLike | None = None) -> ModelMixin:
    """Load a legacy whole-module checkpoint safely and return (and optionally save) a clean model.

    Pruned shapes are read from the weights (rows of q/k/v, widths of FFN inputs), not from
    possibly stale module attributes, and a fresh model is built from config + structure.
    """
    from .checkpoint import provenance, save_pruned

    legacy = restricted_load(path)
    if not isinstance(legacy, BASE_CLASSES):
        raise ValueError(f"{path} holds a {type(legacy).__name__}; expected one of {', '.join(b.__name__ for b in BASE_CLASSES)}")
    config = {k: v for k, v in legacy.config.items() if not k.startswith(("obsdiff_", "_obsdiff_"))}
    base = base_class_for(legacy)
    with init_empty_weights():
        skeleton = base.from_config(config)
    adapter = adapter_for(skeleton)
    dense = structure_of(skeleton, adapter)
    structure = {}
    for c in adapter.couplings(skeleton):
        if isinstance(c, HeadCoupling):
            structure[c.attention] = legacy.get_submodule(c.row_layers[0]).out_features // c.head_dim
        else:
            rows = legacy.get_submodule(c.in_layer).out_features
            structure[c.owner] = rows // 2 if c.geglu else rows
    cls = pruned_class_for(skeleton) if structure != dense else base
    extra = {STRUCTURE_KEY: structure} if structure != dense else {}
    with init_empty_weights():
        model = cls.from_config({**config, **extra})
    model.load_state_dict(legacy.state_dict(), strict=True, assign=True)
    model.eval()
    if output_dir is not None:
        save_pruned(model, output_dir, record=provenance(converted_from=Path(path).name))
    return model
