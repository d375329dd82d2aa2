"""How many weights, heads or neurons a sparsity ratio removes: the one rule every part uses.

The solvers, the sparsity allocation, the offline plan, the run's report and the structured surgery
all count with these functions, so a plan's parameter count is exactly what a run leaves (SPEC §1:
``round(count × ratio)`` per targeted layer or per block). Imports nothing but the package's errors.
"""

from __future__ import annotations

from ..errors import InputError


def check_sparsity(sparsity: float, n: int = 0, m: int = 0) -> None:
    """Validate a sparsity ratio or an N:M pattern (``n = m = 0`` means unstructured)."""
    if n or m:
        if not (0 < n < m):
            raise InputError(f"N:M sparsity needs 0 < N < M, got {n}:{m}")
        return
    if not 0.0 <= sparsity < 1.0:
        raise InputError(f"sparsity must be in [0, 1), got {sparsity}")


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
    return [removal_count(rows * min(blocksize, cols - start), ratio) for start in range(0, cols, blocksize)]


def layer_removal_count(rows: int, cols: int, ratio: float, blocksize: int) -> int:
    """Weights an unstructured run removes from one ``rows × cols`` layer (the sum over its blocks)."""
    return sum(block_removal_counts(rows, cols, ratio, blocksize))


def n_of_m_removal_count(rows: int, cols: int, n: int, m: int) -> int:
    """Weights ``n:m`` sparsity removes from a ``rows × cols`` layer: ``n`` of every ``m`` inputs of each row."""
    return rows * (cols // m) * n


def split_count(count: int, rows: int, cols: int, blocksize: int) -> list[int]:
    """``count`` removals spread over the column blocks of a ``rows × cols`` layer in proportion to
    their sizes (largest remainder), each within its block: the per-block counts sum to ``count``.
    The blocked walk's budget when sparsity allocation sets a layer's total."""
    sizes = [min(blocksize, cols - i) * rows for i in range(0, cols, blocksize)]
    if not 0 <= count <= sum(sizes):
        raise InputError(f"cannot remove {count} of {sum(sizes)} weights")
    exact = [count * size / sum(sizes) for size in sizes]
    counts = [int(e) for e in exact]
    for i in sorted(range(len(sizes)), key=lambda i: counts[i] - exact[i])[: count - sum(counts)]:
        counts[i] += 1
    return counts
