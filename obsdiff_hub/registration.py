"""Let ``DiffusionPipeline.from_pretrained`` load components declared as ``obsdiff_hub.models``.

For Hub repos diffusers 0.42 accepts only libraries in its ``LOADABLE_CLASSES`` registry
(otherwise it looks for a remote ``.py`` file, i.e. remote code); adding this package's model
module to that registry, with ``ModelMixin``'s save/load methods, is the extension point diffusers
uses for ``onnxruntime.training``. Nothing of diffusers is replaced.

``import obsdiff_hub`` must make that entry exist before any pipeline loads, yet should not cost
the seconds importing diffusers takes (the command line answers ``--help`` without it). So the
entry is added at once when diffusers' loader module is already imported, and otherwise right
after it is, by a one-shot import hook: a finder that lets the normal finders locate that one
module and wraps its loader so the entry is added as soon as the module has run.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from importlib.machinery import ModuleSpec
from types import ModuleType
from typing import Any, Sequence

LOADER_MODULE = "diffusers.pipelines.pipeline_loading_utils"
MODELS_MODULE = "obsdiff_hub.models"
ENTRY = {"ModelMixin": ["save_pretrained", "from_pretrained"]}


def _add_entry(loader_module: ModuleType) -> None:
    loader_module.LOADABLE_CLASSES.setdefault(MODELS_MODULE, ENTRY)


class _ThenRegister(importlib.abc.Loader):
    """The module's own loader, then the registry entry. Everything else (source, file name for
    tracebacks and ``inspect``) is the original loader's."""

    def __init__(self, loader: importlib.abc.Loader) -> None:
        self.loader = loader

    def create_module(self, spec: ModuleSpec) -> ModuleType | None:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self.loader.exec_module(module)
        _add_entry(module)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loader, name)


class _RegisterOnImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself; for diffusers' loader module, returns the normal spec with its loader
    wrapped, and removes itself (it is needed once)."""

    def find_spec(self, name: str, path: Sequence[str] | None, target: ModuleType | None = None) -> ModuleSpec | None:
        if name != LOADER_MODULE:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _ThenRegister(spec.loader)
        return spec


def register_with_diffusers() -> None:
    """Add ``obsdiff_hub.models`` to diffusers' registry of loadable libraries, now if diffusers'
    loader is imported, else as soon as it is (idempotent)."""
    loaded = sys.modules.get(LOADER_MODULE)
    if loaded is not None:
        _add_entry(loaded)
    elif not any(isinstance(finder, _RegisterOnImport) for finder in sys.meta_path):
        sys.meta_path.insert(0, _RegisterOnImport())
