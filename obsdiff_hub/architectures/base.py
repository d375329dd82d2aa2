"""What an architecture tells the engine: targeted layers, basic units, couplings.

Everything is expressed as module paths (``model.get_submodule(path)``) so the engine,
the planner and the loader can share one description of each model family.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Union

import diffusers
import torch
from diffusers.models.activations import GEGLU
from torch import nn

from ..errors import InputError

QKV = ("to_q", "to_k", "to_v")


@dataclass(frozen=True)
class LinearSite:
    """Linear layers that read the same input in one forward, so they share one Hessian."""

    layers: tuple[str, ...]

    @property
    def hessian_layer(self) -> str:
        return self.layers[0]


@dataclass(frozen=True)
class HeadCoupling:
    """One attention's heads: rows in ``row_layers``, leading columns of ``out_layers``.

    ``out_layers`` with two entries is MMDiT joint attention (one head set, two streams).
    """

    attention: str
    row_layers: tuple[str, ...]
    out_layers: tuple[str, ...]
    num_heads: int
    head_dim: int

    @property
    def key(self) -> str:
        """The module path recorded in ``obsdiff_structure``."""
        return self.attention

    def count(self, model: nn.Module) -> int:
        """Heads the attention has now (it shrinks as heads are removed)."""
        return model.get_submodule(self.attention).heads


@dataclass(frozen=True)
class NeuronCoupling:
    """One MLP's hidden neurons: rows of ``in_layer`` (both halves for GEGLU), trailing columns of ``out_layer``."""

    owner: str
    in_layer: str
    out_layer: str
    width: int
    geglu: bool

    @property
    def key(self) -> str:
        """The module path recorded in ``obsdiff_structure``."""
        return self.owner

    def count(self, model: nn.Module) -> int:
        """Hidden neurons the MLP has now (GEGLU's input projection stacks two halves)."""
        out = model.get_submodule(self.in_layer).out_features
        return out // 2 if self.geglu else out


@dataclass(frozen=True)
class StructuredSite:
    """Couplings pruned through one output projection's Hessian (per layer in ``out_layers``)."""

    out_layers: tuple[str, ...]
    heads: HeadCoupling | None = None
    neurons: NeuronCoupling | None = None

    def column_groups(self, model: nn.Module) -> tuple[list[torch.Tensor], range, range]:
        """The output projections' input columns as removable groups, for the model as it is now.

        Heads are the leading ``heads · head_dim`` columns (one group of ``head_dim`` each),
        neurons the trailing ``width`` columns (one each; Flux's ``proj_out`` has both).
        Returns ``(groups, head group ids, neuron group ids)``.
        """
        groups: list[torch.Tensor] = []
        if self.heads is not None:
            d = self.heads.head_dim
            groups += [torch.arange(h * d, (h + 1) * d) for h in range(self.heads.count(model))]
        head_ids = range(len(groups))
        if self.neurons is not None:
            in_features = model.get_submodule(self.out_layers[0]).in_features
            width = self.neurons.count(model)
            groups += [torch.tensor([c]) for c in range(in_features - width, in_features)]
        return groups, head_ids, range(len(head_ids), len(groups))


Site = Union[LinearSite, StructuredSite]
BasicUnit = list  # list[Site]: sites whose inputs do not depend on each other in one forward


@dataclass(frozen=True)
class BlockUnit:
    """A basic unit and the index of the block it belongs to (for per-block sparsity and reports)."""

    block: int
    sites: BasicUnit


class Architecture(ABC):
    """Knows one diffusers model family; the engine and loaders only talk to this interface."""

    family: str
    model_class_name: str
    latent_packing: int = 1  # latents per token side (Flux packs 2×2 latent patches into one token)

    def matches(self, model: nn.Module) -> bool:
        return isinstance(model, getattr(diffusers, self.model_class_name))

    @abstractmethod
    def blocks(self, model: nn.Module) -> list[str]:
        """Paths of the prunable transformer blocks, in forward order."""

    @abstractmethod
    def block_units(self, model: nn.Module, path: str, structured: bool) -> list[BasicUnit]:
        """The basic units of one block in forward order (linear sites, or structured sites)."""

    def units(self, model: nn.Module, block_ids: list[int] | None, structured: bool) -> list[BlockUnit]:
        paths = self.blocks(model)
        chosen = range(len(paths)) if block_ids is None else block_ids
        for b in chosen:
            if not 0 <= b < len(paths):
                raise InputError(f"block {b} is out of range: this {self.family} model has blocks 0..{len(paths) - 1}")
        return [
            BlockUnit(b, unit)
            for b in sorted(set(chosen))
            for unit in self.block_units(model, paths[b], structured)
            if unit
        ]

    def couplings(self, model: nn.Module) -> list[HeadCoupling | NeuronCoupling]:
        """Every head and neuron coupling of the model (for planning and loading pruned shapes)."""
        found: list[HeadCoupling | NeuronCoupling] = []
        for unit in self.units(model, None, structured=True):
            for site in unit.sites:
                found += [c for c in (site.heads, site.neurons) if c is not None]
        return found


def has(module: nn.Module, path: str) -> bool:
    try:
        return module.get_submodule(path) is not None
    except AttributeError:
        return False


def head_coupling(
    model: nn.Module, attn_path: str, row_names: tuple[str, ...], out_names: tuple[str, ...]
) -> HeadCoupling:
    """Build a head coupling from the attention module's present projections."""
    attn = model.get_submodule(attn_path)
    rows = tuple(f"{attn_path}.{n}" for n in row_names if has(attn, n))
    outs = tuple(f"{attn_path}.{n}" for n in out_names if has(attn, n))
    head_dim = attn.inner_dim // attn.heads
    return HeadCoupling(attn_path, rows, outs, attn.heads, head_dim)


def feed_forward_coupling(model: nn.Module, ff_path: str) -> NeuronCoupling:
    """diffusers ``FeedForward``: ``net.0.proj`` (GELU or GEGLU) → ``net.2``."""
    ff = model.get_submodule(ff_path)
    out = ff.net[2]
    return NeuronCoupling(
        ff_path, f"{ff_path}.net.0.proj", f"{ff_path}.net.2", out.in_features, isinstance(ff.net[0], GEGLU)
    )


def feed_forward_sites(ff_paths: list[str]) -> tuple[list[LinearSite], list[LinearSite]]:
    """(FFN input sites, FFN output sites) for unstructured pruning."""
    return [LinearSite((f"{p}.net.0.proj",)) for p in ff_paths], [LinearSite((f"{p}.net.2",)) for p in ff_paths]
