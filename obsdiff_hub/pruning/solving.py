"""Solving one basic unit: the configured method on each of its sites, and writing the result.

A *linear site* (layers sharing one input Hessian) is pruned unstructured or N:M by a layer
method; a *structured site* (the output projections a head or neuron set feeds) loses whole
column groups through a group method, after which the matching rows of q/k/v and the FFN input
are deleted too (:mod:`obsdiff_hub.architectures.surgery`). Results are plain tensors and
index lists, so under several processes the owner of a unit can broadcast them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from ..architectures import (
    BlockUnit,
    HeadCoupling,
    LinearSite,
    NeuronCoupling,
    StructuredSite,
    surgery,
)
from ..maths.counts import group_removal_count
from ..maths.factor import asymmetric_target
from ..maths.group_obs import GroupSelection
from .config import PruneConfig
from .distributed import World
from .methods import GroupProblem, LayerProblem
from .precision import Precision
from .report import LayerRecord, PruneReport, StructureRecord


def relative_error(W: torch.Tensor, W_new: torch.Tensor, H: torch.Tensor) -> float:
    """``‖(W−Ŵ)X‖² / ‖WX‖²`` computed from the Hessian, so no activations are kept."""
    W, W_new, H = W.float(), W_new.float().to(W.device), H.to(W.device)
    delta = W - W_new
    denominator = float((W @ H * W).sum())
    return float((delta @ H * delta).sum()) / denominator if denominator > 0 else 0.0


@dataclass
class UnitResult:
    """What solving one basic unit produced; applied on every rank."""

    weights: dict[str, torch.Tensor] = field(default_factory=dict)  # layer path → solved weight
    kept: dict[str, list[int]] = field(default_factory=dict)  # coupling key → kept heads/neurons
    layers: list[LayerRecord] = field(default_factory=list)
    structure: list[StructureRecord] = field(default_factory=list)


def unit_cost(model: nn.Module, unit: BlockUnit) -> float:
    """Solve cost of a unit: per Hessian ``n³ + rows·n²`` (factorisation and updates), for balancing ranks."""
    cost = 0.0
    for site in unit.sites:
        paths = site.layers if isinstance(site, LinearSite) else site.out_layers
        n = model.get_submodule(paths[0]).in_features
        rows = sum(model.get_submodule(p).out_features for p in paths)
        cost += n**3 + rows * n**2
    return cost


class UnitPruner:
    """Applies one config's method and solver to the sites of a unit, through the run's :class:`Precision`."""

    def __init__(self, precision: Precision, config: PruneConfig) -> None:
        self.precision = precision
        self.config = config
        self.counts: dict[str, int] = {}  # allocated removals: layer path or coupling key → count

    def weight(self, path: str) -> torch.Tensor:
        """The weight to prune: the checkpoint values (the master copy when there is one)."""
        models = self.precision.models
        return models[-1].get_submodule(path).weight.data.to(models[0].get_submodule(path).weight.device)

    def target(self, path: str, H: torch.Tensor, G: torch.Tensor | None) -> torch.Tensor:
        """What the solve fits: the weight itself, or with a cross term the dense network's outputs."""
        W = self.weight(path)
        return W if G is None else asymmetric_target(W, H, G, self.config.damping_fraction)

    def solve(
        self, unit: BlockUnit, hessians: dict[str, torch.Tensor], cross_terms: dict[str, torch.Tensor] | None = None
    ) -> UnitResult:
        result = UnitResult()
        cross_terms = cross_terms or {}
        for site in unit.sites:
            if isinstance(site, LinearSite):
                self._solve_linear(
                    unit.block, site, hessians[site.hessian_layer], cross_terms.get(site.hessian_layer), result
                )
            else:
                self._solve_structured(unit.block, site, hessians, cross_terms, result)
        return result

    def _solve_linear(
        self, block: int, site: LinearSite, H: torch.Tensor, G: torch.Tensor | None, result: UnitResult
    ) -> None:
        cfg = self.config
        weights = [self.weight(p) for p in site.layers]
        targets = [self.target(p, H, G) for p in site.layers] if G is not None else weights
        counts = [self.counts[p] for p in site.layers] if self.counts else None
        ratios = [cfg.sparsity_for(block)] * len(weights)
        problem = LayerProblem(targets, H, ratios, cfg.n, cfg.m, cfg.damping_fraction, counts)
        solved = cfg.method.prune_layers(problem)
        starts: list[float | None] = [None] * len(weights)
        if cfg.solver.refines:  # refine the greedy result; record where it started
            starts = [relative_error(W, W_start, H) for W, (W_start, _) in zip(weights, solved)]
            solved = cfg.solver.refine(problem, solved)
        for path, W, (W_new, mask), start in zip(site.layers, weights, solved, starts):
            result.weights[path] = W_new
            zeroed = int(mask.sum())
            record = LayerRecord(
                path, block, tuple(W.shape), zeroed / W.numel(), relative_error(W, W_new, H), start, zeroed
            )
            result.layers.append(record)

    def _solve_structured(
        self,
        block: int,
        site: StructuredSite,
        hessians: dict[str, torch.Tensor],
        cross_terms: dict[str, torch.Tensor],
        result: UnitResult,
    ) -> None:
        cfg = self.config
        ratio = cfg.sparsity_for(block)
        weights = [self.weight(p) for p in site.out_layers]
        targets = (
            [self.target(p, hessians[p], cross_terms.get(p)) for p in site.out_layers] if cross_terms else weights
        )
        groups, head_ids, neuron_ids = site.column_groups(self.precision.working)

        def count(coupling: HeadCoupling | NeuronCoupling | None, ids: range) -> int:
            if coupling is None or not ids:
                return 0
            return self.counts.get(coupling.key, group_removal_count(len(ids), ratio))

        selections = [
            GroupSelection(tuple(head_ids), count(site.heads, head_ids)),
            GroupSelection(tuple(neuron_ids), count(site.neurons, neuron_ids), cfg.method.group_batch("neurons")),
        ]
        out_hessians = [hessians[p] for p in site.out_layers]
        problem = GroupProblem(targets, out_hessians, groups, selections, cfg.damping_fraction)
        solved, (gone_heads, gone_neurons) = cfg.method.remove_groups(problem)
        for path, W, W_new, H in zip(site.out_layers, weights, solved, out_hessians):
            result.weights[path] = W_new
            removed_columns = float((W_new == 0).all(0).float().mean())  # deleted by apply(), not left as zeros
            result.layers.append(
                LayerRecord(path, block, tuple(W.shape), removed_columns, relative_error(W, W_new, H))
            )
        for coupling, ids, gone, offset in (
            (site.heads, head_ids, gone_heads, 0),
            (site.neurons, neuron_ids, gone_neurons, len(head_ids)),
        ):
            if coupling is None:
                continue
            result.kept[coupling.key] = sorted(g - offset for g in ids if g not in set(gone))
            kind = "heads" if isinstance(coupling, HeadCoupling) else "neurons"
            kept = result.kept[coupling.key]
            result.structure.append(StructureRecord(coupling.key, block, kind, len(ids), len(kept), list(kept)))

    def apply(self, unit: BlockUnit, result: UnitResult, report: PruneReport) -> None:
        """Write the solved weights, then delete removed heads/neurons, in every model the run carries."""
        for path, W in result.weights.items():
            self.precision.write(path, W)
        for site in unit.sites:
            if not isinstance(site, StructuredSite):
                continue
            for coupling in (site.heads, site.neurons):
                if coupling is None or coupling.key not in result.kept:
                    continue
                keep = torch.tensor(result.kept[coupling.key], dtype=torch.long)
                shrink = surgery.keep_heads if isinstance(coupling, HeadCoupling) else surgery.keep_neurons
                for model in self.precision.models:
                    shrink(model, coupling, keep)  # type: ignore[arg-type]
        report.layers += result.layers
        report.structure += result.structure


def share_result(world: World, result: UnitResult | None, owner: int, device: torch.device) -> UnitResult:
    """The owner's result of one unit, on every rank (tensors and JSON, never pickles)."""
    weights = world.broadcast_tensors(result.weights if result is not None else None, owner, device)
    meta = world.broadcast_json(
        {
            "kept": result.kept,
            "layers": [asdict(r) for r in result.layers],
            "structure": [asdict(r) for r in result.structure],
        }
        if result is not None
        else None,
        owner,
    )
    return UnitResult(
        weights,
        meta["kept"],
        [LayerRecord(**{**r, "shape": tuple(r["shape"])}) for r in meta["layers"]],
        [StructureRecord(**r) for r in meta["structure"]],
    )
