"""One recipe run end to end: check everything, load the base pipeline, prune, write the outputs.

This is what ``obsdiff-hub prune`` calls; it holds no CLI code, so notebooks can use it too.
Every input is checked before calibration starts (output folder, progress folder, device,
dtype, prompts, model family, resolution). The output folder (pipeline layout,
``recipe.yaml`` as run, ``report.json``, evaluation, ``README.md``) is assembled in a temp
folder and appears in one rename; progress for ``resume`` lives in ``<out>.partial/``.
The saved ``recipe.yaml`` is the *effective* recipe: every override applied, the packages
and dtype actually used, the prompts pinned by count and sha256 (file prompts inline), and
``derived_from`` naming the recipe it came from. Running it again gives the same weights.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Literal

import torch

from ..architectures.components import (
    check_resolution,
    default_resolution,
    denoiser_of,
    pipeline_vae_scale,
    resolution_multiple,
)
from ..errors import InputError
from ..hub import RESERVED_REFS, builtin_name, check_ref_name
from ..models import provenance
from ..pruning.config import PromptSource
from ..pruning.distributed import World, resolve_device
from ..pruning.engine import (
    ProgressCallback,
    PruneResult,
    check_family,
    prune,
    prune_family,
)
from ..pruning.plan import PlanResult, plan
from ..pruning.precision import DTYPES, check_device_dtype
from ..pruning.prompts import PromptSet, resolve_prompts
from ..resources import data_dir
from ..storage.outputs import Destination, HeldFolder, check_writable_target, is_leftover
from . import cards
from .bases import load_base_pipeline
from .evaluation import EvalResult, eval_prompts
from .metrics import check_metrics
from .recipes import Recipe, RecipeError
from .records import RunRecord
from .recovering import check_recovery, check_single_process, recover_checkpoint, recovery_recipe
from .resume import DiskState, partial_folder
from .sampling import load_pipeline
from .writing import write_checkpoint

ONE_SHOT = "one-shot"  # the pruned checkpoint a recipe's recover stage heals, inside the progress folder
OFFLOADED = "offload"  # prune.offload blocks-to-disk: the blocks' files, inside the progress folder


@dataclass
class RunOutput:
    directory: Path
    result: PruneResult
    recipe: Recipe  # the effective recipe, as saved
    plan: PlanResult | None
    evaluation: EvalResult | None = None
    distinct_prompts: int = 0  # a source with fewer prompts than asked for is cycled


def plan_recipe(recipe: Recipe, resolution: int | None = None) -> PlanResult:
    """Offline parameter/FLOP plan of a recipe from its shipped base config, or from the built-in
    model itself. ``resolution``: image side for the FLOP count (default: the model's own, 1024
    for the shipped public configs)."""
    base = recipe.base_model
    if base.config:
        config, scale, multiple, default = base.config, 8, 64, 1024
    elif builtin_name(base.repo_id) is not None:
        pipeline = load_pipeline(base.repo_id)
        denoiser = denoiser_of(pipeline)
        config = {**denoiser.config, "_class_name": type(denoiser).__name__}
        scale = pipeline_vae_scale(pipeline)
        multiple, default = resolution_multiple(denoiser, scale), default_resolution(denoiser.config, scale)
    else:
        raise InputError(f"recipe {recipe.name} names no shipped base config, so it cannot be planned offline")
    resolution = check_resolution(resolution or default, multiple)
    return plan(config, recipe.prune, resolution=resolution, vae_scale_factor=scale)


def _resolved_revision(pipeline: Any) -> str | None:
    """The commit a Hub pipeline was loaded from (its snapshot folder name), if any."""
    parts = Path(str(getattr(pipeline.config, "_name_or_path", "") or "")).parts
    return parts[parts.index("snapshots") + 1] if "snapshots" in parts[:-1] else None


def requested_recipe(
    recipe: Recipe,
    *,
    base: str | None = None,
    revision: str | None = None,
    dtype: str | None = None,
    num_prompts: int | None = None,
    prompt_column: str | None = None,
    packages: int | Literal["auto"] | None = None,
    changes: dict[str, Any] | None = None,
) -> Recipe:
    """``recipe`` with the run's overrides and dotted-path ``changes`` applied (validated as a whole)."""
    updates = dict(changes or {})
    named = {
        "base_model.repo_id": base,
        "base_model.revision": revision,
        "calibration.dtype": dtype,
        "calibration.prompts.count": num_prompts,
        "calibration.prompts.column": prompt_column,
        "prune.packages": packages,
    }
    updates.update({k: v for k, v in named.items() if v is not None})
    if packages is not None:
        updates["prune.memory_budget_gb"] = None
    return recipe.with_changes(updates) if updates else recipe


def prompt_source(prompts: str, column: str | None, count: int) -> PromptSource:
    """A prompt file given directly (any path), or ``builtin:NAME`` for a shipped set."""
    if (name := builtin_name(prompts)) is not None:
        return PromptSource(source="builtin", path=name, count=count)
    return PromptSource(source="file", path=prompts, column=column, count=count)


def pinned_prompts(source: PromptSource, prompts: PromptSet) -> PromptSource:
    """The prompt source as a re-run needs it: count and sha256 pinned; a local file inlined."""
    if source.source == "file":
        return PromptSource(
            source="inline", texts=list(prompts.texts), count=len(prompts.texts), sha256=prompts.sha256
        )
    return source.model_copy(update={"count": len(prompts.texts), "sha256": prompts.sha256})


@dataclass(frozen=True)
class Overrides:
    """What a user changes of a recipe for one run: ``base`` (the dense model instead of the
    recipe's: Hub repo id or folder) and its ``revision``, the calibration ``dtype``, ``prompts`` (a
    file or ``builtin:NAME``) with ``prompt_column`` and ``num_prompts``, ``packages``, and any
    field through ``changes`` (``{"prune.sparsity": 0.4}``)."""

    base: str | None = None
    revision: str | None = None
    dtype: str | None = None
    prompts: str | None = None
    prompt_column: str | None = None
    num_prompts: int | None = None
    packages: int | Literal["auto"] | None = None
    changes: dict[str, Any] | None = None


@dataclass
class Prepared:
    """A recipe checked and resolved before any work: the run as requested, its prompts, its output."""

    recipe: Recipe  # as given
    requested: Recipe  # every override applied
    prompts: PromptSet  # resolved and hashed once, here
    pinned: PromptSource
    out: Path
    destination: Destination | None = None  # the output's place, held from this check to the write

    @property
    def calibration(self) -> Any:
        """The calibration settings with the resolved prompts inline."""
        cal = self.requested.calibration
        texts = list(self.prompts.texts)
        return cal.model_copy(update={"prompts": PromptSource(source="inline", texts=texts, count=len(texts))})


def prepare(
    recipe: Recipe, out: Path, run_device: torch.device, overrides: Overrides, *, overwrite: bool = False
) -> Prepared:
    """Every check that needs no model: overrides, output folder, device and dtype, prompts, card
    metadata and evaluation settings (none of them may fail after the pruning)."""
    o = overrides
    requested = requested_recipe(
        recipe,
        base=o.base,
        revision=o.revision,
        dtype=o.dtype,
        num_prompts=o.num_prompts,
        prompt_column=o.prompt_column,
        packages=o.packages,
        changes=o.changes,
    )
    check_writable_target(out, overwrite)
    cal = requested.calibration
    check_device_dtype(run_device, DTYPES.get(cal.dtype, torch.float32))
    if o.prompts:
        source = prompt_source(o.prompts, o.prompt_column, cal.prompts.count)
        prompts = PromptSet.of(resolve_prompts(source))
    else:
        source = cal.prompts
        if source.source == "file" and requested.folder is None:
            raise RecipeError("a shipped recipe cannot name a prompt file; give the `prompts` file")
        prompts = PromptSet.of(resolve_prompts(source, requested.folder))
    cards.check_card(requested)
    if requested.evaluation is not None:
        check_metrics(
            requested.evaluation, eval_prompts(requested.evaluation, requested.folder or data_dir("recipes"))
        )
    if requested.recover is not None:  # the recover stage's settings and prompts, before the pruning
        check_recovery(recovery_recipe(requested, folder=requested.folder))
    return Prepared(recipe, requested, prompts, pinned_prompts(source, prompts), out, Destination(out))


def write_run(
    prepared: Prepared,
    pipeline: Any,
    result: PruneResult,
    *,
    overwrite: bool = False,
    is_main: bool = True,
    parent: HeldFolder | None = None,
) -> RunOutput:
    """The finished checkpoint (pipeline, effective recipe, report, evaluation, card), assembled in a
    temp folder that appears at ``prepared.out`` in one rename (on the main process only). ``parent``:
    ``prepared.out``'s folder, held open by the caller (a family's root, for all its members)."""
    requested, pinned = prepared.requested, prepared.pinned
    report = result.report
    used = requested.prune.model_copy(update={"packages": report.package_plan["packages"], "memory_budget_gb": None})
    effective = requested.model_copy(
        update={
            "prune": used,
            "calibration": requested.calibration.model_copy(
                update={"prompts": pinned, "dtype": report.precision["compute"]}
            ),
            "derived_from": requested.derived_from or prepared.recipe.identity(),
        }
    )
    effective = type(effective).model_validate(effective.model_dump())  # re-validated as saved
    plan_info = (
        plan_recipe(effective, 1024)
        if requested.prune.granularity == "structured" and requested.base_model.config
        else None
    )
    base_revision = _resolved_revision(pipeline) or requested.base_model.revision
    record = provenance(
        recipe=effective.name,
        recipe_version=effective.version,
        recipe_sha256=effective.sha256,
        derived_from_sha256=effective.derived_from.sha256 if effective.derived_from else None,
        base_model=requested.base_model.repo_id,
        base_revision=base_revision,
        prompts_sha256=pinned.sha256,
    )
    evaluation = None
    if is_main:
        _, evaluation = write_checkpoint(
            prepared.out,
            pipeline,
            effective,
            RunRecord(report, record, plan_info.to_dict() if plan_info else None),
            base_revision=base_revision,
            prompt_folder=requested.folder or data_dir("recipes"),
            parent=parent or prepared.destination,
            overwrite=overwrite,
        )
    return RunOutput(prepared.out, result, effective, plan_info, evaluation, len(set(prepared.prompts.texts)))


def run_recipe(
    recipe: Recipe,
    out: str | Path,
    overrides: Overrides = Overrides(),
    *,
    device: str | None = None,
    resume: bool = False,
    restart: bool = False,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
    save_hessians: str | Path | None = None,
    hessians: str | Path | None = None,
) -> RunOutput:
    """Run ``recipe`` with ``overrides`` and write the finished checkpoint to ``out`` (see module
    docstring). ``save_hessians`` / ``hessians``: save every package's Hessians to a folder, or take
    them from one instead of running trajectories."""
    if resume and restart:
        raise InputError("`resume` and `restart` exclude each other")
    run_device = resolve_device(device)
    prepared = prepare(recipe, Path(out), run_device, overrides, overwrite=overwrite)
    for name, store in (("save_hessians", save_hessians), ("hessians", hessians)):
        if store is not None and overlaps(Path(store), prepared.out):
            raise InputError(
                f"`{name}` ({store}) and `out` ({prepared.out}) overlap; keep the Hessian store in its own folder"
            )
    if prepared.requested.recover is not None:
        check_single_process()
    world = World.from_environment(run_device)
    offload = prepared.requested.prune.offload
    if offload != "none" and world.size > 1:
        raise InputError("prune.offload runs in one process; launch without a launcher, or set prune.offload: none")
    run_id = hashlib.sha256(f"{prepared.requested.sha256}:{prepared.pinned.sha256}".encode()).hexdigest()
    state = DiskState(partial_folder(prepared.out), run_id, writer=world.is_main)
    with world.together("checking the run's inputs"):
        state.prepare(resume=resume, restart=restart)
        scratch = state.scratch(OFFLOADED) if offload == "blocks-to-disk" else None  # held until the run ends
    try:
        result = _load_and_prune(
            prepared, state, world, run_device, resume, progress, save_hessians, hessians, scratch
        )
    except BaseException:
        if scratch is not None and state.completed == 0 and not resume and world.is_main:
            state.clear()  # no package was saved: the blocks' files go, as a resident run leaves nothing
        raise
    if prepared.requested.recover is None:
        output = write_run(prepared, result.pipeline, result, overwrite=overwrite, is_main=world.is_main)
    else:
        output = write_recovered(
            prepared, result.pipeline, result, state, device=device, resume=resume, overwrite=overwrite
        )
    if world.is_main:
        state.clear()
    world.close()
    return output


def _load_and_prune(
    prepared: Prepared,
    state: DiskState,
    world: World,
    run_device: torch.device,
    resume: bool,
    progress: ProgressCallback | None,
    save_hessians: str | Path | None,
    hessians: str | Path | None,
    scratch: HeldFolder | None,
) -> PruneResult:
    """The base (or the saved progress) loaded, offloaded into ``scratch`` when asked, and pruned."""
    offload, offload_folder = prepared.requested.prune.offload, scratch.pinned if scratch is not None else None
    with world.together("loading the base"):
        pipeline = load_base_pipeline(prepared.requested, offload_folder)
        component = prepared.requested.base_model.component
        if resume:
            restored = state.load(getattr(pipeline, component), offload, offload_folder)
            pipeline.register_modules(**{component: restored})
    return prune(
        pipeline,
        prepared.requested.prune,
        calibration=prepared.calibration,
        device=run_device,
        progress=progress,
        state=state,
        save_hessians=save_hessians,
        hessians=hessians,
        world=world,
        prompts=prepared.prompts,
        offload_folder=offload_folder,
    )


def write_recovered(
    prepared: Prepared,
    pipeline: Any,
    result: PruneResult,
    state: DiskState,
    *,
    device: str | None,
    resume: bool,
    overwrite: bool,
) -> RunOutput:
    """A recipe's ``recover`` stage: the one-shot checkpoint (evaluated) is written into the progress folder,
    then healed into ``prepared.out`` exactly as ``obsdiff-hub recover`` heals a saved checkpoint, so
    ``prune`` of a ``*-recovered`` recipe equals ``prune`` of its one-shot recipe followed by ``recover``."""
    config = recovery_recipe(prepared.requested, folder=prepared.requested.folder).recover
    one_shot = replace(prepared, requested=prepared.requested.model_copy(update={"recover": None}))
    one_shot.out, one_shot.destination = state.directory / ONE_SHOT, None
    written = write_run(one_shot, pipeline, result, overwrite=True, parent=state.claim(ONE_SHOT))
    healed = recover_checkpoint(
        written.directory,
        prepared.out,
        changes={"recover": config.model_dump(mode="json")},
        device=device,
        resume=resume,
        overwrite=overwrite,
        state=state,
    )
    return replace(written, directory=healed.directory, recipe=healed.recipe, evaluation=healed.evaluation)


def overlaps(a: Path, b: Path) -> bool:
    """Whether one folder is, or lies inside, the other (links resolved)."""
    a, b = a.resolve(), b.resolve()
    return a == b or a.is_relative_to(b) or b.is_relative_to(a)


def run_family(
    recipes: list[Recipe],
    out: str | Path,
    overrides: Overrides = Overrides(),
    *,
    device: str | None = None,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
    on_output: Callable[[RunOutput], None] | None = None,
) -> list[Path]:
    """Run several recipes of one model that differ only in sparsity, calibrating their first
    package once (:func:`obsdiff_hub.pruning.engine.prune_family`); member ``NAME`` is written to
    ``out/NAME``, bit for bit what :func:`run_recipe` writes for it alone. Everything is checked
    before any work: members must share the base model, the calibration (prompts included) and
    every prune field but the sparsity ones. ``on_output`` gets each member's output as it is written."""
    if not recipes:
        raise InputError("a family needs at least one recipe")
    names = [r.name for r in recipes]
    if len(set(names)) < len(names):
        raise InputError(
            f"recipe {next(n for n in names if names.count(n) > 1)} is given twice; every member needs its own "
            "name (its folder)"
        )
    for name in names:  # each becomes a branch when the family is pushed; main holds the family card
        check_ref_name(name, "family member", reserved=RESERVED_REFS)
    root = Path(out)
    check_family_root(root, names, overwrite)
    run_device = resolve_device(device)
    members = [prepare(r, Path(out) / r.name, run_device, overrides, overwrite=overwrite) for r in recipes]
    first = members[0]
    for member in members[1:]:
        for what, mine, theirs in (
            ("base_model", member.requested.base_model, first.requested.base_model),
            ("calibration", member.calibration, first.calibration),
        ):
            if mine != theirs:
                raise RecipeError(
                    f"{member.requested.name} and {first.requested.name} differ in {what}; a family shares its "
                    "base model and calibration"
                )
    check_family([m.requested.prune for m in members])
    world = World.from_environment(run_device)
    if world.size > 1:
        raise InputError("family runs use one process; run each recipe under the launcher on its own")
    pipeline = load_base_pipeline(first.requested)
    written: list[Path] = []
    held: list[HeldFolder] = []  # the root, opened at the first write and held for every member after it

    def finished(index: int, result: PruneResult) -> None:
        if not held:  # through the folder held since the checks: a link put there since is not followed
            held.append(members[index].destination.parent())  # type: ignore[union-attr]
        output = write_run(members[index], pipeline, result, overwrite=overwrite, parent=held[0])
        written.append(output.directory)
        if on_output is not None:
            on_output(output)

    prune_family(
        pipeline,
        [m.requested.prune for m in members],
        finished,
        calibration=first.calibration,
        device=run_device,
        progress=progress,
        world=world,
        prompts=first.prompts,
    )
    for folder in held:
        folder.close()
    world.close()
    return written


def check_family_root(root: Path, names: list[str], overwrite: bool) -> None:
    """``root`` may hold only this family's members and their progress folders; leftovers of an
    interrupted run of this tool are removed with ``overwrite`` and named as such without it."""
    if root.is_symlink() or (root.exists() and not root.is_dir()):
        raise InputError(f"{root} is a link or a file; give `out` a folder (it will hold one folder per member)")
    if not root.exists():
        return
    members_or_progress = set(names) | {partial_folder(Path(n)).name for n in names}
    for entry in sorted(p.name for p in root.iterdir() if p.name not in members_or_progress):
        if not is_leftover(root / entry):
            raise InputError(f"{root} holds {entry}, which is not a member of this family; choose another `out`")
        if not overwrite:
            raise InputError(
                f"{root} holds {entry}, the unfinished output of an interrupted obsdiff-hub run; pass `overwrite` "
                "to remove it"
            )
        with HeldFolder.open(root, follow_link=False) as held:
            held.remove_tree(entry)
