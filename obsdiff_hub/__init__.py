"""obsdiff-hub: OBS-Diff pruning of diffusion models, published as real diffusers checkpoints.

Layers, bottom up: ``maths`` (Hessians, solvers; torch only), ``pruning`` (adapters, calibration,
packages, the engine), ``models`` and ``checkpoints`` (the pruned classes, saving, loading,
manifests, legacy conversion, plans), ``zoo`` (recipes, runs, cards, evaluation, the Hub).
"""

from ._version import __version__
from .checkpoints.legacy import UnsafePickleError, convert_legacy
from .checkpoints.loading import CheckpointError, read_metadata
from .checkpoints.plan import PlanResult, plan
from .checkpoints.saving import save_pruned
from .models import (
    OBSDiffFluxTransformer,
    OBSDiffSD3Transformer,
    OBSDiffUNet,
    provenance,
    register_with_diffusers,
)
from .pruning.config import CalibrationConfig, PruneConfig
from .pruning.engine import PruneResult, prune
from .zoo.sampling import load_pipeline

# DiffusionPipeline support for components declared as obsdiff_hub.models (a registry entry;
# diffusers' own classes are left as diffusers ships them).
register_with_diffusers()

__all__ = [
    "CalibrationConfig",
    "CheckpointError",
    "OBSDiffFluxTransformer",
    "OBSDiffSD3Transformer",
    "OBSDiffUNet",
    "PlanResult",
    "PruneConfig",
    "PruneResult",
    "UnsafePickleError",
    "__version__",
    "convert_legacy",
    "load_pipeline",
    "plan",
    "provenance",
    "prune",
    "read_metadata",
    "save_pruned",
]
