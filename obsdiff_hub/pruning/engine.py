"""OBS-Diff over a whole denoiser: set up, then per module package calibrate and solve, then finish.

The loop, per package (SPEC §1): hook every layer input the package needs, run all
calibration trajectories once (timestep-weighted Hessians), remove the hooks, solve every
site of the package and write the results, free the Hessians; the next package calibrates
on the already-pruned network. Structured sites shrink the modules right away, which is
numerically the same as zeroing the removed heads/neurons and makes later packages cheaper.
Under a launcher the trajectories are sharded over ranks, the Hessians summed, and each
unit solved on one rank and broadcast (:mod:`.distributed`).

:func:`prune` reads as its four stages: :func:`setup` (device and dtype policy, processes,
calibration, packages), :func:`calibrate_package`, :func:`solve_package` and :func:`finish`.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Protocol

import torch
from torch import nn

from ..architectures import Architecture, BlockUnit, architecture_of, surgery
from ..architectures.components import denoiser_name, denoiser_of, pipeline_vae_scale
from ..errors import InputError
from ..maths.hessian import HessianAccumulator, timestep_weights
from ..memory import release_freed_memory
from ..models import PRUNED_CLASSES, promote, provenance
from ..models.offload import BlockOffload, offload_of
from .allocation import allocate_package
from .asymmetric import dense_targets
from .calibration import Calibration, PipelineCalibration, unconditional_input
from .config import CalibrationConfig, PruneConfig
from .distributed import World
from .hessian_store import HessianStore, state_sha256
from .hooks import collect_hessians
from .packages import PackageLayout, activation_bytes, hessian_layers, plan_packages
from .precision import DTYPES, Precision, check_device_dtype, check_offload_dtype
from .prompts import PromptSet, resolve_prompts
from .report import (
    PackageRecord,
    PruneReport,
    count_parameters,
    peak_host_bytes,
    peak_memory_bytes,
    reset_peak_memory,
)
from .solving import UnitPruner, UnitResult, share_result, unit_cost
from .steps import StepClock


@dataclass(frozen=True)
class ProgressEvent:
    """What the engine is doing: ``stage`` ``package`` (a package starts), ``trajectories`` (a
    calibration batch finished) or ``solve`` (a unit was solved); ``done`` of ``total``."""

    stage: Literal["package", "trajectories", "solve"]
    package: int
    packages: int
    done: int
    total: int


ProgressCallback = Callable[[ProgressEvent], None]


class PackageState(Protocol):
    """Where a run resumes: packages already applied to the model (whose kept-indices record holds the first
    ``restored_records`` structure records of ``previous_report``), and a callback after each package."""

    completed: int
    previous_report: PruneReport | None
    restored_records: int

    def package_done(self, index: int, model: nn.Module, report: PruneReport) -> None: ...


@dataclass
class PruneResult:
    """``model`` is the pruned denoiser (an ``OBSDiff*`` model when shapes were pruned);
    ``pipeline`` is set when one was given and already holds ``model``."""

    model: nn.Module
    report: PruneReport
    pipeline: Any | None = None
    architecture: Architecture = field(repr=False, default=None)  # type: ignore[assignment]

    def structure(self) -> dict[str, int]:
        """Heads per attention and width per MLP, as recorded in checkpoint configs."""
        return surgery.structure_of(self.model, self.architecture)


@dataclass
class Run:
    """What one run carries from :func:`setup` to :func:`finish`."""

    config: PruneConfig
    pipeline: Any | None
    architecture: Architecture
    device: torch.device
    world: World
    precision: Precision
    calibrate: Calibration
    alphas: torch.Tensor
    plan: PackageLayout
    report: PruneReport
    pruner: UnitPruner
    dense: nn.Module | None = None  # asymmetric calibration: the dense copy run alongside
    progress: ProgressCallback | None = None
    state: PackageState | None = None
    store: HessianStore | None = None  # packages' Hessians saved to, or read from, a folder
    offload: BlockOffload | None = None  # the blocks kept off the device (``prune.offload``)

    @property
    def model(self) -> nn.Module:
        """The denoiser being pruned, in the compute dtype on the run device."""
        return self.precision.working

    def tell(self, stage: Literal["package", "trajectories", "solve"], package: int, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress(ProgressEvent(stage, package, len(self.plan.packages), done, total))


def prune(
    target: Any,
    config: PruneConfig | dict[str, Any],
    *,
    calibration: Calibration | CalibrationConfig | dict[str, Any] | None = None,
    steps: int | None = None,
    device: torch.device | str | None = None,
    dtype: str | torch.dtype | None = None,
    progress: ProgressCallback | None = None,
    state: PackageState | None = None,
    save_hessians: str | Path | None = None,
    hessians: str | Path | None = None,
    world: World | None = None,
    prompts: PromptSet | None = None,
    offload_folder: str | Path | None = None,
) -> PruneResult:
    """Prune a diffusers pipeline or a bare denoiser with OBS-Diff (or a baseline).

    ``target``: a pipeline (its ``unet``/``transformer`` is pruned) or the denoiser itself.
    ``calibration``: settings for the pipeline's own sampler (``CalibrationConfig`` or a
    dict), or, for a bare denoiser, a callable ``calibrate(model, set_step)`` that runs
    complete trajectories of ``steps`` sampling steps and calls ``set_step(i)`` before step
    ``i``. ``device``: where calibration and solves run (default: the model's).
    ``dtype``: the calibration dtype (default: the calibration config's, else the model's
    own; fp32 on CPU for half models); the result keeps the model's dtype and every weight
    that is not pruned bit for bit (:mod:`.precision`). ``progress``: called with
    :class:`ProgressEvent` s. ``state``: resume after ``state.completed`` packages (already
    applied to the model) and get a callback after each package (see ``zoo/resume.py``).
    ``save_hessians``: a folder to save every package's Hessians in; ``hessians``: such a folder
    to take them from instead of running trajectories (same base, calibration and earlier
    packages only, see :mod:`.hessian_store`). ``world``: the processes of the run (default: joined
    from the launcher's environment); ``prompts``: the calibration prompts already resolved from
    ``calibration``'s source (default: resolved here). ``offload_folder``: where ``offload:
    blocks-to-disk`` keeps the blocks' files (the result reads its blocks from there: keep it until saved).

    Returns the pruned model (structured results as their ``OBSDiff*`` class, with the
    pruned shapes and provenance in the config; the pipeline, if any, holds it).
    """
    if (save_hessians is not None or hessians is not None) and PruneConfig.coerce(config).offload != "none":
        raise InputError(
            "a Hessian store identifies the base by its weights, which offloading keeps off the device; "
            "set prune.offload: none to save or read one"
        )
    run = setup(
        target,
        config,
        calibration=calibration,
        steps=steps,
        device=device,
        dtype=dtype,
        progress=progress,
        state=state,
        world=world,
        prompts=prompts,
        offload_folder=offload_folder,
    )
    run.store = open_store(run, calibration, save_hessians, hessians)
    first = state.completed if state is not None else 0
    for index, package in enumerate(run.plan.packages):
        if index >= first:
            hessians, crosses, record = calibrate_package(run, index, package)
            solve_package(run, index, package, hessians, crosses, record)
    return finish(run)


SPARSITY_FIELDS = frozenset({"sparsity", "block_sparsity", "n", "m"})


class _Shared:
    """A package-1 accumulator shared by every member of a family: solving reads it, never frees it."""

    def __init__(self, accumulator: Any) -> None:
        self.accumulator = accumulator

    def hessian(self) -> torch.Tensor:
        return self.accumulator.hessian()

    def cross_term(self) -> torch.Tensor:
        return self.accumulator.cross_term()

    def release(self) -> None:
        pass


def check_family(configs: list[PruneConfig]) -> None:
    """Members may differ only in their sparsity fields (then their first packages see the same
    dense trajectories); anything else is an :class:`InputError` naming the first difference."""
    if not configs:
        raise InputError("a family needs at least one member")
    if configs[0].offload != "none":
        raise InputError("prune.offload applies to single runs (each family member starts from a copy of the base)")
    first = configs[0].model_dump()
    for i, cfg in enumerate(configs[1:], 2):
        for key, value in cfg.model_dump().items():
            if key not in SPARSITY_FIELDS and value != first[key]:
                raise InputError(
                    f"family member {i} differs from member 1 in prune.{key} ({value!r} vs {first[key]!r}); "
                    "members may differ only in "
                    f"{', '.join(sorted(SPARSITY_FIELDS))}"
                )


def prune_family(
    target: Any,
    configs: list[PruneConfig | dict[str, Any]],
    on_member: Callable[[int, PruneResult], None],
    *,
    calibration: Calibration | CalibrationConfig | dict[str, Any] | None = None,
    steps: int | None = None,
    device: torch.device | str | None = None,
    dtype: str | torch.dtype | None = None,
    progress: ProgressCallback | None = None,
    world: World | None = None,
    prompts: PromptSet | None = None,
) -> None:
    """:func:`prune` for several sparsities of one model, calibrating the first package once.

    Members differ only in their sparsity fields (:func:`check_family`), so their first packages
    calibrate the same dense network on the same trajectories: the Hessians are accumulated once
    and every member solves from them; later packages calibrate per member, on its own pruned
    network. Each member starts from a copy of the dense denoiser and is bit for bit what
    :func:`prune` gives for its config alone. ``on_member(i, result)`` receives each result in turn
    (the pipeline holds that member's model until the next member starts: save it then).
    ``world`` and ``prompts`` as for :func:`prune`; the members share them.
    """
    cfgs = [PruneConfig.coerce(c) for c in configs]
    check_family(cfgs)
    pipeline = None if isinstance(target, nn.Module) else target
    dense = copy.deepcopy(target if pipeline is None else denoiser_of(pipeline))
    shared: tuple[dict[str, Any], dict[str, Any], PackageRecord] | None = None
    for member, cfg in enumerate(cfgs):
        if member:
            fresh = copy.deepcopy(dense)
            if pipeline is None:
                target = fresh
            else:
                pipeline.register_modules(**{denoiser_name(pipeline): fresh})
        run = setup(
            target,
            cfg,
            calibration=calibration,
            steps=steps,
            device=device,
            dtype=dtype,
            progress=progress,
            world=world,
            prompts=prompts,
        )
        world = run.world
        if isinstance(run.calibrate, PipelineCalibration):
            prompts = PromptSet(tuple(run.calibrate.prompts), run.report.calibration["prompts_sha256"])
        for index, package in enumerate(run.plan.packages):
            if index == 0 and shared is not None:
                hessians, crosses = dict(shared[0]), dict(shared[1])
                record = PackageRecord(0, len(package), shared[2].layers, shared[2].hessian_bytes, 0.0, 0.0, 0.0)
                run.report.stages["calibration_shared_s"] = shared[2].calibration_s
                run.tell("package", 0, 0, len(run.plan.packages))
            else:
                hessians, crosses, record = calibrate_package(run, index, package)
                if index == 0:
                    hessians = {p: _Shared(a) for p, a in hessians.items()}
                    crosses = {p: _Shared(a) for p, a in crosses.items()}
                    shared = (hessians, crosses, record)
                    hessians, crosses = dict(hessians), dict(crosses)
            solve_package(run, index, package, hessians, crosses, record)
        on_member(member, finish(run))


def _calibration_settings(
    pipeline: Any | None, calibration: Any, steps: int | None, dtype: str | torch.dtype | None
) -> tuple[CalibrationConfig | None, int, torch.dtype | None]:
    """The calibration config (None for a callable), the steps per trajectory and the compute dtype asked for."""
    if callable(calibration) and not isinstance(calibration, (CalibrationConfig, dict)):
        if steps is None:
            raise InputError("a calibration callable needs `steps`, the sampling steps of each trajectory")
        return None, steps, DTYPES[dtype] if isinstance(dtype, str) else dtype
    if pipeline is None:
        raise InputError("a bare denoiser needs a calibration callable calibrate(model, set_step)")
    settings = CalibrationConfig.coerce(calibration)
    if dtype is None and settings.dtype != "auto":
        dtype = settings.dtype
    return settings, settings.steps, DTYPES[dtype] if isinstance(dtype, str) else dtype


def setup(
    target: Any,
    config: PruneConfig | dict[str, Any],
    *,
    calibration: Any = None,
    steps: int | None = None,
    device: torch.device | str | None = None,
    dtype: str | torch.dtype | None = None,
    progress: ProgressCallback | None = None,
    state: PackageState | None = None,
    world: World | None = None,
    prompts: PromptSet | None = None,
    offload_folder: str | Path | None = None,
) -> Run:
    """Everything before the first trajectory: settings checked, the model in its compute dtype
    on the run device (its blocks offloaded, when asked), the processes joined, prompts encoded,
    units packed into packages."""
    cfg = PruneConfig.coerce(config)
    pipeline = None if isinstance(target, nn.Module) else target
    model = target if pipeline is None else denoiser_of(pipeline)
    architecture = architecture_of(model)
    if isinstance(model, tuple(PRUNED_CLASSES.values())):
        model.kept_selections()  # a pruned base's kept-indices record is checked now, not after the work
    run_device = World.local_device(torch.device(device)) if device is not None else next(model.parameters()).device
    settings, num_steps, compute = _calibration_settings(pipeline, calibration, steps, dtype)
    check_device_dtype(run_device, compute or torch.float32)
    world = world or World.from_environment(run_device)
    units = architecture.units(model, cfg.block_ids(len(architecture.blocks(model))), cfg.granularity == "structured")
    offloaded = _offload(model, cfg, architecture, run_device, world, offload_folder, compute)
    precision = Precision(model, compute, run_device, offloaded=offloaded is not None)
    model = precision.working.eval()  # calibration is inference: no dropout in the trajectories
    report = (state.previous_report if state is not None else None) or PruneReport(
        family=architecture.family,
        model_class=type(model).__name__,
        config=cfg.model_dump(),
        params_before=count_parameters(model),
    )
    report.precision = {
        "checkpoint": str(precision.checkpoint).removeprefix("torch."),
        "compute": str(precision.compute).removeprefix("torch."),
    }
    report.world_size = world.size
    report.device = str(run_device)
    reset_peak_memory(run_device)

    calibrate: Calibration = calibration
    batch, latent = 1, None
    if settings is not None:
        calibrate = _pipeline_calibration(pipeline, settings, prompts, precision, world, report)
        batch = settings.batch_size * (2 if calibrate.uses_cfg else 1)
        latent = settings.resolution // pipeline_vae_scale(pipeline) if settings.resolution else None

    plan = _plan(model, units, cfg, run_device, report, batch, latent, offloaded)
    run = Run(
        config=cfg,
        pipeline=pipeline,
        architecture=architecture,
        device=run_device,
        world=world,
        precision=precision,
        calibrate=calibrate,
        alphas=timestep_weights(cfg.weighting, num_steps, cfg.alpha_min, cfg.alpha_max),
        plan=plan,
        report=report,
        pruner=UnitPruner(precision, cfg),
        dense=copy.deepcopy(model).eval() if cfg.calibration_target == "dense" else None,
        progress=progress,
        state=state,
        offload=offloaded,
    )
    if isinstance(calibrate, PipelineCalibration):
        t0 = time.perf_counter()
        with world.together("encoding prompts"):
            calibrate.encode()
        report.stages["prompt_encoding_s"] = report.stages.get("prompt_encoding_s", 0.0) + time.perf_counter() - t0
    return run


def _pipeline_calibration(
    pipeline: Any,
    settings: CalibrationConfig,
    prompts: PromptSet | None,
    precision: Precision,
    world: World,
    report: PruneReport,
) -> PipelineCalibration:
    """The pipeline's own sampler over this rank's share of the prompts (resolved here unless given),
    recorded in the report."""
    if isinstance(getattr(pipeline, "vae", None), nn.Module):
        pipeline.vae.to(precision.device)  # diffusers takes the sampling device from the first component
    prompts = prompts or PromptSet.of(resolve_prompts(settings.prompts))
    shard = world.shard(len(prompts.texts))
    calibrate = PipelineCalibration(
        pipeline, settings, list(prompts.texts), precision.device, precision.compute, shard
    )
    report.calibration = {
        "prompts": len(prompts.texts),
        "prompts_sha256": prompts.sha256,
        "unconditional": unconditional_input(pipeline, settings.negative_prompt)
        if calibrate.uses_cfg
        else "none (no classifier-free guidance)",
    }
    return calibrate


def _offload(
    model: nn.Module,
    cfg: PruneConfig,
    architecture: Architecture,
    device: torch.device,
    world: World,
    folder: str | Path | None,
    compute: torch.dtype | None,
) -> BlockOffload | None:
    """The model's blocks offloaded as ``cfg.offload`` asks (before any dtype or device change, so what is
    stored is the checkpoint; every check first, so a refused run leaves the model as it was); a model loaded
    lazily arrives offloaded already."""
    offloaded = offload_of(model)
    if offloaded is None and cfg.offload == "none":
        return None
    if world.size > 1:
        raise InputError("offload runs in one process; launch without a launcher, or set prune.offload: none")
    checkpoint = check_offload_dtype(model, compute, device)
    if offloaded is None:
        offloaded = BlockOffload.from_model(
            model,
            architecture.blocks(model),
            device,
            checkpoint,
            cfg.offload,  # type: ignore[arg-type]
            Path(folder) if folder is not None else None,
        )
    offloaded.device = device
    return offloaded


def hessian_home(cfg: PruneConfig, device: torch.device) -> torch.device:
    """Where the Hessian sums live: host memory with ``hessian_device: cpu``, else on the run device."""
    return torch.device("cpu") if cfg.hessian_device == "cpu" else device


def _plan(
    model: nn.Module,
    units: list[BlockUnit],
    cfg: PruneConfig,
    device: torch.device,
    report: PruneReport,
    batch: int,
    latent: int | None,
    offloaded: BlockOffload | None,
) -> PackageLayout:
    """Units packed into packages (by count, or the fewest that fit the memory), and the peak the
    run should reach on the device: the model (twice when asymmetric; offloaded, what stays resident and one
    block), a calibration forward, the plan's needs (offloaded, a package's blocks resident while it is solved)."""
    asymmetric = cfg.calibration_target == "dense"  # a cross term per Hessian, and a dense copy alongside
    activations = activation_bytes(model, device, batch, latent) if cfg.packages == "auto" else 0
    block_bytes = _block_bytes(model, units, offloaded)
    plan = plan_packages(
        model,
        units,
        cfg.packages,
        cfg.memory_budget_gb,
        device,
        activations,
        hessian_factor=2 if asymmetric else 1,
        hessian_device=hessian_home(cfg, device),
        resident_bytes=block_bytes,
    )
    report.package_plan = plan.summary()
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    if offloaded is not None:  # resident: what is not in a block, and the one block running
        blocks = [_tensor_bytes(model.get_submodule(path)) for path in offloaded.paths]
        model_bytes -= sum(blocks) - max(blocks, default=0)
        report.package_plan["offload"] = offloaded.mode
    report.package_plan["predicted_peak_bytes"] = (
        model_bytes * (2 if asymmetric else 1) + activations + plan.extra_bytes()
    )
    return plan


def _block_bytes(model: nn.Module, units: list[BlockUnit], offloaded: BlockOffload | None) -> list[int] | None:
    """Offloaded: per unit, the compute-dtype bytes of its block when the unit is its block's first (a package
    holds its blocks on the device while it is solved), else 0; None when nothing is offloaded."""
    if offloaded is None:
        return None
    seen: set[int] = set()
    sizes = []
    for unit in units:
        path = offloaded.paths[unit.block]
        first = unit.block not in seen
        seen.add(unit.block)
        sizes.append(_tensor_bytes(model.get_submodule(path)) if first else 0)
    return sizes


def _tensor_bytes(module: nn.Module) -> int:
    """Bytes of a module's stored tensors in their current dtype (placeholders on the meta device included)."""
    return sum(t.numel() * t.element_size() for t in module.state_dict().values())


def open_store(run: Run, calibration: Any, save: str | Path | None, load: str | Path | None) -> HessianStore | None:
    """The run's Hessian store, its identity checked against a folder to read before any work."""
    if save is None and load is None:
        return None
    if save is not None and load is not None:
        raise InputError("`save_hessians` and `hessians` exclude each other: save a store, or read one")
    cfg = run.config
    if not isinstance(run.calibrate, PipelineCalibration):
        raise InputError(
            "a Hessian store needs the pipeline's own calibration settings (a calibration callable cannot be "
            "identified)"
        )
    if cfg.calibration_target == "dense" or run.world.size > 1:
        raise InputError("a Hessian store works with calibration_target: network in one process")
    settings = CalibrationConfig.coerce(calibration)
    layout = [[p for unit in package for p in hessian_layers(unit)] for package in run.plan.packages]
    identity = {
        "model_class": type(run.model).__name__,
        "base_sha256": state_sha256(run.model),
        "prompts_sha256": run.report.calibration["prompts_sha256"],
        "calibration": json.dumps(settings.model_dump(mode="json", exclude={"prompts"}), sort_keys=True),
        "compute_dtype": str(run.precision.compute),
        "timestep_weights": json.dumps([cfg.weighting, cfg.alpha_min, cfg.alpha_max]),
        "hessian_precision": cfg.hessian_precision,
        "packages": hashlib.sha256(json.dumps(layout).encode()).hexdigest(),
    }
    return HessianStore(save if save is not None else load, identity, write=save is not None)  # type: ignore[arg-type]


def calibrate_package(
    run: Run, index: int, package: list[BlockUnit]
) -> tuple[dict[str, HessianAccumulator], dict[str, Any], PackageRecord]:
    """Run every calibration trajectory once with hooks on the package's layer inputs; the
    Hessians (and, asymmetric, cross terms) summed over processes, and the package's record so far."""
    cfg = run.config
    run.tell("package", index, index, len(run.plan.packages))
    layers = [p for unit in package for p in hessian_layers(unit)]
    clock = StepClock(run.alphas)
    hook_time = [0.0]
    home = hessian_home(cfg, run.device)
    t0 = time.perf_counter()
    network = ""  # the digest of the network this package calibrates on (only a store needs it)
    if (
        run.store is not None
    ):  # before the first package nothing is pruned: the network is the base the store identity hashed
        network = run.store.identity["base_sha256"] if index == 0 else state_sha256(run.model)
    if run.store is not None and not run.store.write and run.store.holds(index, network):
        saved = run.store.load(index, network, run.model, layers, home)
        run.report.package_plan.setdefault("hessians_reused", []).append(index + 1)
        return (
            saved,
            {},
            PackageRecord(
                index, len(package), len(layers), run.plan.package_bytes[index], time.perf_counter() - t0, 0.0, 0.0
            ),
        )
    # Each stage's local work ends with the ranks agreeing it went well, before any other collective.
    with run.world.together(f"calibrating package {index + 1}"):
        with (
            collect_hessians(
                run.model, layers, lambda: clock.alpha, cfg.hessian_precision, hook_time, home
            ) as hessians,
            # before any package is pruned X̂ = X: the cross term is zero and the dense forward is skipped
            dense_targets(run.model, run.dense, layers, lambda: clock.alpha, home)
            if run.dense is not None and index > 0
            else nullcontext({}) as crosses,
        ):
            if isinstance(run.calibrate, PipelineCalibration):
                total, done = len(run.calibrate.batches), [0]

                def batch_done() -> None:
                    done[0] += 1
                    run.tell("trajectories", index, done[0], total)

                run.calibrate(run.model, clock.set_step, on_batch=batch_done)
            else:
                with torch.inference_mode():
                    run.calibrate(run.model, clock.set_step)
        clock.check()
    run.world.sum_accumulators(hessians)
    run.world.sum_accumulators(crosses)
    if run.store is not None:
        run.store.store_package(index, network, hessians)
    record = PackageRecord(
        index, len(package), len(layers), run.plan.package_bytes[index], time.perf_counter() - t0, hook_time[0], 0.0
    )
    return hessians, crosses, record


def solve_package(
    run: Run,
    index: int,
    package: list[BlockUnit],
    hessians: dict[str, HessianAccumulator],
    crosses: dict[str, Any],
    record: PackageRecord,
) -> None:
    """Solve every unit of the package on the rank that owns it, apply the results on every rank,
    free the Hessians, and record the package (and save it, when the run is resumable). Offloaded
    blocks are on the device meanwhile, and written back before the next package calibrates."""
    t0 = time.perf_counter()
    resident = (
        run.offload.resident(run.model, [run.offload.paths[unit.block] for unit in package])
        if run.offload is not None
        else nullcontext()
    )
    with resident:
        _solve_units(run, index, package, hessians, crosses)
    hessians.clear()
    crosses.clear()
    release_freed_memory()
    record.solve_s = time.perf_counter() - t0
    run.report.packages.append(record)
    if run.state is not None and run.world.is_main:
        run.state.package_done(index, run.precision.models[-1], run.report)


def _solve_units(
    run: Run, index: int, package: list[BlockUnit], hessians: dict[str, HessianAccumulator], crosses: dict[str, Any]
) -> None:
    """The solves of one package and their application to the model (see :func:`solve_package`)."""
    world, pruner = run.world, run.pruner
    if run.config.allocation == "error":  # the same on every rank: same Hessians, same weights
        pruner.counts = allocate_package(
            run.model, package, pruner.weight, lambda p: hessians[p].hessian(), run.config
        )
    owners = world.owners([unit_cost(run.model, unit) for unit in package])
    pending: list[tuple[int, UnitResult | None]] = []
    with world.together(f"solving package {index + 1}"):
        for position, unit in enumerate(package):
            mine = owners[position] == world.rank
            layers = hessian_layers(unit)
            unit_hessians = {p: hessians[p].hessian().to(run.device) for p in layers} if mine else {}
            cross_terms = {p: crosses[p].cross_term().to(run.device) for p in layers} if mine and crosses else {}
            for p in layers:  # the normalised copies are all the solve needs
                hessians[p].release()
                if crosses:
                    crosses[p].release()
            result = pruner.solve(unit, unit_hessians, cross_terms) if mine else None
            del unit_hessians, cross_terms
            if world.size == 1:
                pruner.apply(unit, result, run.report)  # type: ignore[arg-type]
            else:
                pending.append((position, result))
            run.tell("solve", index, position + 1, len(package))
    for position, result in pending:
        pruner.apply(package[position], share_result(world, result, owners[position], run.device), run.report)


def finish(run: Run) -> PruneResult:
    """Stage times and peak memory into the report; the pruned model in its checkpoint dtype, as
    its ``OBSDiff*`` class when shapes were pruned; the pipeline's components back on the run device."""
    report, cfg = run.report, run.config
    report.stages["trajectories_s"] = sum(p.calibration_s - p.hessian_s for p in report.packages)
    report.stages["hessian_accumulation_s"] = sum(p.hessian_s for p in report.packages)
    report.stages["solve_s"] = sum(p.solve_s for p in report.packages)
    report.stages["total_s"] = sum(p.calibration_s + p.solve_s for p in report.packages) + report.stages.get(
        "prompt_encoding_s", 0.0
    )
    report.peak_memory_bytes = peak_memory_bytes(run.device)
    report.peak_host_bytes = peak_host_bytes()
    kept = report.kept(run.state.restored_records if run.state is not None else 0)  # earlier: the model's record
    result = run.precision.result()
    if run.offload is not None:
        report.stages["offload_s"] = run.offload.seconds
        if run.offload.mode == "blocks":  # the weights lived in host memory: the result does too
            run.offload.materialize(result, torch.device("cpu"))
            result = result.to("cpu")
    pruned = promote(
        result, provenance(method=cfg.method.name, granularity=cfg.granularity, sparsity=cfg.ratio_label), kept
    )
    report.params_after = count_parameters(pruned)
    if isinstance(run.calibrate, PipelineCalibration):
        run.calibrate.restore_devices()
    if run.pipeline is not None:
        run.pipeline.register_modules(**{denoiser_name(run.pipeline): pruned})
    return PruneResult(model=pruned, report=report, pipeline=run.pipeline, architecture=run.architecture)
