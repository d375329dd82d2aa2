"""``obsdiff-hub bench``: latency, memory, parameters and FLOPs of the pruned model next to its base."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from .display import change, console, human, print_json, print_table
from .lazy import library
from .options import (
    BaseOpt,
    DeviceOpt,
    ModelAlias,
    ModelArg,
    QuietOpt,
    ResolutionOpt,
    checkpoint,
    dtype_option,
    positive,
)

distributed = library("pruning.distributed")
inspection = library("checkpoints.inspection")
measurement = library("zoo.bench")
precision = library("pruning.precision")
records = library("zoo.records")


RepeatsOpt = Annotated[
    int,
    typer.Option(
        "--repeats",
        metavar="INT",
        help="Timed repetitions after 2 warm-up runs (10 or more for steady quartiles).",
    ),
]
DtypeOpt = Annotated[
    Optional[str],
    typer.Option(
        "--dtype", metavar="DTYPE", help="float16, bfloat16 or float32 (default: float16 on CUDA, float32 on CPU)."
    ),
]
SparseKernelsOpt = Annotated[
    bool,
    typer.Option("--sparse-kernels", help="2:4 checkpoints: time with semi-structured sparse kernels (CUDA)."),
]
OutOpt = Annotated[
    Optional[Path],
    typer.Option("--out", metavar="DIR", help="Where bench.json goes (default: the checkpoint's folder)."),
]


def bench(
    model_argument: ModelArg = None,
    model: ModelAlias = None,
    base: BaseOpt = None,
    resolution: ResolutionOpt = None,
    batch_size: Annotated[int, typer.Option("--batch-size", metavar="INT", help="Latents per forward.")] = 1,
    repeats: RepeatsOpt = 10,
    device: DeviceOpt = None,
    dtype: DtypeOpt = None,
    sparse_kernels: SparseKernelsOpt = False,
    out: OutOpt = None,
    quiet: QuietOpt = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the bench.json record.")] = False,
) -> None:
    """Latency (whole denoiser and per block), peak memory, parameters and FLOPs, dense vs pruned.

    \b
    Example: obsdiff-hub bench tiny-out
    """
    source = checkpoint(model_argument, model, "bench")
    dtype = dtype_option(dtype)
    positive(resolution, "--resolution")
    folder = records.results_folder(source, out)
    result = measurement.bench(
        source,
        base or inspection.base_model_of(source),
        resolution=resolution,
        batch=batch_size,
        device=distributed.resolve_device(device),
        dtype=precision.DTYPES[dtype] if dtype else None,
        repeats=repeats,
        sparse_kernels=sparse_kernels,
    )
    path = measurement.write_bench(result, folder)
    if as_json:
        print_json(result.to_dict())
        return
    if quiet:
        typer.echo(str(path))
        return
    dense, pruned = result.dense, result.pruned
    table = Table(
        title=f"{result.device}, {result.dtype}, {result.resolution}², batch {batch_size} (median of {repeats}, ms)"
    )
    for column in ("", "dense", "pruned", "change"):
        table.add_column(column, justify="right")
    table.add_row(
        "denoiser forward",
        f"{dense.denoiser.median_ms:.2f}",
        f"{pruned.denoiser.median_ms:.2f}",
        f"{result.speedup:.2f}×",
    )
    table.add_row("parameters", human(dense.params), human(pruned.params), change(dense.params, pruned.params))
    table.add_row("FLOPs per forward", human(dense.flops), human(pruned.flops), change(dense.flops, pruned.flops))
    if dense.peak_memory_bytes is not None and pruned.peak_memory_bytes is not None:
        table.add_row(
            "peak memory",
            human(dense.peak_memory_bytes, "B"),
            human(pruned.peak_memory_bytes, "B"),
            change(dense.peak_memory_bytes, pruned.peak_memory_bytes),
        )
    else:
        table.add_row("peak memory", "not measured on CPU", "", "")
    if result.median_block_speedup is not None:
        table.add_row("blocks (median speed-up)", "", "", f"{result.median_block_speedup:.2f}×")
    print_table(table)
    console.print(f"wrote {path}")
