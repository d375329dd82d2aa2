"""Speed, memory, parameters and FLOPs of a pruned denoiser next to its dense base, measured the same way.

Each model's denoiser is loaded alone, in the same dtype on the same device, and fed the same
seeded inputs (``batch`` latents at ``resolution``, 77 text tokens). Whole-denoiser latency:
``repeats`` timed forwards after ``warmup`` untimed ones (CUDA events on GPUs, the CPU clock
otherwise), median and quartiles. Per block: each transformer block's inputs are captured
from one forward, then the block alone is timed the same way. FLOPs come from the same
counter as ``plan``, for the forward that was timed; peak memory is the accelerator's allocator peak.
The resolution defaults to the pipeline's own (1024 for SDXL, SD3 and Flux; 32 for the shapes model).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .._version import __version__
from ..architectures import architecture_of
from ..architectures.components import (
    default_resolution,
    denoiser_of,
    pipeline_vae_scale,
    vae_scale_factor,
)
from ..architectures.inputs import example_inputs, run_denoiser
from ..architectures.sparse_kernels import enable_sparse_kernels
from ..checkpoints.inspection import denoiser_folder
from ..errors import InputError
from ..hub import builtin_name, resolve_source
from ..models import pruned_class_for
from ..pruning.plan import costs
from ..storage.files import read_json
from .records import BENCH_FILE, write_record
from .sampling import load_pipeline


@dataclass
class Timing:
    """Milliseconds of ``repeats`` timed runs: median and quartiles."""

    median_ms: float
    p25_ms: float
    p75_ms: float
    repeats: int

    @classmethod
    def of(cls, times: list[float]) -> Timing:
        ordered = sorted(times)
        quartiles = statistics.quantiles(ordered, n=4) if len(ordered) > 1 else [ordered[0]] * 3
        return cls(statistics.median(ordered), quartiles[0], quartiles[2], len(ordered))


@dataclass
class BlockTiming:
    block: str
    dense_ms: float
    pruned_ms: float
    speedup: float


@dataclass
class Measured:
    """One model measured: the whole denoiser, each block, parameters, FLOPs and peak memory (CUDA)."""

    denoiser: Timing
    blocks: dict[str, Timing]
    params: int
    flops: float
    peak_memory_bytes: int | None


@dataclass
class BenchResult:
    """Dense and pruned side by side; ``to_dict`` is the ``bench.json`` record."""

    model: str
    base: str
    device: str
    dtype: str
    resolution: int
    latent_size: int
    batch: int
    warmup: int
    sparse_kernels: bool
    dense: Measured
    pruned: Measured

    @property
    def speedup(self) -> float:
        return self.dense.denoiser.median_ms / self.pruned.denoiser.median_ms

    @property
    def blocks(self) -> list[BlockTiming]:
        return [
            BlockTiming(
                path,
                timing.median_ms,
                self.pruned.blocks[path].median_ms,
                timing.median_ms / self.pruned.blocks[path].median_ms,
            )
            for path, timing in self.dense.blocks.items()
            if path in self.pruned.blocks
        ]

    @property
    def median_block_speedup(self) -> float | None:
        speedups = sorted(b.speedup for b in self.blocks)
        return speedups[len(speedups) // 2] if speedups else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "obsdiff_hub_version": __version__,
            "model": self.model,
            "base": self.base,
            "device": self.device,
            "dtype": self.dtype,
            "resolution": self.resolution,
            "latent_size": self.latent_size,
            "batch": self.batch,
            "warmup": self.warmup,
            "sparse_kernels": self.sparse_kernels,
            "denoiser": {
                "dense": asdict(self.dense.denoiser),
                "pruned": asdict(self.pruned.denoiser),
                "speedup": self.speedup,
            },
            "blocks": [asdict(b) for b in self.blocks],
            "params": {"dense": self.dense.params, "pruned": self.pruned.params},
            "flops": {
                "dense": self.dense.flops,
                "pruned": self.pruned.flops,
                "convention": "the timed forward (latent_size², batch, 77 text tokens), multiply-add = 2 (as plan)",
            },
            "peak_memory_bytes": {"dense": self.dense.peak_memory_bytes, "pruned": self.pruned.peak_memory_bytes},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BenchResult:
        """A ``bench.json`` record read back (per-block timings keep only their medians)."""

        def side(which: str) -> Measured:
            blocks = {
                b["block"]: Timing(
                    b[f"{which}_ms"], b[f"{which}_ms"], b[f"{which}_ms"], data["denoiser"][which]["repeats"]
                )
                for b in data["blocks"]
            }
            return Measured(
                Timing(**data["denoiser"][which]),
                blocks,
                data["params"][which],
                data["flops"][which],
                data["peak_memory_bytes"][which],
            )

        fields = {
            k: data[k]
            for k in (
                "model",
                "base",
                "device",
                "dtype",
                "resolution",
                "latent_size",
                "batch",
                "warmup",
                "sparse_kernels",
            )
        }
        return cls(**fields, dense=side("dense"), pruned=side("pruned"))


@dataclass
class LoadedDenoiser:
    model: nn.Module
    config: dict[str, Any]
    vae_scale: int  # the pipeline's pixels per latent


def load_denoiser(
    source: str, device: torch.device, dtype: torch.dtype, sparse_kernels: bool = False
) -> LoadedDenoiser:
    """The denoiser of a checkpoint folder, a Hub repo (pipeline or component layout) or a
    ``builtin:`` model, its config, and the pipeline's pixels per latent."""
    if builtin_name(source) is not None:
        pipeline = load_pipeline(source)
        model = denoiser_of(pipeline).to(device=device, dtype=dtype).eval()
        config = {**model.config, "_class_name": type(model).__name__}
        scale = pipeline_vae_scale(pipeline)
    else:
        root = resolve_source(source)
        folder = denoiser_folder(root)
        config = read_json(folder / "config.json")
        cls = pruned_class_for(str(config.get("_class_name", "")))  # loads dense checkpoints too
        model = cls.from_pretrained(folder, dtype=dtype).to(device).eval()
        vae = Path(root) / "vae" / "config.json"
        scale = vae_scale_factor(read_json(vae) if vae.is_file() else None)
    if sparse_kernels:
        enable_sparse_kernels(model)
    return LoadedDenoiser(model, config, scale)


def _timer(device: torch.device) -> Callable[[Callable[[], Any], int, int], list[float]]:
    def cpu(fn: Callable[[], Any], warmup: int, repeats: int) -> list[float]:
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
        return times

    def cuda(fn: Callable[[], Any], warmup: int, repeats: int) -> list[float]:
        for _ in range(warmup):
            fn()
        torch.cuda.synchronize(device)
        times = []
        for _ in range(repeats):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            times.append(start.elapsed_time(end))
        return times

    return cuda if device.type == "cuda" else cpu


def _block_inputs(model: nn.Module, inputs: dict, paths: list[str]) -> dict[str, tuple[tuple, dict]]:
    """Every block's positional and keyword inputs from one forward."""
    captured: dict[str, tuple[tuple, dict]] = {}
    handles = [
        model.get_submodule(p).register_forward_pre_hook(
            lambda m, a, kw, p=p: captured.setdefault(p, (a, kw)), with_kwargs=True
        )
        for p in paths
    ]
    try:
        with torch.inference_mode():
            run_denoiser(model, inputs, 500.0)
    finally:
        for handle in handles:
            handle.remove()
    return captured


def measure(
    model: nn.Module,
    config: dict[str, Any],
    device: torch.device,
    *,
    latent_size: int,
    batch: int,
    warmup: int,
    repeats: int,
) -> Measured:
    timer = _timer(device)
    dtype = next(model.parameters()).dtype
    inputs = example_inputs(model, batch=batch, latent_size=latent_size, tokens=77)
    inputs = {
        k: v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype)
        if isinstance(v, torch.Tensor)
        else {kk: vv.to(device=device, dtype=dtype) for kk, vv in v.items()}
        for k, v in inputs.items()
    }
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with torch.inference_mode():
        whole = timer(lambda: run_denoiser(model, inputs, 500.0), warmup, repeats)
    peak = int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None
    blocks = {}
    for path, (args, kwargs) in _block_inputs(model, inputs, architecture_of(model).blocks(model)).items():
        block = model.get_submodule(path)
        with torch.inference_mode():
            blocks[path] = Timing.of(timer(lambda b=block, a=args, k=kwargs: b(*a, **k), warmup, repeats))
    params, flops = costs(config, latent_size, batch)  # the forward that was timed, counted as plan counts
    return Measured(Timing.of(whole), blocks, params, flops, peak)


def bench(
    model: str,
    base: str,
    *,
    resolution: int | None = None,
    batch: int = 1,
    device: torch.device | None = None,
    dtype: torch.dtype | None = None,
    warmup: int = 2,
    repeats: int = 10,
    sparse_kernels: bool = False,
) -> BenchResult:
    """Measure the dense ``base`` and the pruned ``model`` the same way. ``resolution``: the image
    side the latents stand for (default: the pipeline's own)."""
    if repeats < 1:
        raise InputError(f"`repeats` must be at least 1, got {repeats}")
    if batch < 1:
        raise InputError(f"`batch_size` must be at least 1, got {batch}")
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = dtype or (torch.float16 if device.type == "cuda" else torch.float32)
    results: dict[str, Measured] = {}
    scales: dict[str, int] = {}
    for which, source in (("dense", base), ("pruned", model)):
        loaded = load_denoiser(source, device, dtype, sparse_kernels=sparse_kernels and which == "pruned")
        scales[which] = loaded.vae_scale
        resolution = resolution or default_resolution(loaded.model.config, loaded.vae_scale)
        if resolution % loaded.vae_scale:
            raise InputError(
                f"`resolution` must be a multiple of {loaded.vae_scale} (the VAE's pixels per latent), got "
                f"{resolution}"
            )
        results[which] = measure(
            loaded.model,
            loaded.config,
            device,
            latent_size=resolution // loaded.vae_scale,
            batch=batch,
            warmup=warmup,
            repeats=repeats,
        )
        del loaded
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if scales["dense"] != scales["pruned"]:
        raise InputError(
            f"{model} and {base} have different VAEs ({scales['pruned']} vs {scales['dense']} pixels per latent): "
            "not one base and its pruned model"
        )
    threads = torch.get_num_threads()
    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU ({threads} thread{'s' if threads != 1 else ''})"
    )
    return BenchResult(
        model,
        base,
        name,
        str(dtype).removeprefix("torch."),
        resolution,
        resolution // scales["pruned"],
        batch,
        warmup,  # type: ignore[operator]
        sparse_kernels,
        results["dense"],
        results["pruned"],
    )


def write_bench(result: BenchResult, folder: Path) -> Path:
    """``bench.json`` into ``folder`` (atomically; recorded as this tool's file); returns its path."""
    return write_record(folder, BENCH_FILE, result.to_dict())
