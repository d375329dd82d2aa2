"""A finished checkpoint folder: weights, evaluation, effective recipe, report and card, in one rename.

``prune`` and ``recover`` both end here, so every checkpoint this tool writes has the same records,
written the same way (see :mod:`.records`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..checkpoints.saving import write_pruned
from ..pruning.precision import DTYPES
from ..storage.outputs import Destination, HeldFolder, atomic_output
from . import cards
from .evaluation import EvalResult, evaluate_checkpoint
from .recipes import Recipe
from .records import CARD_FILE, RECIPE_FILE, REPORT_FILE, RunRecord, write_record


def write_checkpoint(
    out: Path,
    pipeline: Any,
    recipe: Recipe,
    run: RunRecord,
    *,
    base_revision: str | None,
    prompt_folder: Path,
    parent: HeldFolder | Destination | None = None,
    overwrite: bool = False,
    extra: dict[str, bytes] | None = None,
) -> tuple[dict[str, str], EvalResult | None]:
    """Write ``pipeline`` with ``run.provenance`` stamped, evaluate it when ``recipe`` (the effective recipe)
    asks, and write the records, ``extra`` files and the card; everything appears at ``out`` at once.
    Returns the provenance as written and the evaluation."""
    evaluation = None
    with atomic_output(out, overwrite=overwrite, parent=parent) as tmp:
        stamped = write_pruned(
            pipeline,
            tmp,
            record=run.provenance,
            variant=recipe.output.variant,
            torch_dtype=DTYPES[recipe.output.dtype],
        )
        if recipe.evaluation is not None:
            evaluation = evaluate_checkpoint(
                tmp,
                recipe.base_model.repo_id,
                recipe.evaluation,
                tmp,
                base_revision=base_revision,
                prompt_folder=prompt_folder,
            )
        run.provenance = stamped
        card = cards.render_card(
            recipe,
            run.report,
            plan=run.plan,
            evaluation=evaluation,
            base_revision=base_revision,
            recovery=run.recovery,
        )
        write_record(tmp, RECIPE_FILE, recipe.to_yaml())
        write_record(tmp, REPORT_FILE, run.to_dict())
        for name, content in (extra or {}).items():
            write_record(tmp, name, content)
        write_record(tmp, CARD_FILE, card.content)
    return stamped, evaluation
