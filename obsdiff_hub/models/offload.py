"""Offloaded pruning (``prune.offload``): the denoiser's blocks live off the run device, in host memory
(``blocks``) or in one safetensors file per block on disk (``blocks-to-disk``), and come onto it only while
they run or are solved.

Each block carries an accelerate hook (:func:`accelerate.hooks.add_hook_to_module`) that, before the block's
forward, reads the block's stored tensors and places them on the run device in the compute dtype
(``set_module_tensor_to_device``), and afterwards puts them back on the meta device: one block is resident
during calibration. While a package is solved its blocks are resident at once (:meth:`BlockOffload.resident`);
on leaving, every block's tensors are written back (surgery may have replaced its layers), so the next
package's trajectories read exactly what the solve wrote and nothing stale.

The stored copy is the checkpoint: always in the checkpoint dtype, on the CPU or in the block's file (rewritten
atomically). Onloading widens it to the compute dtype, and writing back narrows it again; both are exact only
when the compute dtype holds every checkpoint value (the checkpoint's own dtype, or fp32 for half
checkpoints), which the run's dtype policy (``pruning.precision.Precision``) requires. A block's file is mapped
only while the tensors read from it live, so an offloaded block's pages leave the process with it (peak RSS: the
resident modules, one block, the Hessians). A base on disk is not copied: blocks read from the base's own
safetensors files until a solve rewrites them (:func:`lazy_sources`).
"""

from __future__ import annotations

import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal

import torch
from accelerate.hooks import ModelHook, add_hook_to_module, remove_hook_from_module
from accelerate.utils import named_module_tensors, set_module_tensor_to_device
from safetensors import safe_open
from torch import nn

from ..errors import InputError
from ..memory import release_freed_memory
from ..storage.files import write_safetensors_file

OffloadMode = Literal["none", "blocks", "blocks-to-disk"]
Entry = torch.Tensor | tuple[Path, str]  # a tensor in host memory, or (safetensors file, key in it)
ATTRIBUTE = "_obsdiff_offload"  # where a model carries its BlockOffload


def stored_tensors(module: nn.Module) -> list[str]:
    """The tensors of ``module`` that offloading stores: parameters and persistent buffers (non-persistent
    buffers, such as rotary tables, are recomputed by the model and stay where they are)."""
    return [name for name, _ in named_module_tensors(module, True, True, remove_non_persistent=True)]


def read_entries(entries: dict[str, Entry]) -> dict[str, torch.Tensor]:
    """The tensors ``entries`` name, each file opened once (safetensors maps it; the mapping lives as long as
    the tensors read from it)."""
    out = {name: entry for name, entry in entries.items() if isinstance(entry, torch.Tensor)}
    by_file: dict[Path, list[tuple[str, str]]] = {}
    for name, entry in entries.items():
        if not isinstance(entry, torch.Tensor):
            by_file.setdefault(entry[0], []).append((name, entry[1]))
    for file, names in by_file.items():
        with safe_open(str(file), framework="pt") as handle:
            for name, key in names:
                out[name] = handle.get_tensor(key)
    return out


class BlockWeights:
    """One block's stored tensors (names relative to the block): host tensors, or keys in safetensors files."""

    def __init__(self, entries: dict[str, Entry], file: Path | None) -> None:
        self.entries = entries
        self.file = file  # where a written-back block goes (None: host memory)

    def read(self) -> dict[str, torch.Tensor]:
        return read_entries(self.entries)

    def replace(self, state: dict[str, torch.Tensor], dtype: torch.dtype) -> None:
        """Store ``state`` (the block after a solve) in ``dtype``, replacing everything stored before."""
        stored = {
            k: (v.detach().to(dtype) if v.is_floating_point() else v.detach()).to("cpu").contiguous()
            for k, v in state.items()
        }
        if self.file is None:
            self.entries = dict(stored)
            return
        write_safetensors_file(self.file, stored)  # atomically: a reader sees the old block or the new one
        self.entries = {k: (self.file, k) for k in stored}


def offload_block(module: nn.Module) -> None:
    """Every stored tensor of ``module`` back to a meta placeholder (shape and dtype kept)."""
    with torch.inference_mode(False):  # a placeholder made in a calibration forward must stay a normal tensor
        for name in stored_tensors(module):
            set_module_tensor_to_device(module, name, "meta", clear_cache=False)


class OnloadHook(ModelHook):
    """Places a block's stored tensors on the run device for its forward, and back on meta after it."""

    def __init__(self, owner: BlockOffload, path: str) -> None:
        self.owner = owner
        self.path = path

    def pre_forward(self, module: nn.Module, *args: Any, **kwargs: Any) -> tuple[tuple, dict]:
        self.owner.onload(module, self.path)
        return args, kwargs

    def post_forward(self, module: nn.Module, output: Any) -> Any:
        self.owner.offload(module)
        return output


class BlockOffload:
    """The offloaded blocks of one model: their stored weights, hooks, and the moves between them.
    ``seconds``: the time spent moving and writing back blocks (what offloading cost the run)."""

    def __init__(
        self,
        paths: list[str],
        weights: dict[str, BlockWeights],
        device: torch.device,
        dtype: torch.dtype,
        mode: OffloadMode,
    ) -> None:
        self.paths = paths
        self.weights = weights
        self.device = device
        self.dtype = dtype  # the checkpoint dtype: what is stored
        self.mode = mode
        self.seconds = 0.0

    @classmethod
    def from_model(
        cls,
        model: nn.Module,
        paths: list[str],
        device: torch.device,
        dtype: torch.dtype,
        mode: OffloadMode,
        folder: Path | None,
        sources: dict[str, dict[str, Entry]] | None = None,
    ) -> BlockOffload:
        """Offload ``paths`` of ``model``: their tensors (or, for a lazily loaded base, ``sources``: per block,
        where each tensor already lies) stored in host memory or as one file per block under ``folder``."""
        if mode == "blocks-to-disk" and folder is None:
            raise InputError("offload blocks-to-disk needs a folder for the blocks' files (`offload_folder`)")
        if mode == "blocks-to-disk" and folder is not None:
            if folder.exists() and not folder.is_dir():
                raise InputError(f"offload_folder {folder} is a file; give a folder for the blocks' files")
            folder.mkdir(parents=True, exist_ok=True)
        run = uuid.uuid4().hex[:12]  # runs sharing a folder never share (or overwrite) each other's blocks
        weights = {}
        for index, path in enumerate(paths):
            block = model.get_submodule(path)
            file = folder / f"block-{run}-{index:04d}.safetensors" if mode == "blocks-to-disk" and folder else None
            if sources is not None:
                weights[path] = BlockWeights(dict(sources[path]), file)
            else:
                weights[path] = BlockWeights({}, file)
                weights[path].replace(block.state_dict(), dtype)
            offload_block(block)
        offloaded = cls(paths, weights, device, dtype, mode)
        offloaded.attach(model)
        return offloaded

    def attach(self, model: nn.Module) -> None:
        """Hook every offloaded block of ``model`` (the same paths: a promoted copy of the model takes over)."""
        for path in self.paths:
            add_hook_to_module(model.get_submodule(path), OnloadHook(self, path))
        setattr(model, ATTRIBUTE, self)

    def onload(self, block: nn.Module, path: str) -> None:
        """The block's stored tensors on the run device, each cast to the dtype its meta placeholder carries."""
        start = time.perf_counter()
        with torch.inference_mode(False):  # normal tensors, even in a calibration forward: solves edit them later
            for name, tensor in self.weights[path].read().items():
                set_module_tensor_to_device(block, name, self.device, value=tensor, clear_cache=False)
        self.seconds += time.perf_counter() - start

    def offload(self, block: nn.Module) -> None:
        """The block back to meta placeholders, its memory handed back (glibc would otherwise keep every
        block's freed tensors resident: a 12-block model measured 1.7 GB above its start instead of 0.2)."""
        start = time.perf_counter()
        offload_block(block)
        release_freed_memory()
        self.seconds += time.perf_counter() - start

    @contextmanager
    def resident(self, model: nn.Module, paths: Iterable[str]) -> Iterator[None]:
        """``paths`` on the run device for the duration; then written back and offloaded again."""
        chosen = [p for p in dict.fromkeys(paths) if p in self.weights]
        for path in chosen:
            self.onload(model.get_submodule(path), path)
        try:
            yield
        finally:
            for path in chosen:
                block = model.get_submodule(path)
                start = time.perf_counter()
                self.weights[path].replace(block.state_dict(), self.dtype)
                self.seconds += time.perf_counter() - start
                self.offload(block)

    def read(self, model: nn.Module, names: list[str]) -> dict[str, torch.Tensor]:
        """The checkpoint values of ``names`` (full parameter names of ``model``): offloaded ones from their
        blocks' stores (one block file open at a time), the others from the model."""
        state = model.state_dict()
        out: dict[str, torch.Tensor] = {}
        wanted: dict[str, dict[str, Entry]] = {}
        for name in names:
            block = block_of(name, self.paths)
            if block is None:
                out[name] = state[name]
            else:
                wanted.setdefault(block, {})[name] = self.weights[block].entries[name[len(block) + 1 :]]
        for entries in wanted.values():  # in the model's dtype now (stored: the checkpoint's), as state_dict() gives
            out.update({k: v.to(state[k].dtype) for k, v in read_entries(entries).items()})
        return out

    def materialize(self, model: nn.Module, device: torch.device) -> None:
        """Every block back in ``model`` on ``device`` in the checkpoint dtype, hooks removed (the end of a
        ``blocks`` run: the result lives in host memory, as the whole model did)."""
        for path in self.paths:
            block = model.get_submodule(path)
            remove_hook_from_module(block)
            for name, tensor in self.weights[path].read().items():
                set_module_tensor_to_device(block, name, device, value=tensor, dtype=tensor.dtype, clear_cache=False)
        if getattr(model, ATTRIBUTE, None) is self:
            delattr(model, ATTRIBUTE)


def block_of(name: str, paths: list[str]) -> str | None:
    """The block (of ``paths``, none inside another) a parameter name lies in, or None."""
    return next((path for path in paths if name.startswith(f"{path}.")), None)


def offload_of(model: nn.Module) -> BlockOffload | None:
    """The model's offloaded blocks, when it has any."""
    return getattr(model, ATTRIBUTE, None)


def lazy_sources(files: dict[str, Path], paths: list[str]) -> tuple[dict[str, dict[str, Entry]], dict[str, Entry]]:
    """Where each tensor of a base on disk lies (``files``: parameter name → safetensors file), split into the
    blocks' tensors (per block, names relative to it) and the rest (loaded resident)."""
    blocks: dict[str, dict[str, Entry]] = {p: {} for p in paths}
    rest: dict[str, Entry] = {}
    for name, file in files.items():
        block = block_of(name, paths)
        if block is None:
            rest[name] = (file, name)
        else:
            blocks[block][name[len(block) + 1 :]] = (file, name)
    return blocks, rest
