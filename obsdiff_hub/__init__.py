"""obsdiff-hub: OBS-Diff pruning of diffusion models, published as real diffusers checkpoints."""

__version__ = "0.1.0"

from .config import CalibrationConfig, PruneConfig
from .engine import PruneResult, prune

__all__ = ["CalibrationConfig", "PruneConfig", "PruneResult", "__version__", "prune"]
