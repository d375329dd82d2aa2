"""``obsdiff-hub inspect``: what a checkpoint holds and which class loads it."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from ..checkpoints.inspection import inspect_checkpoint
from .display import console, print_json, print_table
from .options import JsonOpt, RevisionOpt


def inspect(
    source: Annotated[str, typer.Argument(help="Checkpoint directory or Hub repo id.")],
    revision: RevisionOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Class (and how to load it), shapes per block, sparsity and provenance of a checkpoint."""
    info = inspect_checkpoint(source, revision=revision)
    if as_json:
        print_json(info.to_dict())
        return
    console.print(f"[bold]{info.path}[/bold]  {info.class_name}  (load with {info.load_with})")
    table = Table(title="provenance")
    table.add_column("field")
    table.add_column("value")
    for key, value in sorted(info.provenance.items()):
        table.add_row(key, value)
    print_table(table)
    if info.structure:
        table = Table(title="pruned shapes")
        for column in ("module", "dense", "now"):
            table.add_column(column)
        for module, (dense, now) in info.structure.items():
            table.add_row(module, str(dense), str(now))
        print_table(table)
    console.print(f"zero fraction of attention/FFN weights: {info.sparsity:.4f} over {info.targeted_weights} tensors")
