"""Several processes, one pruning run: torch.distributed under ``torchrun`` / ``accelerate launch``.

Detected from the environment the launchers set (``WORLD_SIZE``, ``RANK``, ``MASTER_ADDR``);
one process needs nothing. Calibration prompts are sharded by index (each prompt keeps its
seed), every rank accumulates Hessians and their normalisers, and ``all_reduce`` sums them,
so the normalised Hessian equals the single-process one. The layers of a package are then
solved on the rank that owns them (balanced by cost) and the results broadcast, so every rank
holds the same network before the next package. A failure on one rank becomes one error on
every rank (:meth:`World.together`) instead of a hang in the next collective.

Everything sent between ranks is tensors and JSON, never pickles.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from typing import Any, Iterator, Sequence

import torch
import torch.distributed as dist

from ..errors import InputError, ObsDiffError, UnsupportedEnvironmentError
from .precision import check_device_dtype


class RankFailure(ObsDiffError):
    """Another rank stopped with one of this package's errors (a user's mistake); this one stops too.
    (A crash of another rank is re-raised as a plain ``RuntimeError``: a bug.)"""


def is_main_process() -> bool:
    """Whether this process reports and writes: always, unless a launcher made it a rank other than 0."""
    return int(os.environ.get("RANK", "0")) == 0


def launched_processes() -> int:
    """How many processes a launcher (torchrun, accelerate launch) started for this run; 1 without one."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def resolve_device(name: str | None) -> torch.device:
    """``cpu``, ``cuda``, ``cuda:N`` (default: cuda when available; under a launcher each process's
    own GPU), or a one-line error."""
    try:
        device = torch.device(name) if name else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    except RuntimeError:
        raise InputError(f"unknown device {name!r}; use cpu, cuda or cuda:N") from None
    device = World.local_device(device)
    check_device_dtype(device, torch.float32)  # one that exists here
    return device


class World:
    """The processes of this run (one, unless launched by torchrun or accelerate)."""

    def __init__(
        self, rank: int = 0, size: int = 1, comm_device: torch.device | None = None, owns_group: bool = False
    ) -> None:
        self.rank = rank
        self.size = size
        self.comm_device = comm_device or torch.device("cpu")
        self.owns_group = owns_group

    @classmethod
    def from_environment(cls, device: torch.device) -> World:
        """Join the process group a launcher prepared (NCCL on CUDA, gloo on CPU), or run alone."""
        if dist.is_available() and dist.is_initialized():
            backend = dist.get_backend()
            comm = device if backend == "nccl" else torch.device("cpu")
            return cls(dist.get_rank(), dist.get_world_size(), comm)
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return cls()
        if not dist.is_available():
            raise UnsupportedEnvironmentError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend, device_id=device if device.type == "cuda" else None)
        return cls(
            dist.get_rank(),
            dist.get_world_size(),
            device if backend == "nccl" else torch.device("cpu"),
            owns_group=True,
        )

    @staticmethod
    def local_device(device: torch.device) -> torch.device:
        """Under a launcher each process takes its own GPU: ``cuda`` becomes ``cuda:LOCAL_RANK``."""
        if device.type == "cuda" and device.index is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, count: int) -> list[int]:
        """The item indices this rank handles (strided, so ranks get near-equal shares)."""
        return list(range(self.rank, count, self.size))

    def close(self) -> None:
        """Leave the process group if this run created it."""
        if self.owns_group:
            dist.destroy_process_group()
            self.owns_group = False

    # ------------------------------------------------------------------ collectives

    def all_reduce_(self, tensor: torch.Tensor) -> None:
        """Sum ``tensor`` over all ranks, in place."""
        if self.size == 1:
            return
        if tensor.device == self.comm_device:
            dist.all_reduce(tensor)
            return
        moved = tensor.to(self.comm_device)
        dist.all_reduce(moved)
        tensor.copy_(moved)

    def broadcast_json(self, value: Any, src: int) -> Any:
        """``value`` from rank ``src`` (JSON-serialisable), on every rank."""
        if self.size == 1:
            return value
        payload = json.dumps(value).encode() if self.rank == src else b""
        length = torch.tensor([len(payload)], dtype=torch.int64, device=self.comm_device)
        dist.broadcast(length, src)
        data = torch.empty(int(length), dtype=torch.uint8, device=self.comm_device)
        if self.rank == src:
            data.copy_(torch.frombuffer(bytearray(payload), dtype=torch.uint8))
        dist.broadcast(data, src)
        return json.loads(bytes(data.cpu().tolist()).decode())

    def broadcast_tensors(
        self, tensors: dict[str, torch.Tensor] | None, src: int, device: torch.device
    ) -> dict[str, torch.Tensor]:
        """Named tensors from rank ``src`` on every rank (any dtype; sent as bytes)."""
        if self.size == 1:
            return tensors or {}
        meta = {k: [list(t.shape), str(t.dtype).removeprefix("torch.")] for k, t in (tensors or {}).items()}
        meta = self.broadcast_json(meta if self.rank == src else None, src)
        out: dict[str, torch.Tensor] = {}
        for name, (shape, dtype_name) in meta.items():
            dtype = getattr(torch, dtype_name)
            if self.rank == src:
                buffer = tensors[name].detach().contiguous().to(self.comm_device).view(torch.uint8).reshape(-1)  # type: ignore[index]
            else:
                numel = int(torch.Size(shape).numel()) * torch.empty((), dtype=dtype).element_size()
                buffer = torch.empty(numel, dtype=torch.uint8, device=self.comm_device)
            dist.broadcast(buffer, src)
            out[name] = buffer.view(dtype).reshape(shape).to(device)
        return out

    def sum_accumulators(self, accumulators: dict[str, Any]) -> None:
        """All-reduce Hessian (or cross-term) sums and their normalisers, so every rank holds the global ones."""
        if self.size == 1:
            return
        for acc in accumulators.values():
            self.all_reduce_(acc.sum)
        totals = torch.tensor(
            [[a.total_weight, float(a.num_samples)] for a in accumulators.values()], dtype=torch.float64
        )
        self.all_reduce_(totals)
        for acc, (weight, samples) in zip(accumulators.values(), totals.tolist()):
            acc.total_weight, acc.num_samples = weight, int(samples)

    def owners(self, costs: Sequence[float]) -> list[int]:
        """A rank for each item, balancing total cost (largest first onto the least loaded rank)."""
        load = [0.0] * self.size
        owner = [0] * len(costs)
        for index in sorted(range(len(costs)), key=lambda i: -costs[i]):
            rank = min(range(self.size), key=load.__getitem__)
            owner[index] = rank
            load[rank] += costs[index]
        return owner

    @contextmanager
    def together(self, stage: str) -> Iterator[None]:
        """Run a stage's local work on every rank; if any rank fails, every rank raises (the
        failing one its own error). The block must contain no collective: a rank that fails
        early would meet the others in a different one."""
        if self.size == 1:
            yield
            return
        failure: BaseException | None = None
        try:
            yield
        except BaseException as error:  # noqa: BLE001 - re-raised below, after telling the other ranks
            failure = error
        flags = torch.zeros(self.size, dtype=torch.int64, device=self.comm_device)
        flags[self.rank] = int(failure is not None)
        self.all_reduce_(flags)
        failed = [r for r in range(self.size) if flags[r]]
        if not failed:
            return
        told = (
            {"message": f"{type(failure).__name__}: {failure}", "ours": isinstance(failure, ObsDiffError)}
            if self.rank == failed[0]
            else None
        )
        told = self.broadcast_json(told, failed[0])
        if failure is not None:
            raise failure
        if told["ours"]:
            raise RankFailure(f"rank {failed[0]} failed while {stage}: {told['message']}")
        raise RuntimeError(f"rank {failed[0]} failed while {stage}: {told['message']}")
