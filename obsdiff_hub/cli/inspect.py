"""``obsdiff-hub inspect``: what a checkpoint holds and which class loads it."""

from __future__ import annotations

from rich.table import Table

from .display import console, print_json, print_table
from .lazy import library
from .options import JsonOpt, ModelAlias, ModelArg, RevisionOpt, checkpoint

inspection = library("checkpoints.inspection")


def inspect(
    model_argument: ModelArg = None, model: ModelAlias = None, revision: RevisionOpt = None, as_json: JsonOpt = False
) -> None:
    """Class (and how to load it), shapes per block, sparsity and provenance of a checkpoint.

    \b
    Example: obsdiff-hub inspect tiny-out
    """
    info = inspection.inspect_checkpoint(checkpoint(model_argument, model, "inspect"), revision=revision)
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
        for column in ("module", "what", "dense", "now", "kept"):
            table.add_column(column, justify="right" if column in ("dense", "now") else "left")
        for module, shape in info.structure.items():
            what = "attention heads" if shape["kind"] == "heads" else "FFN neurons"
            table.add_row(module, what, str(shape["dense"]), str(shape["now"]), shape["kept"])
        print_table(table)
    console.print(f"zero fraction of attention/FFN weights: {info.sparsity:.4f} over {info.targeted_weights} tensors")
    console.print(f"adapters: {info.adapters}")
