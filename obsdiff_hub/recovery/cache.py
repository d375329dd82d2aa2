"""The teacher's data, recorded once: every denoiser call of the sampled trajectories with the dense
model's prediction for it, in safetensors shards on disk, hashed, read back batch by batch.

A call's arguments are flattened to named tensors (``added_cond_kwargs.time_ids``). Each is either
per row (first dimension the call's batch; a 0-d timestep is expanded to one per row) or shared by
every call (Flux's positional ids), stored once. Each row carries the index of the prompt it came
from, so training and validation split by prompt. ``cache.json`` names the run the cache belongs to
and the sha256 of every shard; a cache of another run, or one whose files changed, is refused in one
line, and nothing in it is ever called or unpickled.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors import safe_open
from torch import nn

from ..errors import InputError
from ..storage.files import read_json, write_safetensors_file
from ..storage.manifest import sha256_file
from ..storage.outputs import write_atomic

MANIFEST = "cache.json"
SHARED_FILE = "shared.safetensors"
FORMAT = 1
SHARD_BYTES = 256 * 1024**2
SHARED_INPUTS = frozenset({"txt_ids", "img_ids"})  # per token, not per row (Flux)
PROMPT_KEY = "__prompt__"
TARGET_KEY = "__target__"


class CacheError(InputError):
    """A teacher cache that is not this run's, or whose files changed; the message says what to do."""


def flatten(arguments: dict[str, Any], prefix: str = "") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A call's arguments as named tensors (nested mappings joined by dots) and plain settings (bools,
    numbers, strings); ``None`` and ``return_dict`` are dropped (training calls with ``return_dict=False``)."""
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, Any] = {}
    for name, value in arguments.items():
        key = f"{prefix}{name}"
        if value is None or key == "return_dict":
            continue
        if isinstance(value, torch.Tensor):
            tensors[key] = value
        elif isinstance(value, dict):
            inner_tensors, inner_plain = flatten(value, f"{key}.")
            tensors.update(inner_tensors)
            plain.update(inner_plain)
        elif isinstance(value, (bool, int, float, str)):
            plain[key] = value
        else:
            raise InputError(f"cannot record the denoiser's argument {key} ({type(value).__name__})")
    return tensors, plain


def unflatten(tensors: dict[str, Any]) -> dict[str, Any]:
    """The inverse of :func:`flatten`: dotted names back to nested keyword arguments."""
    nested: dict[str, Any] = {}
    for key, value in tensors.items():
        *parents, leaf = key.split(".")
        node = nested
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return nested


@dataclass
class Recorder:
    """Collects ``(arguments, target)`` of denoiser calls and writes them as shards into ``folder``."""

    folder: Path
    identity: str
    max_bytes: int
    calls: int  # how many calls the recording will make (to refuse an oversized cache after the first)
    signature: inspect.Signature
    rows: list[dict[str, torch.Tensor]] = field(default_factory=list)
    buffered: int = 0
    shards: list[dict[str, Any]] = field(default_factory=list)
    shared: dict[str, torch.Tensor] | None = None
    plain: dict[str, Any] | None = None
    written: int = 0

    @classmethod
    def for_model(cls, model: nn.Module, folder: Path, identity: str, max_bytes: int, calls: int) -> Recorder:
        folder.mkdir(parents=True, exist_ok=True)
        return cls(folder, identity, max_bytes, calls, inspect.signature(model.forward))

    def add(self, args: tuple, kwargs: dict[str, Any], target: torch.Tensor, prompt_ids: list[int]) -> None:
        """One call: its arguments as the model received them, the teacher's prediction, and the prompt
        index of each of its rows (a CFG batch holds each prompt twice)."""
        bound = self.signature.bind(*args, **kwargs).arguments
        tensors, plain = flatten(bound)
        batch = target.shape[0]
        if batch % len(prompt_ids):
            raise InputError(f"a denoiser call of {batch} rows does not match its {len(prompt_ids)} prompts")
        per_row = {TARGET_KEY: target, PROMPT_KEY: torch.tensor(prompt_ids * (batch // len(prompt_ids)))}
        shared = {}
        for key, value in tensors.items():
            if value.dim() == 0:
                per_row[key] = value.expand(batch)
            elif value.shape[0] == batch and key.rsplit(".", 1)[-1] not in SHARED_INPUTS:
                per_row[key] = value
            else:
                shared[key] = value
        call_bytes = sum(v.numel() * v.element_size() for v in per_row.values())
        if self.shared is None:
            self.shared, self.plain = {k: v.detach().cpu().clone() for k, v in shared.items()}, plain
            if call_bytes * self.calls > self.max_bytes:
                raise InputError(
                    f"the teacher's data would take {call_bytes * self.calls / 1e9:.1f} GB, over cache_max_gb "
                    f"({self.max_bytes / 1e9:g}); record fewer prompts or steps, or raise recover.cache_max_gb"
                )
        elif plain != self.plain or set(shared) != set(self.shared):
            raise InputError("the denoiser was called with different settings within one recording")
        self.rows.append({k: v.detach().cpu().contiguous() for k, v in per_row.items()})
        self.buffered += call_bytes
        if self.buffered >= SHARD_BYTES:
            self.flush()

    def flush(self) -> None:
        if not self.rows:
            return
        tensors = {k: torch.cat([r[k] for r in self.rows]) for k in self.rows[0]}
        name = f"rows-{len(self.shards):05d}.safetensors"
        write_safetensors_file(self.folder / name, tensors)
        count = tensors[TARGET_KEY].shape[0]
        self.shards.append({"file": name, "rows": count, "sha256": sha256_file(self.folder / name)})
        self.written += count
        self.rows, self.buffered = [], 0

    def finish(self) -> None:
        """Write the last shard, the shared inputs and the manifest (last: a cache without one is incomplete)."""
        self.flush()
        if self.shared is None:
            raise InputError("the recording made no denoiser calls")
        write_safetensors_file(self.folder / SHARED_FILE, self.shared)
        manifest = {
            "format": FORMAT,
            "identity": self.identity,
            "plain": self.plain,
            "rows": self.written,
            "shared": {"file": SHARED_FILE, "sha256": sha256_file(self.folder / SHARED_FILE)},
            "shards": self.shards,
        }
        write_atomic(self.folder / MANIFEST, json.dumps(manifest, indent=1) + "\n")


class TeacherCache:
    """A recorded cache, checked against ``identity`` and its hashes, read a batch of rows at a time."""

    def __init__(self, folder: Path, identity: str) -> None:
        path = folder / MANIFEST
        if not path.is_file():
            raise CacheError(f"{folder} holds no finished teacher cache; record it again (run without `resume`)")
        manifest = read_json(path)
        if manifest.get("format") != FORMAT or manifest.get("identity") != identity:
            raise CacheError(
                f"{folder} holds teacher data of another run or version; remove it or pass `restart` to record anew"
            )
        files = [manifest["shared"], *manifest["shards"]]
        for entry in files:
            name = str(entry["file"])
            if "/" in name or name.startswith(".") or sha256_file(folder / name) != entry["sha256"]:
                raise CacheError(f"{folder / name} changed since it was recorded; pass `restart` to record anew")
        self.folder = folder
        self.plain: dict[str, Any] = dict(manifest["plain"])
        with safe_open(str(folder / SHARED_FILE), framework="pt") as f:
            self.shared = {k: f.get_tensor(k) for k in f.keys()}
        self.handles = [safe_open(str(folder / e["file"]), framework="pt") for e in manifest["shards"]]
        prompts = [h.get_tensor(PROMPT_KEY) for h in self.handles]
        counts = [len(p) for p in prompts]  # from the shards themselves, not from what the manifest claims
        if counts != [e["rows"] for e in manifest["shards"]] or sum(counts) != manifest["rows"]:
            raise CacheError(f"{folder}: its manifest and its shards disagree; pass `restart` to record anew")
        self.index = [(s, r) for s, count in enumerate(counts) for r in range(count)]
        self.prompt_of = torch.cat(prompts)

    def rows_of(self, prompts: set[int]) -> list[int]:
        """The rows recorded for these prompt indices, in recording order."""
        return [i for i, p in enumerate(self.prompt_of.tolist()) if p in prompts]

    def batch(self, rows: list[int], device: torch.device, dtype: torch.dtype) -> tuple[dict[str, Any], torch.Tensor]:
        """Keyword arguments for the denoiser and the teacher's predictions for ``rows``."""
        keys = [k for k in self.handles[self.index[rows[0]][0]].keys() if k != PROMPT_KEY]
        parts: dict[str, list[torch.Tensor]] = {k: [] for k in keys}
        for row in rows:
            shard, at = self.index[row]
            for key in keys:
                parts[key].append(self.handles[shard].get_slice(key)[at : at + 1])

        def placed(t: torch.Tensor) -> torch.Tensor:
            return t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype)

        tensors = {k: placed(torch.cat(v)) for k, v in parts.items()}
        target = tensors.pop(TARGET_KEY)
        tensors.update({k: placed(v) for k, v in self.shared.items()})
        return {**unflatten({**tensors, **self.plain}), "return_dict": False}, target

    def batches(self, rows: list[int], size: int, device: torch.device, dtype: torch.dtype) -> Iterator[tuple]:
        for start in range(0, len(rows), size):
            yield self.batch(rows[start : start + size], device, dtype)


def cache_identity(**parts: Any) -> str:
    """A cache's identity: sha256 of what it was recorded from (settings, prompts, models' digests)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()
