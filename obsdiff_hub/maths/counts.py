"""How many weights, heads or neurons a sparsity ratio removes: the one rule every part uses.

The solvers, the sparsity allocation, the offline plan and the structured surgery all count
with these functions, so a plan's parameter count is exactly what a run leaves (SPEC §1:
``round(count × ratio)`` per targeted layer or per block). Imports nothing but the standard library.
"""

from __future__ import annotations


def removal_count(size: int, ratio: float) -> int:
    """``round(size · ratio)``: the items of a set of ``size`` that ``ratio`` removes."""
    return round(size * ratio)


def group_removal_count(count: int, ratio: float) -> int:
    """Heads or neurons to remove from ``count`` at ``ratio``: ``round(count · ratio)``, but at
    least one always remains (a block without heads or an MLP without neurons cannot run)."""
    return min(removal_count(count, ratio), count - 1)


def block_removal_counts(rows: int, cols: int, ratio: float, blocksize: int) -> list[int]:
    """Weights the blocked OBS walk prunes in each block of ``blocksize`` input columns of a
    ``rows × cols`` layer: ``round(ratio · rows · block_cols)`` per block, chosen when the walk
    reaches it (SparseGPT's rule); their sum is the layer's total."""
    return [round(ratio * rows * min(blocksize, cols - start)) for start in range(0, cols, blocksize)]


def layer_removal_count(rows: int, cols: int, ratio: float, blocksize: int) -> int:
    """Weights an unstructured run removes from one ``rows × cols`` layer (the sum over its blocks)."""
    return sum(block_removal_counts(rows, cols, ratio, blocksize))
