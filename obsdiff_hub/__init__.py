"""obsdiff-hub: OBS-Diff pruning of diffusion models, published as real diffusers checkpoints."""

__version__ = "0.1.0"

from .checkpoint import (  # noqa: E402
    CheckpointError,
    install_load_diagnostics,
    provenance,
    read_metadata,
    save_pruned,
)
from .config import CalibrationConfig, PruneConfig  # noqa: E402
from .engine import PruneResult, prune  # noqa: E402
from .legacy import UnsafePickleError, convert_legacy  # noqa: E402
from .models import (  # noqa: E402
    OBSDiffFluxTransformer,
    OBSDiffSD3Transformer,
    OBSDiffUNet,
    register_with_diffusers,
)
from .plan import PlanResult, plan  # noqa: E402

# One-line errors when a pruned checkpoint fails to load (failure path only; see checkpoint.py),
# and DiffusionPipeline support for components declared as obsdiff_hub.models.
install_load_diagnostics()
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
    "plan",
    "provenance",
    "prune",
    "read_metadata",
    "save_pruned",
]
