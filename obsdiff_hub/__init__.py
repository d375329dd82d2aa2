"""obsdiff-hub: OBS-Diff pruning of diffusion models, published as real diffusers checkpoints.

Layers, bottom up, each importing only from those below it (``tests/test_layers.py`` checks):
``errors`` (one family of errors), ``maths`` (Hessians, solvers, removal counts; torch only),
``architectures`` (what each diffusers family looks like to the engine), ``tiny`` (random-weight
models of every family), ``storage`` (safe files, owned output folders, manifests, load
diagnostics), ``hub`` (every Hub request), ``models`` (the pruned classes), ``checkpoints``
(saving, inspection, legacy conversion), ``pruning`` (the engine and offline plans), ``recovery`` (the
heal after pruning), ``shapes``
(the embedded model), ``zoo`` (recipes, runs, evaluation, cards, publishing), ``cli``.

``import obsdiff_hub`` registers the pruned classes with diffusers (so ``DiffusionPipeline``
loads structured checkpoints) and nothing more; the public names below are imported on first
use, as diffusers and huggingface_hub do, so the command line starts without loading every
pipeline class.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__
from .errors import (
    CheckpointError,
    HubError,
    InputError,
    ObsDiffError,
    UnsupportedEnvironmentError,
)
from .registration import register_with_diffusers

# DiffusionPipeline support for components declared as obsdiff_hub.models (a registry entry;
# diffusers' own classes are left as diffusers ships them).
register_with_diffusers()

_LAZY = {
    "CalibrationConfig": "pruning.config",
    "PruneConfig": "pruning.config",
    "PruneResult": "pruning.engine",
    "prune": "pruning.engine",
    "prune_family": "pruning.engine",
    "PlanResult": "pruning.plan",
    "plan": "pruning.plan",
    "RecoverConfig": "recovery.config",
    "recover": "recovery.heal",
    "OBSDiffControlNet": "models",
    "OBSDiffFluxTransformer": "models",
    "OBSDiffSD3Transformer": "models",
    "OBSDiffUNet": "models",
    "provenance": "models",
    "save_pruned": "checkpoints.saving",
    "UnsafePickleError": "checkpoints.legacy",
    "convert_legacy": "checkpoints.legacy",
    "read_metadata": "storage.files",
    "load_pipeline": "zoo.sampling",
}

if TYPE_CHECKING:
    from .checkpoints.legacy import UnsafePickleError, convert_legacy
    from .checkpoints.saving import save_pruned
    from .models import (
        OBSDiffControlNet,
        OBSDiffFluxTransformer,
        OBSDiffSD3Transformer,
        OBSDiffUNet,
        provenance,
    )
    from .pruning.config import CalibrationConfig, PruneConfig
    from .pruning.engine import PruneResult, prune, prune_family
    from .pruning.plan import PlanResult, plan
    from .recovery.config import RecoverConfig
    from .recovery.heal import recover
    from .storage.files import read_metadata
    from .zoo.sampling import load_pipeline


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "CalibrationConfig",
    "CheckpointError",
    "HubError",
    "InputError",
    "OBSDiffControlNet",
    "OBSDiffFluxTransformer",
    "OBSDiffSD3Transformer",
    "OBSDiffUNet",
    "ObsDiffError",
    "PlanResult",
    "PruneConfig",
    "PruneResult",
    "RecoverConfig",
    "UnsafePickleError",
    "UnsupportedEnvironmentError",
    "__version__",
    "convert_legacy",
    "load_pipeline",
    "plan",
    "provenance",
    "prune",
    "prune_family",
    "read_metadata",
    "recover",
    "register_with_diffusers",
    "save_pruned",
]
