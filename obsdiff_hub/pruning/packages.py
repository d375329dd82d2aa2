"""Splitting basic units, in forward order, into module packages (SPEC §1, §7).

Every package replays all calibration trajectories, so fewer packages are faster (the
paper: P=1 572 s vs P=4 897 s on SD3-Medium); what P buys is memory, since a package's
fp32 Hessians are alive at once. ``packages: auto`` takes the fewest packages whose
Hessians fit the memory left on the device.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

from ..architectures import BlockUnit, LinearSite
from ..architectures.inputs import example_inputs, run_denoiser
from ..errors import InputError

GiB = 1024**3


def hessian_layers(unit: BlockUnit) -> list[str]:
    """The layers whose inputs the unit needs a Hessian of (one per distinct input)."""
    paths: list[str] = []
    for site in unit.sites:
        paths += [site.hessian_layer] if isinstance(site, LinearSite) else list(site.out_layers)
    return paths


def hessian_bytes(model: nn.Module, unit: BlockUnit) -> int:
    return sum(4 * model.get_submodule(p).in_features ** 2 for p in hessian_layers(unit))


@dataclass(frozen=True)
class PackageLayout:
    """How the units were packed, for the report and the summary."""

    packages: list[list[BlockUnit]]
    package_bytes: list[int]  # fp32 Hessian bytes of each package
    mode: str  # "fixed" or "auto"
    budget_bytes: int | None
    workspace_bytes: int  # the largest single solve's temporaries
    hessians_on_device: bool = True  # False: the sums are kept in host memory
    block_bytes: list[int] | None = None  # offloaded: each package's blocks, resident while it is solved

    def summary(self) -> dict[str, object]:
        return {
            "mode": self.mode,
            "packages": len(self.packages),
            "budget_bytes": self.budget_bytes,
            "hessian_bytes_total": sum(self.package_bytes),
            "hessian_bytes_largest_package": max(self.package_bytes),
            "solve_workspace_bytes": self.workspace_bytes,
            "hessians_on": "device" if self.hessians_on_device else "host",
            **({"block_bytes_largest_package": max(self.block_bytes)} if self.block_bytes else {}),
        }

    def extra_bytes(self) -> int:
        """Device memory a run needs beyond the model: the largest package's Hessians (unless they
        are kept in host memory) and, offloaded, its blocks; then the largest solve."""
        per_package = [
            (hessians if self.hessians_on_device else 0) + (self.block_bytes[i] if self.block_bytes else 0)
            for i, hessians in enumerate(self.package_bytes)
        ]
        return max(per_package) + self.workspace_bytes


def solve_workspace_bytes(model: nn.Module, units: list[BlockUnit]) -> int:
    """Temporaries of the largest solve: the normalised H, its damped copy, the Cholesky factor
    and ``R`` (four n×n fp32), plus the stacked weights, ``Z`` and the mask (rows×n)."""
    worst = 0
    for unit in units:
        for site in unit.sites:
            paths = site.layers if isinstance(site, LinearSite) else site.out_layers
            n = model.get_submodule(paths[0]).in_features
            rows = sum(model.get_submodule(p).out_features for p in paths)
            worst = max(worst, 16 * n * n + 9 * rows * n)
    return worst


def split_by_budget(sizes: list[int], budget: float) -> list[list[int]]:
    """Greedy contiguous packing of unit indices under ``budget`` bytes; an oversized unit stands alone."""
    out: list[list[int]] = [[]]
    used = 0
    for index, size in enumerate(sizes):
        if out[-1] and used + size > budget:
            out.append([])
            used = 0
        out[-1].append(index)
        used += size
    return out


def free_memory_bytes(device: torch.device) -> int:
    """Memory this process could still allocate on ``device`` (CUDA: free device memory; CPU: MemAvailable)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def activation_bytes(model: nn.Module, device: torch.device, batch: int, latent_size: int | None) -> int:
    """Peak memory of one calibration-sized forward (CUDA), what packages must leave free; 0 elsewhere."""
    if device.type != "cuda":
        return 0
    inputs = example_inputs(model, batch=batch, latent_size=latent_size, tokens=77)
    inputs = {
        k: v.to(device) if isinstance(v, torch.Tensor) else {kk: vv.to(device) for kk, vv in v.items()}
        for k, v in inputs.items()
    }
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    with torch.inference_mode():
        run_denoiser(model, inputs, 500.0)
    return int(torch.cuda.max_memory_allocated(device) - before)


def plan_packages(
    model: nn.Module,
    units: list[BlockUnit],
    packages: int | str,
    memory_budget_gb: float | None,
    device: torch.device,
    activation_bytes: int = 0,
    hessian_factor: int = 1,
    hessian_device: torch.device | None = None,
    resident_bytes: list[int] | None = None,
) -> PackageLayout:
    """Contiguous packages: a fixed count, or (``"auto"``) the fewest within a memory budget.

    The auto budget is ``memory_budget_gb`` if given, else what is free where the Hessians are
    kept (``hessian_device``, default ``device``) less a 10% margin and, when that is the run
    device, ``activation_bytes`` (the calibration forward's peak) and the largest solve's
    workspace. ``hessian_factor``: d×d buffers per Hessian (2 with asymmetric cross terms).
    ``resident_bytes``: offloaded runs, per unit, the device bytes of the block it brings (a package's blocks
    are on the device while it is solved), budgeted with the Hessians when those are on the device too.
    """
    home = hessian_device or device
    if not units:
        raise InputError("no layers to prune: the block selection (`prune.blocks`) is empty")
    sizes = [hessian_factor * hessian_bytes(model, u) for u in units]
    if packages != "auto":
        count = min(int(packages), len(units))
        base, extra = divmod(len(units), count)
        bounds = [0]
        for i in range(count):
            bounds.append(bounds[-1] + base + (1 if i < extra else 0))
        groups = [list(range(a, b)) for a, b in zip(bounds, bounds[1:])]
        mode, budget = "fixed", None
    else:
        beside = activation_bytes + solve_workspace_bytes(model, units) if home == device else 0
        free = free_memory_bytes(home) - beside
        budget = int(memory_budget_gb * GiB) if memory_budget_gb is not None else max(int(0.9 * free), 1)
        beside_hessians = resident_bytes if resident_bytes is not None and home == device else [0] * len(sizes)
        groups = split_by_budget([a + b for a, b in zip(sizes, beside_hessians)], budget)
        mode = "auto"
    return PackageLayout(
        [[units[i] for i in g] for g in groups],
        [sum(sizes[i] for i in g) for g in groups],
        mode,
        budget,
        solve_workspace_bytes(model, units),
        hessians_on_device=home == device,
        block_bytes=[sum(resident_bytes[i] for i in g) for g in groups] if resident_bytes is not None else None,
    )
