"""Offline planning: parameters and FLOPs before and after pruning, from a config alone.

Models are built under ``FakeTensorMode``: shapes without storage, so planning SD3.5-Large
or Flux takes seconds and no memory. FLOPs are ``torch.utils.flop_counter``'s count for
one denoiser forward at batch 1 (one sampling step without CFG; a multiply-add is 2 FLOPs).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils.flop_counter import FlopCounterMode

from ..models import build_model
from ..resources import data_dir
from ..pruning.adapters import HeadCoupling, adapter_for
from ..pruning.adapters.inputs import example_inputs, run_denoiser
from ..pruning.config import PruneConfig
from ..pruning.surgery import apply_structure, removal_count

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
    convention: str = "torch.utils.flop_counter, one denoiser forward, batch 1, multiply-add = 2 FLOPs"

    @property
    def flop_reduction(self) -> float | None:
        if not self.flops_before or self.flops_after is None:
            return None
        return 1 - self.flops_after / self.flops_before

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "flop_reduction": self.flop_reduction}


def builtin_config(name: str) -> dict[str, Any]:
    """A shipped public model config (``recipes/configs/NAME.json``), for offline planning."""
    path = data_dir("recipes") / "configs" / f"{name}.json"
    if not path.is_file():
        raise ValueError(f"no shipped model config {name!r}")
    return json.loads(path.read_text())


def planned_structure(
    model: torch.nn.Module, ratio: float, blocks: list[int] | None = None, block_sparsity: dict[int, float] | None = None
) -> dict[str, int]:
    """Heads/widths after removing ``round(count·ratio)`` per coupling in the chosen blocks."""
    adapter = adapter_for(model)
    record: dict[str, int] = {}
    for unit in adapter.units(model, blocks, structured=True):
        r = (block_sparsity or {}).get(unit.block, ratio)
        for site in unit.sites:
            for c in (site.heads, site.neurons):
                if c is None:
                    continue
                n = c.count(model)
                record[c.key] = n - removal_count(n, r)
    return record


def _flops(model: torch.nn.Module, latent_size: int, batch: int = 1) -> float:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        run_denoiser(model, example_inputs(model, batch=batch, latent_size=latent_size, tokens=TOKENS), 500.0)
    return float(counter.get_total_flops())


def plan(
    config: dict[str, Any] | str | Path,
    *,
    sparsity: float,
    granularity: str = "structured",
    blocks: list[int] | str | None = None,
    block_sparsity: dict[int, float] | None = None,
    resolution: int | None = 1024,
    n_m: tuple[int, int] = (2, 4),
    vae_scale_factor: int = 8,
) -> PlanResult:
    """Parameters and FLOPs before/after for a model config (dict, config.json path, or shipped name).

    Structured plans physically shrink a fake model; unstructured and N:M plans report
    the same shapes (dense kernels) with the pruned weights still counted as parameters,
    and how many of them are zeros (``sparsity`` per targeted layer, or n of every m).
    FLOPs are counted at ``resolution // vae_scale_factor`` latents.
    """
    if isinstance(config, Path) or (isinstance(config, str) and config.endswith(".json")):
        config = json.loads(Path(config).read_text())
    elif isinstance(config, str):
        config = builtin_config(config)
    with FakeTensorMode(allow_non_fake_inputs=True):
        model = build_model(config, empty=False).eval()
        params_before = sum(p.numel() for p in model.parameters())
        flops_before = _flops(model, resolution // vae_scale_factor) if resolution else None
        heads = neurons = zeroed = 0
        if isinstance(blocks, str):  # "start:stop", resolved against this model's block count
            blocks = PruneConfig(blocks=blocks).block_ids(len(adapter_for(model).blocks(model)))
        if granularity in ("unstructured", "n:m"):
            for unit in adapter_for(model).units(model, blocks, structured=False):
                fraction = n_m[0] / n_m[1] if granularity == "n:m" else (block_sparsity or {}).get(unit.block, sparsity)
                zeroed += sum(round(fraction * model.get_submodule(p).weight.numel()) for site in unit.sites for p in site.layers)
        if granularity == "structured":
            adapter = adapter_for(model)
            structure = planned_structure(model, sparsity, blocks, block_sparsity)
            couplings = {c.key: c for c in adapter.couplings(model)}
            for key, after in structure.items():
                c = couplings[key]
                before = c.count(model)
                if isinstance(c, HeadCoupling):
                    heads += before - after
                else:
                    neurons += before - after
            apply_structure(model, adapter, structure)
        params_after = sum(p.numel() for p in model.parameters())
        flops_after = (_flops(model, resolution // vae_scale_factor) if granularity == "structured" else flops_before) if resolution else None
    return PlanResult(params_before, params_after, flops_before, flops_after, heads, neurons, resolution, zeroed)


def costs(config: dict[str, Any], latent_size: int, batch: int = 1) -> tuple[int, float]:
    """Parameters and FLOPs of one forward (``batch`` latents of ``latent_size``², counted as
    :func:`plan` counts) of the model a config describes, pruned shapes included (``obsdiff_structure``)."""
    from ..models import STRUCTURE_KEY

    with FakeTensorMode(allow_non_fake_inputs=True):
        model = build_model(config, structure=config.get(STRUCTURE_KEY) or None, empty=False).eval()
        params = sum(p.numel() for p in model.parameters())
        flops = _flops(model, latent_size, batch)
    return params, flops
