"""The pruning methods a recipe's ``prune.method`` names, by name (see :mod:`..registry`).

Each method is one class with its own settings: :mod:`.obs_diff` (the paper's) and :mod:`.baselines`.
"""

from . import baselines, obs_diff
from .base import METHODS, GroupProblem, GroupResult, LayerProblem, LayerResult, PruningMethod

__all__ = [
    "METHODS",
    "GroupProblem",
    "GroupResult",
    "LayerProblem",
    "LayerResult",
    "PruningMethod",
    "baselines",
    "obs_diff",
]
