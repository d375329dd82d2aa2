"""Offline planning: parameters and FLOPs before and after a prune, from a model config alone.

Models are built under ``FakeTensorMode``: shapes without storage, so planning SD3.5-Large or
Flux takes seconds and no memory. Removals are counted with the same rule the engine uses
(:mod:`obsdiff_hub.maths.counts`), so a plan's numbers are what a run leaves. FLOPs are
``torch.utils.flop_counter``'s count for one denoiser forward at batch 1 (one sampling step
without CFG; a multiply-add is 2 FLOPs).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils.flop_counter import FlopCounterMode

from ..architectures import HeadCoupling, architecture_of
from ..architectures.inputs import example_inputs, run_denoiser
from ..architectures.surgery import apply_structure
from ..errors import InputError
from ..maths.counts import group_removal_count, n_of_m_removal_count
from ..models import STRUCTURE_KEY, build_model
from ..resources import data_dir
from ..storage.files import is_regular_file, read_json
from .config import PruneConfig

TOKENS = 77  # text length used for FLOPs (CLIP's; T5-based models see more, which adds little)


@dataclass
class PlanResult:
    params_before: int
    params_after: int
    flops_before: float | None
    flops_after: float | None
    heads_removed: int
    neurons_removed: int
    resolution: int | None
    zeroed_weights: int = 0  # unstructured / N:M: targeted weights set to zero (shapes unchanged)
    resident_params: int = 0  # on the device while calibrating: all, or (offloaded) the rest and one block
    offload: str = "none"
    convention: str = "torch.utils.flop_counter, one denoiser forward, batch 1, multiply-add = 2 FLOPs"

    @property
    def flop_reduction(self) -> float | None:
        if not self.flops_before or self.flops_after is None:
            return None
        return 1 - self.flops_after / self.flops_before

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "flop_reduction": self.flop_reduction}


def builtin_config(name: str) -> dict[str, Any]:
    """A shipped public model config (``recipes/configs/NAME.json``), for offline planning; ``name``
    is a plain name, never a path (a recipe from a stranger must not make this tool read anything else)."""
    path = data_dir("recipes") / "configs" / f"{name}.json"
    if not re.fullmatch(r"[a-z0-9][a-z0-9._\-]*", name) or not is_regular_file(path):
        raise InputError(f"no shipped model config {name!r}; the shipped ones are in recipes/configs")
    return read_json(path)


def planned_structure(model: torch.nn.Module, prune: PruneConfig) -> dict[str, int]:
    """Heads/widths each coupling of the chosen blocks keeps after a structured ``prune``."""
    architecture = architecture_of(model)
    record: dict[str, int] = {}
    for unit in architecture.units(model, prune.block_ids(len(architecture.blocks(model))), structured=True):
        ratio = prune.sparsity_for(unit.block)
        for site in unit.sites:
            for coupling in (site.heads, site.neurons):
                if coupling is not None:
                    count = coupling.count(model)
                    record[coupling.key] = count - group_removal_count(count, ratio)
    return record


def zeroed_weights(model: torch.nn.Module, prune: PruneConfig) -> int:
    """Targeted weights an unstructured or N:M ``prune`` sets to zero (shapes unchanged)."""
    architecture = architecture_of(model)
    zeroed = 0
    for unit in architecture.units(model, prune.block_ids(len(architecture.blocks(model))), structured=False):
        for site in unit.sites:
            for path in site.layers:  # type: ignore[union-attr]
                rows, cols = model.get_submodule(path).weight.shape
                if prune.granularity == "n:m":
                    zeroed += n_of_m_removal_count(rows, cols, prune.n, prune.m)
                else:
                    zeroed += prune.method.removal_count(rows, cols, prune.sparsity_for(unit.block))
    return zeroed


def _flops(model: torch.nn.Module, latent_size: int, batch: int = 1) -> float:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        run_denoiser(model, example_inputs(model, batch=batch, latent_size=latent_size, tokens=TOKENS), 500.0)
    return float(counter.get_total_flops())


def _model_config(config: Mapping[str, Any] | str | Path) -> dict[str, Any]:
    if isinstance(config, Path) or (isinstance(config, str) and config.endswith(".json")):
        return read_json(Path(config))
    if isinstance(config, str):
        return builtin_config(config)
    return dict(config)


def plan(
    config: Mapping[str, Any] | str | Path,
    prune: PruneConfig | Mapping[str, Any],
    *,
    resolution: int | None = 1024,
    vae_scale_factor: int = 8,
) -> PlanResult:
    """Parameters and FLOPs before/after ``prune`` (the run's own :class:`PruneConfig`, or a dict
    of its fields) for a model config (dict, config.json path, or shipped name).

    Structured plans physically shrink a fake model; unstructured and N:M plans report the same
    shapes (dense kernels) with the pruned weights still counted as parameters, and how many of
    them are zeros. FLOPs are counted at ``resolution // vae_scale_factor`` latents.
    """
    prune = PruneConfig.coerce(prune)
    latent = resolution // vae_scale_factor if resolution else None
    with FakeTensorMode(allow_non_fake_inputs=True):
        model = build_model(_model_config(config), empty=False, source="the model config").eval()
        params_before = sum(p.numel() for p in model.parameters())
        resident = resident_params(model, prune.offload)
        flops_before = _flops(model, latent) if latent else None
        heads = neurons = zeroed = 0
        if prune.granularity == "structured":
            architecture = architecture_of(model)
            structure = planned_structure(model, prune)
            for coupling in architecture.couplings(model):
                if coupling.key in structure:
                    removed = coupling.count(model) - structure[coupling.key]
                    if isinstance(coupling, HeadCoupling):
                        heads += removed
                    else:
                        neurons += removed
            apply_structure(model, architecture, structure)
            flops_after = _flops(model, latent) if latent else None
        else:
            zeroed = zeroed_weights(model, prune)
            flops_after = flops_before
        params_after = sum(p.numel() for p in model.parameters())
    return PlanResult(
        params_before,
        params_after,
        flops_before,
        flops_after,
        heads,
        neurons,
        resolution,
        zeroed,
        resident,
        prune.offload,
    )


def resident_params(model: torch.nn.Module, offload: str) -> int:
    """Parameters on the device during calibration: every one, or with ``offload`` those outside the blocks plus
    the largest block (one block runs at a time)."""
    total = sum(p.numel() for p in model.parameters())
    if offload == "none":
        return total
    blocks = [
        sum(p.numel() for p in model.get_submodule(b).parameters()) for b in architecture_of(model).blocks(model)
    ]
    return total - sum(blocks) + max(blocks, default=0)


def costs(config: dict[str, Any], latent_size: int, batch: int = 1) -> tuple[int, float]:
    """Parameters and FLOPs of one forward (``batch`` latents of ``latent_size``², counted as
    :func:`plan` counts) of the model a config describes, pruned shapes included (``obsdiff_structure``)."""
    with FakeTensorMode(allow_non_fake_inputs=True):
        model = build_model(
            config, structure=config.get(STRUCTURE_KEY) or None, empty=False, source="the checkpoint's config"
        ).eval()
        params = sum(p.numel() for p in model.parameters())
        flops = _flops(model, latent_size, batch)
    return params, flops
