"""``obsdiff-hub bench``: latency, memory, parameters and FLOPs of the pruned model next to its base."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from ..checkpoints.inspection import base_model_of
from ..pruning.distributed import resolve_device
from ..pruning.precision import DTYPES
from ..zoo.bench import MIN_REPEATS, results_folder, write_bench
from ..zoo.bench import bench as measure
from .display import change, console, human, print_table
from .options import DeviceOpt, dtype_option, positive


def bench(
    model: Annotated[str, typer.Option(help="Pruned checkpoint: folder or Hub repo id.")],
    base: Annotated[Optional[str], typer.Option(help="Dense base (folder or Hub id; default: the checkpoint's provenance).")] = None,
    resolution: Annotated[Optional[int], typer.Option(help="Image side the latents correspond to (default: the pipeline's own).")] = None,
    batch_size: Annotated[int, typer.Option(help="Latents per forward.")] = 1,
    repeats: Annotated[int, typer.Option(help=f"Timed repetitions (after 2 warm-up runs); at least {MIN_REPEATS}.")] = MIN_REPEATS,
    device: DeviceOpt = None,
    dtype: Annotated[Optional[str], typer.Option(help="float16, bfloat16 or float32 (default: float16 on CUDA, float32 on CPU).")] = None,
    sparse_kernels: Annotated[bool, typer.Option(help="2:4 checkpoints: time with semi-structured sparse kernels (CUDA).")] = False,
    out: Annotated[Optional[Path], typer.Option(help="Where bench.json goes (default: the checkpoint's folder).")] = None,
) -> None:
    """Latency (whole denoiser and per block), peak memory, parameters and FLOPs, dense vs pruned."""
    dtype = dtype_option(dtype)
    positive(resolution, "--resolution")
    folder = results_folder(model, out)
    result = measure(model, base or base_model_of(model), resolution=resolution, batch=batch_size, device=resolve_device(device),
                     dtype=DTYPES[dtype] if dtype else None, repeats=repeats, sparse_kernels=sparse_kernels)
    path = write_bench(result, folder)
    dense, pruned = result.dense, result.pruned
    table = Table(title=f"{result.device}, {result.dtype}, {result.resolution}², batch {batch_size} (median of {repeats}, ms)")
    for column in ("", "dense", "pruned", "change"):
        table.add_column(column, justify="right")
    table.add_row("denoiser forward", f"{dense.denoiser.median_ms:.2f}", f"{pruned.denoiser.median_ms:.2f}", f"{result.speedup:.2f}×")
    table.add_row("parameters", human(dense.params), human(pruned.params), change(dense.params, pruned.params))
    table.add_row("FLOPs per forward", human(dense.flops), human(pruned.flops), change(dense.flops, pruned.flops))
    if dense.peak_memory_bytes is not None and pruned.peak_memory_bytes is not None:
        table.add_row("peak memory", human(dense.peak_memory_bytes, "B"), human(pruned.peak_memory_bytes, "B"), change(dense.peak_memory_bytes, pruned.peak_memory_bytes))
    if result.median_block_speedup is not None:
        table.add_row("blocks (median speed-up)", "", "", f"{result.median_block_speedup:.2f}×")
    print_table(table)
    console.print(f"wrote {path}")
