"""``obsdiff-hub recover`` and a recipe's ``recover`` stage: a pruned checkpoint healed into a new folder.

The source is a folder ``prune`` wrote (its effective recipe names the base, the teacher); the output is
a checkpoint like any other, whose effective recipe carries the ``recover`` section that made it (``prune``
of that recipe rebuilds it), whose report holds the recovery next to the pruning, and whose card shows the
one-shot and the recovered quality side by side, measured with the same settings. The teacher data and the
training progress live in ``<out>.partial/recover`` until the output is written. The recovery never trains
on the evaluation's prompts or seeds (the recipe's evaluation, or ``obsdiff-hub eval``'s defaults).
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw

from ..architectures.components import denoiser_of
from ..errors import InputError, UnsupportedEnvironmentError
from ..models import provenance
from ..pruning.distributed import launched_processes, resolve_device
from ..pruning.prompts import contained_path, read_prompt_file
from ..recovery.heal import recover, recovery_prompts
from ..recovery.training import Progress, RecoveryReport
from ..resources import data_dir
from ..storage.outputs import Destination, check_writable_target
from .bases import load_base_pipeline
from .evaluation import EVAL_FILE, EvalResult, eval_prompts, evaluate
from .recipes import EvaluationSpec, Recipe, RecipeError, load_recipe
from .records import (
    RECIPE_FILE,
    RecordError,
    RunRecord,
    check_checkpoint_folder,
    read_record,
    read_run_record,
)
from .resume import DiskState, partial_folder
from .sampling import load_pipeline
from .writing import write_checkpoint

PLOT_FILE = "recovery.png"
WORKSPACE = "recover"


@dataclass
class RecoveredOutput:
    directory: Path
    recipe: Recipe  # the effective recipe, with its recover section
    report: RecoveryReport
    evaluation: EvalResult | None  # the recovered checkpoint's
    one_shot: EvalResult | None  # the checkpoint it was healed from, same settings


def recovery_recipe(
    recipe: Recipe, steps: int | None = None, changes: dict[str, Any] | None = None, folder: Path | None = None
) -> Recipe:
    """``recipe`` with a ``recover`` section (its own, or the defaults) and the run's changes applied; a prompt
    file (relative to ``folder``, the recipe's, or as given) inlined, so the effective recipe reproduces the run."""
    updates = {} if recipe.recover is not None else {"recover": {}}
    updates.update(changes or {})
    if steps is not None:
        updates["recover.steps"] = steps
    requested = recipe.with_changes(updates) if updates else recipe
    source = requested.recover.prompts if requested.recover is not None else None
    if source is not None and source.source == "file":
        texts = list(dict.fromkeys(read_prompt_file(contained_path(source.path, folder) if folder else source.path)))
        inline = {"source": "inline", "texts": texts, "count": source.count}
        requested = requested.with_changes({"recover.prompts": inline})
    check_disjoint(requested)
    return requested


def check_disjoint(recipe: Recipe) -> None:
    """The recovery's seeds must not be the evaluation's: the recipe's, or by default what ``obsdiff-hub eval``
    measures (its prompts are kept out of the recovery by construction)."""
    config, evaluation = recipe.recover, recipe.evaluation or EvaluationSpec()
    if config is None:
        return
    ours = range(config.seed, config.seed + config.prompts.count * config.samples_per_prompt)
    theirs = range(evaluation.seed, evaluation.seed + evaluation.num)
    if ours.start < theirs.stop and theirs.start < ours.stop:
        raise RecipeError(
            f"recover.seed {config.seed} (+ {len(ours)} trajectories) overlaps the evaluation's seeds "
            f"{evaluation.seed}..{theirs.stop - 1}; move recover.seed clear of them"
        )


def excluded_prompts(recipe: Recipe) -> list[str]:
    """The prompts a recovery never trains on: the recipe's evaluation's, or ``obsdiff-hub eval``'s defaults."""
    return eval_prompts(recipe.evaluation or EvaluationSpec(), recipe.folder or data_dir("recipes"))


def check_recovery(recipe: Recipe) -> None:
    """Enough distinct recovery prompts outside the evaluation's (the seeds are checked with the recipe)."""
    assert recipe.recover is not None
    recovery_prompts(recipe.recover, excluded_prompts(recipe))


def check_single_process() -> None:
    """Recovery trains in one process (several would each record the teacher's data into one folder)."""
    if launched_processes() > 1:
        raise UnsupportedEnvironmentError(
            "recovery runs in one process; run it without torchrun / accelerate launch (prune under the launcher, "
            "then `obsdiff-hub recover` the checkpoint)"
        )


def loss_plot(report: RecoveryReport, width: int = 480, height: int = 240) -> bytes:
    """The training and validation loss over the steps, log scale, as a PNG (for the card)."""
    image = Image.new("RGB", (width, height), "white")
    pen = ImageDraw.Draw(image)
    series = [(report.training_loss, (70, 110, 200)), (report.validation, (220, 90, 40))]
    points = [v for values, _ in series for _, v in values if v > 0]
    steps = max([s for values, _ in series for s, _ in values] + [1])
    if points:
        low, high = min(points), max(points)
        span = max(torch.log10(torch.tensor(high / low)).item(), 1e-6)
        margin = 30

        def place(step: int, value: float) -> tuple[float, float]:
            x = margin + (width - 2 * margin) * step / steps
            y = height - margin - (height - 2 * margin) * torch.log10(torch.tensor(value / low)).item() / span
            return x, y

        for values, color in series:
            xy = [place(s, v) for s, v in values if v > 0]
            if len(xy) > 1:
                pen.line(xy, fill=color, width=2)
            for x, y in xy:
                pen.ellipse([x - 2, y - 2, x + 2, y + 2], fill=color)
        pen.text((margin, 5), f"loss (log): training blue, validation orange; {high:.3g} .. {low:.3g}", fill="black")
        pen.text((margin, height - 20), f"step 0 .. {steps}", fill="black")
        if report.kept_step:
            x, _ = place(report.kept_step, low)
            pen.line([(x, margin), (x, height - margin)], fill=(40, 160, 60), width=1)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def recover_checkpoint(
    source: str | Path,
    out: str | Path,
    *,
    base: str | None = None,
    steps: int | None = None,
    changes: dict[str, Any] | None = None,
    device: str | None = None,
    resume: bool = False,
    restart: bool = False,
    overwrite: bool = False,
    progress: Progress | None = None,
    state: DiskState | None = None,
) -> RecoveredOutput:
    """Heal the pruned checkpoint folder ``source`` into ``out`` (see the module docstring). ``base``: the
    teacher instead of the one the checkpoint's recipe names; ``steps`` and ``changes``
    (``{"recover.learning_rate": 3e-5}``) change the recovery's settings. ``state``: the progress folder of
    a ``prune`` run whose recipe has a ``recover`` stage (this call then neither checks nor removes it)."""
    source, out = Path(source), Path(out)
    check_single_process()
    check_checkpoint_folder(source)
    record = read_run_record(source)
    if record.recovery is not None:
        raise InputError(f"{source} is already recovered; recover the one-shot checkpoint it came from")
    recipe = load_recipe(source / RECIPE_FILE)
    if base is not None:
        recipe = recipe.with_changes({"base_model.repo_id": base})
    requested = recovery_recipe(recipe, steps, changes)
    config = requested.recover
    assert config is not None
    run_device = resolve_device(device)
    excluded = excluded_prompts(requested)
    check_recovery(requested)
    owned = state is None
    if owned:
        check_writable_target(out, overwrite)
        run_id = hashlib.sha256(f"recover:{requested.sha256}".encode()).hexdigest()
        state = DiskState(partial_folder(out), run_id)
        state.prepare(resume=resume, restart=restart)
    destination = Destination(out)
    folder = requested.folder or data_dir("recipes")
    one_shot = _one_shot_evaluation(source, requested, folder)
    pipeline = load_pipeline(str(source))
    teacher = denoiser_of(load_base_pipeline(requested))
    workspace = state.workspace(WORKSPACE)
    report = recover(
        pipeline,
        teacher,
        config,
        calibration=requested.calibration,
        work=workspace.pinned,
        device=run_device,
        exclude_prompts=excluded,
        identity=state.run_id,
        resume=resume,
        progress=progress,
    )
    del teacher
    workspace.close()
    effective = requested.model_copy(update={"derived_from": recipe.derived_from or recipe.identity()})
    effective = type(effective).model_validate(effective.model_dump())
    evaluation = _write_recovered(out, pipeline, effective, record, report, one_shot, destination, folder, overwrite)
    destination.close()
    if owned:
        state.clear()
    return RecoveredOutput(out, effective, report, evaluation, one_shot)


def _write_recovered(
    out: Path,
    pipeline: Any,
    effective: Recipe,
    record: RunRecord,
    report: RecoveryReport,
    one_shot: EvalResult | None,
    destination: Destination,
    folder: Path,
    overwrite: bool,
) -> EvalResult | None:
    """The healed checkpoint: the one-shot run's report and plan, the recovery beside them, both stages in
    the provenance, the loss plot; returns its evaluation."""
    stamped = provenance(
        **{
            **record.provenance,
            "recipe": effective.name,
            "recipe_sha256": effective.sha256,
            "recovery": f"{report.kept_step} of {report.steps_run} steps kept" if not report.rejected else "rejected",
        }
    )
    recovery = {**report.to_dict(), "one_shot_evaluation": one_shot.to_dict() if one_shot else None}
    _, evaluation = write_checkpoint(
        out,
        pipeline,
        effective,
        RunRecord(record.report, stamped, record.plan, recovery),
        base_revision=record.provenance.get("base_revision"),
        prompt_folder=folder,
        parent=destination,
        overwrite=overwrite,
        extra={PLOT_FILE: loss_plot(report)},
    )
    return evaluation


def _one_shot_evaluation(source: Path, recipe: Recipe, folder: Path) -> EvalResult | None:
    """The source checkpoint measured with the recipe's evaluation settings: its ``eval.json`` when that is what
    it holds, else measured now (the dense images come from the evaluation cache)."""
    if recipe.evaluation is None:
        return None
    if (source / EVAL_FILE).is_file():
        try:
            result = read_record(source / EVAL_FILE, EvalResult.from_dict)
        except RecordError:
            result = None
        wanted = {k: v for k, v in recipe.evaluation.model_dump().items() if v is not None}
        if result is not None and all(result.settings.get(k) == v for k, v in wanted.items()):
            return result
    measured, _ = evaluate(str(source), recipe.base_model.repo_id, recipe.evaluation, folder=folder)
    return measured
