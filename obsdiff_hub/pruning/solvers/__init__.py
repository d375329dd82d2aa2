"""The refining solvers a recipe's ``prune.solver`` names, by name (see :mod:`..registry`): one module each."""

from . import admm, lsq, obs
from .base import SOLVERS, RefiningSolver, RefitSolver

__all__ = ["SOLVERS", "RefiningSolver", "RefitSolver", "admm", "lsq", "obs"]
