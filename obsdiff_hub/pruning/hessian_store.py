"""Saved calibration: each module package's Hessian sums as safetensors, with what produced them.

The expensive part of a run is the trajectories; the Hessians they leave are all a solve needs.
``HessianStore(folder, identity, write=True)`` saves every package's raw fp32 sums (with their
``Σ α·samples``) as ``package-N.safetensors``; ``write=False`` reads them back so another sparsity,
damping or solver runs without a trajectory (a later package is reused only when the network it
calibrates on is the same, i.e. the earlier packages were pruned identically; otherwise it is
calibrated again). A package's Hessians are valid only for the same
base weights, calibration (prompts, steps, guidance, resolution, seed, negative prompt, dtype),
timestep weighting, accumulation precision, package layout and the same network state at the
start of the package (earlier packages pruned identically): all of it is the *identity* written
into each file's header, and a store whose identity differs is refused naming the first
difference. The folder follows the output rules (this tool's marker, atomic writes, nothing of
anyone else's touched or read through a link).
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import InputError
from ..maths.hessian import HessianAccumulator
from ..storage import jsonio
from ..storage.files import readable_file, safetensors_header, write_safetensors_file
from ..storage.outputs import (
    Destination,
    HeldFolder,
    first_foreign_file,
    probe_writable,
    read_marker,
)

KIND = "hessians"


def state_sha256(model: nn.Module) -> str:
    """A digest of every parameter's name, dtype, shape and bytes (the network a package calibrates on)."""
    digest = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        tensor = p.detach().contiguous().cpu()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def update_digest(digest: Any, name: str, tensor: torch.Tensor) -> None:
    tensor = tensor.detach().to("cpu", torch.float32).contiguous()
    digest.update(f"{name}:{tuple(tensor.shape)};".encode())
    digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")


def content_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """A digest of a store file's tensors (names, shapes and fp32 bytes, in name order), saved with them."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        update_digest(digest, name, tensors[name])
    return digest.hexdigest()


def check_saved_hessian(
    path: Path, name: str, H: torch.Tensor, total: Any, width: int, alphas: tuple[float, float]
) -> tuple[float, int]:
    """A stored Hessian sum and its totals as only accumulation makes them, else an error naming the layer:
    ``width``², finite, a non-negative diagonal that is not all zero, every entry within Cauchy-Schwarz of
    the diagonal (``|H_ij|² ≤ H_ii H_jj``), a whole number of samples (at most 2⁵³) and ``Σ α·samples``
    between the run's smallest and largest timestep weight times the samples. Returns both totals."""
    damaged = f"{path}: the Hessian of {name}"
    if tuple(H.shape) != (width, width):
        raise InputError(f"{damaged} is not {width}×{width}; it was saved for another model")
    valid = (
        isinstance(total, list)
        and len(total) == 2
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in total)
    )
    if not valid or not (math.isfinite(total[0]) and 1 <= total[1] <= 2**53 and total[1] == int(total[1])):
        raise InputError(f"{damaged} has no finite positive totals; the store is damaged")
    low, high = alphas[0] * total[1] * (1 - 1e-6), alphas[1] * total[1] * (1 + 1e-6)
    if not low <= total[0] <= high:
        raise InputError(f"{damaged} has totals these timestep weights cannot give; the store is damaged")
    lower = torch.tril(H.double())
    diagonal = lower.diagonal()
    if not bool(torch.isfinite(lower).all()) or bool((diagonal < 0).any()) or not bool((diagonal > 0).any()):
        raise InputError(f"{damaged} is not finite with a non-negative, non-zero diagonal; the store is damaged")
    bound = torch.sqrt(diagonal.unsqueeze(0) * diagonal.unsqueeze(1)) * (1 + 1e-3) + 1e-30
    if bool((lower.abs() > bound).any()):
        raise InputError(f"{damaged} has entries larger than its diagonal allows; the store is damaged")
    return float(total[0]), int(total[1])


class HessianStore:
    """Where a run saves (``write=True``) or finds (``write=False``) its packages' Hessians."""

    def __init__(self, folder: str | Path, identity: dict[str, str], *, write: bool) -> None:
        self.folder = Path(folder)
        self.identity = dict(identity)
        self.write = write
        self.held: HeldFolder | None = None  # a store being written: every write goes through it
        ours = not self.folder.is_symlink() and (read_marker(self.folder) or {}).get("kind") == KIND
        if write:
            if self.folder.is_symlink() or (self.folder.exists() and not ours):
                raise InputError(
                    f"{self.folder} exists and is not a Hessian store obsdiff-hub wrote; give `save_hessians` a "
                    "new folder"
                )
            if ours and first_foreign_file(self.folder) is not None:
                raise InputError(
                    f"{self.folder} holds {first_foreign_file(self.folder)}, which obsdiff-hub did not write; give "
                    "`save_hessians` a new folder"
                )
            if not ours:
                probe_writable(self.folder)
                with Destination(self.folder) as place, place.parent() as parent:
                    self.held = parent.folder(self.folder.name)
                self.held.mark([], kind=KIND)
            else:
                self.held = HeldFolder.open(self.folder, follow_link=False)
        else:
            if not ours:
                raise InputError(f"{self.folder} is not a Hessian store written by obsdiff-hub (`save_hessians`)")
            self.check(0, None)
            self.held = HeldFolder.open(self.folder, follow_link=False)  # packages calibrated again are added

    def alpha_range(self) -> tuple[float, float]:
        """The run's smallest and largest timestep weight, from the identity (``[weighting, α_min, α_max]``;
        ``uniform`` weighs every step 1)."""
        weighting, alpha_min, alpha_max = json.loads(self.identity["timestep_weights"])
        return (1.0, 1.0) if weighting == "uniform" else (float(alpha_min), float(alpha_max))

    def path(self, index: int) -> Path:
        return self.folder / f"package-{index + 1}.safetensors"

    def check(self, index: int, state: str | None) -> None:
        """Refuse a stored package made by anything else than this run (``state``: the network's digest, None to
        skip)."""
        path = self.path(index)
        if not readable_file(path, self.folder):
            raise InputError(f"{path} is missing from the Hessian store; it holds fewer packages than this run has")
        stored = self._record(path, "identity")
        expected = {**self.identity, **({"state_sha256": state} if state is not None else {})}
        for key, value in expected.items():
            if stored.get(key) != value:
                raise InputError(
                    f"{path} was made with {key} = {str(stored.get(key))[:80]!r}, this run has {value[:80]!r}; "
                    "Hessians are reusable only for the same base, calibration and earlier packages"
                )

    @staticmethod
    def _record(path: Path, key: str) -> dict[str, Any]:
        """A JSON object from a store file's header (``identity`` or ``totals``), or an error naming the file."""
        with safetensors_header(path) as f:
            text = (f.metadata() or {}).get(key, "{}")
        try:
            record = jsonio.loads(text)
        except ValueError:
            record = None
        if not isinstance(record, dict):
            raise InputError(f"{path}: its {key} record is damaged; save the store again")
        return record

    def holds(self, index: int, state: str) -> bool:
        """Whether package ``index`` is stored for exactly this network state (later packages of a
        run with another sparsity calibrate on another network, so they are calibrated again)."""
        path = self.path(index)
        if not readable_file(path, self.folder):
            return False
        return self._record(path, "identity").get("state_sha256") == state

    def store_package(self, index: int, state: str, accumulators: dict[str, HessianAccumulator]) -> None:
        tensors = {name: acc.sum.detach().to("cpu", torch.float32).contiguous() for name, acc in accumulators.items()}
        totals = {name: [acc.total_weight, acc.num_samples] for name, acc in accumulators.items()}
        metadata = {
            "identity": json.dumps({**self.identity, "state_sha256": state}, sort_keys=True),
            "totals": json.dumps(totals, sort_keys=True),
            "content_sha256": content_sha256(tensors),
        }
        assert self.held is not None, "opened in __init__"
        self.held.verify()
        name = self.path(index).name
        write_safetensors_file(self.held.pinned / name, tensors, metadata=metadata)
        listed = read_marker(self.held.pinned)
        self.held.mark([*(listed or {}).get("files", []), name], kind=KIND)

    def load(
        self, index: int, state: str, model: nn.Module, layers: list[str], device: torch.device | None
    ) -> dict[str, HessianAccumulator]:
        """The package's accumulators, exactly as the run that saved them left them."""
        self.check(index, state)
        path = self.path(index)
        totals = self._record(path, "totals")
        accumulators: dict[str, HessianAccumulator] = {}
        digest = hashlib.sha256()
        with safetensors_header(path) as f:
            missing = sorted(set(layers) - set(f.keys()))
            if missing:
                raise InputError(f"{path} has no Hessian for {missing[0]}; it was saved for another package layout")
            recorded = (f.metadata() or {}).get("content_sha256")
            for name in sorted(f.keys()):  # one tensor in memory at a time beside the accumulators
                tensor = f.get_tensor(name)
                update_digest(digest, name, tensor)
                if name in layers:
                    width = model.get_submodule(name).in_features
                    total = check_saved_hessian(path, name, tensor, totals.get(name), width, self.alpha_range())
                    acc = HessianAccumulator(width, device=device or model.get_submodule(name).weight.device)
                    acc.sum.copy_(tensor)
                    acc.total_weight, acc.num_samples = total
                    accumulators[name] = acc
        if recorded != digest.hexdigest():
            raise InputError(f"{path}: its Hessians do not match the digest saved with them; the store is damaged")
        return accumulators
