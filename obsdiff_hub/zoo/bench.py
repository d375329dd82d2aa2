"""Speed, memory, parameters and FLOPs of a pruned denoiser next to its dense base, measured the same way.

Each model's denoiser is loaded alone, in the same dtype on the same device, and fed the same
seeded inputs (``batch`` latents at ``resolution``, 77 text tokens). Whole-denoiser latency:
``repeats`` timed forwards after ``warmup`` untimed ones (CUDA events on GPUs, the CPU clock
otherwise), median and quartiles. Per block: each transformer block's inputs are captured
from one forward, then the block alone is timed the same way. FLOPs come from the same
counter as ``plan``, for the forward that was timed; peak memory is the accelerator's allocator peak.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from .._version import __version__
from ..checkpoints.inspection import denoiser_folder
from ..checkpoints.loading import read_json, resolve_source
from ..checkpoints.plan import costs
from ..models import pruned_class_for
from ..pruning.adapters import adapter_for
from ..pruning.adapters.inputs import example_inputs, run_denoiser

BENCH_FILE = "bench.json"


def vae_scale_factor(vae_config: dict[str, Any] | None) -> int:
    """Pixels per latent, as diffusers' pipelines compute it (``2 ** (len(block_out_channels) - 1)``);
    8, the factor of every supported family, when there is no VAE config to read."""
    channels = (vae_config or {}).get("block_out_channels")
    if not isinstance(channels, (list, tuple)) or not 1 <= len(channels) <= 8:
        return 8
    return 2 ** (len(channels) - 1)


def load_denoiser(source: str, device: torch.device, dtype: torch.dtype, sparse_kernels: bool = False) -> tuple[nn.Module, dict[str, Any], int]:
    """The denoiser of a checkpoint folder, a Hub repo (pipeline or component layout) or a
    ``builtin:`` model, its config, and the pipeline's pixels per latent."""
    if source.startswith("builtin:"):
        from ..pruning.calibration import denoiser_of
        from .sampling import load_pipeline

        pipeline = load_pipeline(source)
        model = denoiser_of(pipeline).to(device=device, dtype=dtype).eval()
        config = {**model.config, "_class_name": type(model).__name__}
        scale = vae_scale_factor(dict(pipeline.vae.config) if getattr(pipeline, "vae", None) is not None else None)
    else:
        root = resolve_source(source)
        folder = denoiser_folder(root)
        config = read_json(folder / "config.json")
        cls = pruned_class_for(str(config.get("_class_name", "")))  # loads dense checkpoints too
        model = cls.from_pretrained(folder, dtype=dtype).to(device).eval()
        vae = Path(root) / "vae" / "config.json"
        scale = vae_scale_factor(read_json(vae) if vae.is_file() else None)
    if sparse_kernels:
        from ..checkpoints.sparse import enable_sparse_kernels

        enable_sparse_kernels(model)
    return model, config, scale


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


def summary(times: list[float]) -> dict[str, float]:
    ordered = sorted(times)
    quartiles = statistics.quantiles(ordered, n=4) if len(ordered) > 1 else [ordered[0]] * 3
    return {"median_ms": statistics.median(ordered), "p25_ms": quartiles[0], "p75_ms": quartiles[2], "repeats": len(ordered)}


def _block_inputs(model: nn.Module, inputs: dict, paths: list[str]) -> dict[str, tuple[tuple, dict]]:
    """Every block's positional and keyword inputs from one forward."""
    captured: dict[str, tuple[tuple, dict]] = {}
    handles = [
        model.get_submodule(p).register_forward_pre_hook(lambda m, a, kw, p=p: captured.setdefault(p, (a, kw)), with_kwargs=True)
        for p in paths
    ]
    try:
        with torch.inference_mode():
            run_denoiser(model, inputs, 500.0)
    finally:
        for handle in handles:
            handle.remove()
    return captured


def measure(model: nn.Module, config: dict[str, Any], device: torch.device, *, latent_size: int, batch: int, warmup: int, repeats: int) -> dict[str, Any]:
    timer = _timer(device)
    dtype = next(model.parameters()).dtype
    inputs = example_inputs(model, batch=batch, latent_size=latent_size, tokens=77)
    inputs = {k: v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype) if isinstance(v, torch.Tensor)
              else {kk: vv.to(device=device, dtype=dtype) for kk, vv in v.items()} for k, v in inputs.items()}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with torch.inference_mode():
        whole = timer(lambda: run_denoiser(model, inputs, 500.0), warmup, repeats)
    peak = int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None
    paths = adapter_for(model).blocks(model)
    blocks = {}
    for path, (args, kwargs) in _block_inputs(model, inputs, paths).items():
        block = model.get_submodule(path)
        with torch.inference_mode():
            blocks[path] = summary(timer(lambda b=block, a=args, k=kwargs: b(*a, **k), warmup, repeats))
    params, flops = costs(config, latent_size, batch)  # the forward that was timed, counted as plan counts
    return {"denoiser": summary(whole), "blocks": blocks, "params": params, "flops": flops, "peak_memory_bytes": peak}


def bench(
    model: str,
    base: str,
    *,
    resolution: int = 1024,
    batch: int = 1,
    device: torch.device | None = None,
    dtype: torch.dtype | None = None,
    warmup: int = 2,
    repeats: int = 10,
    sparse_kernels: bool = False,
) -> dict[str, Any]:
    """Measure the dense ``base`` and the pruned ``model`` the same way; the ``bench.json`` record."""
    if repeats < 10:
        raise ValueError(f"repeats must be at least 10 for a median and quartiles, got {repeats}")
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = dtype or (torch.float16 if device.type == "cuda" else torch.float32)
    results, scales = {}, {}
    for which, source in (("dense", base), ("pruned", model)):
        denoiser, config, scales[which] = load_denoiser(source, device, dtype, sparse_kernels=sparse_kernels and which == "pruned")
        if resolution % scales[which]:
            raise ValueError(f"--resolution must be a multiple of {scales[which]} (the VAE's pixels per latent), got {resolution}")
        results[which] = measure(denoiser, config, device, latent_size=resolution // scales[which], batch=batch, warmup=warmup, repeats=repeats)
        del denoiser
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if scales["dense"] != scales["pruned"]:
        raise ValueError(f"{model} and {base} have different VAEs ({scales['pruned']} vs {scales['dense']} pixels per latent): not one base and its pruned model")
    dense, pruned = results["dense"], results["pruned"]
    blocks = [
        {"block": path, "dense_ms": dense["blocks"][path]["median_ms"], "pruned_ms": pruned["blocks"][path]["median_ms"],
         "speedup": dense["blocks"][path]["median_ms"] / pruned["blocks"][path]["median_ms"]}
        for path in dense["blocks"] if path in pruned["blocks"]
    ]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} thread{'s' if torch.get_num_threads() != 1 else ''})"
    return {
        "obsdiff_hub_version": __version__,
        "model": model,
        "base": base,
        "device": name,
        "dtype": str(dtype).removeprefix("torch."),
        "resolution": resolution,
        "latent_size": resolution // scales["pruned"],
        "batch": batch,
        "warmup": warmup,
        "sparse_kernels": sparse_kernels,
        "denoiser": {"dense": dense["denoiser"], "pruned": pruned["denoiser"], "speedup": dense["denoiser"]["median_ms"] / pruned["denoiser"]["median_ms"]},
        "blocks": blocks,
        "params": {"dense": dense["params"], "pruned": pruned["params"]},
        "flops": {"dense": dense["flops"], "pruned": pruned["flops"], "convention": "the timed forward (latent_size², batch, 77 text tokens), multiply-add = 2 (as plan)"},
        "peak_memory_bytes": {"dense": dense["peak_memory_bytes"], "pruned": pruned["peak_memory_bytes"]},
    }


def results_folder(model: str, out: Path | None) -> Path:
    """Where bench.json / eval.json go: ``out`` (created only when the results are written, so a
    failed run leaves nothing), or the model's own folder when it is an output of this tool;
    anything else needs ``--out`` (no writes into a stranger's folder)."""
    from ..checkpoints.outputs import read_marker

    if out is not None:
        if out.exists() and not out.is_dir():
            raise ValueError(f"--out {out} is a file; give a folder for the results")
        return out
    if Path(model).is_dir() and read_marker(Path(model)) is not None:
        return Path(model)
    raise ValueError(f"{model} is not a checkpoint folder written by obsdiff-hub: pass --out FOLDER for the results")
