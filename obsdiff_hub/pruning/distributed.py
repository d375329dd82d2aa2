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


class RankFailure(RuntimeError):
    """Another rank failed; this one stops too."""


class World:
    """The processes of this run (one, unless launched by torchrun or accelerate)."""

    def __init__(self, rank: int = 0, size: int = 1, comm_device: torch.device | None = None, owns_group: bool = False) -> None:
        self.rank = rank
        self.size = size
        self.comm_device = comm_device or torch.device("cpu")
        self.owns_group = owns_group

    @classmethod
    def from_environment(cls, device: torch.device) -> World:
        """Join the process group a launcher prepared (NCCL on CUDA, gloo on CPU), or run alone."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            backend = dist.get_backend()
            comm = device if backend == "nccl" else torch.device("cpu")
            return cls(dist.get_rank(), dist.get_world_size(), comm)
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return cls()
        if not dist.is_available():
            raise ValueError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend, device_id=device if device.type == "cuda" else None)
        return cls(dist.get_rank(), dist.get_world_size(), device if backend == "nccl" else torch.device("cpu"), owns_group=True)

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
            import torch.distributed as dist

            dist.destroy_process_group()
            self.owns_group = False

    # ------------------------------------------------------------------ collectives

    def all_reduce_(self, tensor: torch.Tensor) -> None:
        """Sum ``tensor`` over all ranks, in place."""
        if self.size == 1:
            return
        import torch.distributed as dist

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
        import torch.distributed as dist

        payload = json.dumps(value).encode() if self.rank == src else b""
        length = torch.tensor([len(payload)], dtype=torch.int64, device=self.comm_device)
        dist.broadcast(length, src)
        data = torch.empty(int(length), dtype=torch.uint8, device=self.comm_device)
        if self.rank == src:
            data.copy_(torch.frombuffer(bytearray(payload), dtype=torch.uint8))
        dist.broadcast(data, src)
        return json.loads(bytes(data.cpu().tolist()).decode())

    def broadcast_tensors(self, tensors: dict[str, torch.Tensor] | None, src: int, device: torch.device) -> dict[str, torch.Tensor]:
        """Named tensors from rank ``src`` on every rank (any dtype; sent as bytes)."""
        if self.size == 1:
            return tensors or {}
        import torch.distributed as dist

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
        message = self.broadcast_json(f"{type(failure).__name__}: {failure}" if self.rank == failed[0] else None, failed[0])
        if failure is not None:
            raise failure
        raise RankFailure(f"rank {failed[0]} failed while {stage}: {message}")
