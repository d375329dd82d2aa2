"""OBS-Diff over a whole denoiser: module packages, hooked calibration, per-site solves.

The loop, per package (SPEC §1): hook every layer input the package needs, run all
calibration trajectories once (timestep-weighted Hessians), remove the hooks, solve every
site of the package and write the results, free the Hessians; the next package calibrates
on the already-pruned network. Structured sites shrink the modules right away, which is
numerically the same as zeroing the removed heads/neurons and makes later packages cheaper.
Under a launcher the trajectories are sharded over ranks, the Hessians summed, and each
site solved on one rank and broadcast (:mod:`.distributed`).
"""

from __future__ import annotations

import copy
import time
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterator, Literal, Protocol

import torch
from torch import nn

from ..maths.hessian import AccumulationPrecision, HessianAccumulator, timestep_weights
from ..maths.solvers import GroupSelection, asymmetric_target
from ..models import promote, provenance
from . import surgery
from .adapters import ArchitectureAdapter, BlockUnit, HeadCoupling, LinearSite, NeuronCoupling, StructuredSite, adapter_for
from .adapters.inputs import example_inputs, run_denoiser
from .allocation import allocate_package
from .asymmetric import dense_targets
from .calibration import Calibration, PipelineCalibration, denoiser_name, denoiser_of, unconditional_input
from .config import CalibrationConfig, PruneConfig
from .distributed import World
from .methods import GROUP_METHODS, LAYER_METHODS
from .packages import hessian_layers, plan_packages
from .precision import Precision, check_device_dtype, release_freed_memory
from .prompts import prompts_sha256, resolve_prompts
from .report import LayerRecord, PackageRecord, PruneReport, StructureRecord, count_parameters, peak_memory_bytes, reset_peak_memory
from .steps import StepClock

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class ProgressEvent:
    """What the engine is doing: ``stage`` ``package`` (a package starts), ``trajectories`` (a
    calibration batch finished) or ``solve`` (a site was solved); ``done`` of ``total``."""

    stage: Literal["package", "trajectories", "solve"]
    package: int
    packages: int
    done: int
    total: int


ProgressCallback = Callable[[ProgressEvent], None]


class PackageState(Protocol):
    """Where a run resumes: packages already applied to the model, and a callback after each one."""

    completed: int
    previous_report: PruneReport | None

    def package_done(self, index: int, model: nn.Module, report: PruneReport) -> None: ...


@dataclass
class PruneResult:
    """``model`` is the pruned denoiser (an ``OBSDiff*`` model when shapes were pruned);
    ``pipeline`` is set when one was given and already holds ``model``."""

    model: nn.Module
    report: PruneReport
    pipeline: Any | None = None
    adapter: ArchitectureAdapter = field(repr=False, default=None)  # type: ignore[assignment]

    def structure(self) -> dict[str, int]:
        """Heads per attention and width per MLP, as recorded in checkpoint configs."""
        return surgery.structure_of(self.model, self.adapter)


@contextmanager
def collect_hessians(
    model: nn.Module,
    layers: list[str],
    weight: Callable[[], float],
    precision: AccumulationPrecision = "fp32",
    timer: list[float] | None = None,
    device: torch.device | None = None,
) -> Iterator[dict[str, HessianAccumulator]]:
    """Hook the inputs of ``layers``; every call adds ``2·α·XᵀX`` with ``α = weight()``.

    Yields the accumulators, kept on ``device`` (default: each layer's); the hooks are removed
    on exit. ``timer[0]`` (if given) accumulates the seconds spent inside the hooks.
    """
    accumulators: dict[str, HessianAccumulator] = {}
    with ExitStack() as stack:
        for path in layers:
            linear = model.get_submodule(path)
            acc = HessianAccumulator(linear.in_features, device=device or linear.weight.device, precision=precision)
            accumulators[path] = acc

            def hook(module: nn.Module, args: tuple, acc: HessianAccumulator = acc) -> None:
                start = time.perf_counter()
                acc.add(args[0], weight())
                if timer is not None:
                    timer[0] += time.perf_counter() - start

            stack.callback(linear.register_forward_pre_hook(hook).remove)
        yield accumulators


def relative_error(W: torch.Tensor, W_new: torch.Tensor, H: torch.Tensor) -> float:
    """``‖(W−Ŵ)X‖² / ‖WX‖²`` computed from the Hessian, so no activations are kept."""
    W, W_new, H = W.float(), W_new.float().to(W.device), H.to(W.device)
    delta = W - W_new
    denominator = float((W @ H * W).sum())
    return float((delta @ H * delta).sum()) / denominator if denominator > 0 else 0.0


@dataclass
class UnitResult:
    """What solving one basic unit produced; applied on every rank."""

    weights: dict[str, torch.Tensor] = field(default_factory=dict)  # layer path → solved weight
    kept: dict[str, list[int]] = field(default_factory=dict)  # coupling key → kept heads/neurons
    layers: list[LayerRecord] = field(default_factory=list)
    structure: list[StructureRecord] = field(default_factory=list)


class SiteSolver:
    """Applies one config's method to the sites of a unit, through the run's :class:`Precision`."""

    def __init__(self, precision: Precision, config: PruneConfig) -> None:
        self.precision = precision
        self.config = config
        self.counts: dict[str, int] = {}  # allocated removals: layer path or coupling key → count

    def weight(self, path: str) -> torch.Tensor:
        """The weight to prune: the checkpoint values (the master copy when there is one)."""
        models = self.precision.models
        return models[-1].get_submodule(path).weight.data.to(models[0].get_submodule(path).weight.device)

    def target(self, path: str, H: torch.Tensor, G: torch.Tensor | None) -> torch.Tensor:
        """What the solve fits: the weight itself, or with a cross term the dense network's outputs."""
        W = self.weight(path)
        return W if G is None else asymmetric_target(W, H, G, self.config.percdamp)

    def solve(self, unit: BlockUnit, hessians: dict[str, torch.Tensor], cross_terms: dict[str, torch.Tensor] | None = None) -> UnitResult:
        result = UnitResult()
        cross_terms = cross_terms or {}
        for site in unit.sites:
            if isinstance(site, LinearSite):
                self._solve_linear(unit.block, site, hessians[site.hessian_layer], cross_terms.get(site.hessian_layer), result)
            else:
                self._solve_structured(unit.block, site, hessians, cross_terms, result)
        return result

    def _solve_linear(self, block: int, site: LinearSite, H: torch.Tensor, G: torch.Tensor | None, result: UnitResult) -> None:
        cfg = self.config
        weights = [self.weight(p) for p in site.layers]
        targets = [self.target(p, H, G) for p in site.layers] if G is not None else weights
        counts = [self.counts[p] for p in site.layers] if self.counts else None
        solved = LAYER_METHODS[cfg.method](targets, H, [cfg.sparsity_for(block)] * len(weights), cfg, counts)
        for path, W, (W_new, mask) in zip(site.layers, weights, solved):
            result.weights[path] = W_new
            result.layers.append(LayerRecord(path, block, tuple(W.shape), float(mask.float().mean()), relative_error(W, W_new, H)))

    def _solve_structured(
        self, block: int, site: StructuredSite, hessians: dict[str, torch.Tensor], cross_terms: dict[str, torch.Tensor], result: UnitResult
    ) -> None:
        cfg = self.config
        ratio = cfg.sparsity_for(block)
        working = self.precision.working
        weights = [self.weight(p) for p in site.out_layers]
        targets = [self.target(p, hessians[p], cross_terms.get(p)) for p in site.out_layers] if cross_terms else weights
        groups, head_ids, neuron_ids = site.column_groups(working)

        def count(coupling: HeadCoupling | NeuronCoupling | None, ids: range) -> int:
            if coupling is None or not ids:
                return 0
            return self.counts.get(coupling.key, surgery.removal_count(len(ids), ratio))

        selections = [
            GroupSelection(tuple(head_ids), count(site.heads, head_ids)),
            GroupSelection(tuple(neuron_ids), count(site.neurons, neuron_ids), cfg.neuron_batch),
        ]
        solved, (gone_heads, gone_neurons) = GROUP_METHODS[cfg.method](targets, [hessians[p] for p in site.out_layers], groups, selections, cfg)
        for path, W, W_new in zip(site.out_layers, weights, solved):
            result.weights[path] = W_new
            zeroed = float((W_new == 0).all(0).float().mean())
            result.layers.append(LayerRecord(path, block, tuple(W.shape), zeroed, relative_error(W, W_new, hessians[path])))
        for coupling, ids, gone, offset in ((site.heads, head_ids, gone_heads, 0), (site.neurons, neuron_ids, gone_neurons, len(head_ids))):
            if coupling is None:
                continue
            result.kept[coupling.key] = sorted(g - offset for g in ids if g not in set(gone))
            kind = "heads" if isinstance(coupling, HeadCoupling) else "neurons"
            result.structure.append(StructureRecord(coupling.key, block, kind, len(ids), len(result.kept[coupling.key])))

    def apply(self, unit: BlockUnit, result: UnitResult, report: PruneReport) -> None:
        """Write the solved weights, then delete removed heads/neurons, in every model the run carries."""
        for path, W in result.weights.items():
            self.precision.write(path, W)
        for site in unit.sites:
            if not isinstance(site, StructuredSite):
                continue
            for coupling in (site.heads, site.neurons):
                if coupling is None or coupling.key not in result.kept:
                    continue
                keep = torch.tensor(result.kept[coupling.key], dtype=torch.long)
                shrink = surgery.keep_heads if isinstance(coupling, HeadCoupling) else surgery.keep_neurons
                for model in self.precision.models:
                    shrink(model, coupling, keep)  # type: ignore[arg-type]
        report.layers += result.layers
        report.structure += result.structure


def _share(world: World, result: UnitResult | None, owner: int, device: torch.device) -> UnitResult:
    """The owner's result of one unit, on every rank."""
    weights = world.broadcast_tensors(result.weights if result is not None else None, owner, device)
    meta = world.broadcast_json(
        {"kept": result.kept, "layers": [asdict(r) for r in result.layers], "structure": [asdict(r) for r in result.structure]}
        if result is not None
        else None,
        owner,
    )
    return UnitResult(
        weights,
        meta["kept"],
        [LayerRecord(**{**r, "shape": tuple(r["shape"])}) for r in meta["layers"]],
        [StructureRecord(**r) for r in meta["structure"]],
    )


def _sum_over_ranks(world: World, accumulators: dict[str, Any]) -> None:
    """All-reduce the Hessian (or cross-term) sums and their normalisers, so every rank holds the global ones."""
    if world.size == 1:
        return
    for acc in accumulators.values():
        world.all_reduce_(acc.sum)
    totals = torch.tensor([[a.total_weight, float(a.num_samples)] for a in accumulators.values()], dtype=torch.float64)
    world.all_reduce_(totals)
    for acc, (weight, samples) in zip(accumulators.values(), totals.tolist()):
        acc.total_weight, acc.num_samples = weight, int(samples)


def _unit_cost(model: nn.Module, unit: BlockUnit) -> float:
    """Solve cost of a unit: per Hessian ``n³ + rows·n²`` (factorisation and updates)."""
    cost = 0.0
    for site in unit.sites:
        paths = site.layers if isinstance(site, LinearSite) else site.out_layers
        n = model.get_submodule(paths[0]).in_features
        rows = sum(model.get_submodule(p).out_features for p in paths)
        cost += n**3 + rows * n**2
    return cost


def _activation_bytes(model: nn.Module, device: torch.device, batch: int, resolution: int | None) -> int:
    """Peak memory of one calibration-sized forward (CUDA), what packages must leave free."""
    if device.type != "cuda":
        return 0
    latent = resolution // 8 if resolution else None
    inputs = example_inputs(model, batch=batch, latent_size=latent, tokens=77)
    inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else {kk: vv.to(device) for kk, vv in v.items()} for k, v in inputs.items()}
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    with torch.inference_mode():
        run_denoiser(model, inputs, 500.0)
    return int(torch.cuda.max_memory_allocated(device) - before)


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

    Returns the pruned model (structured results as their ``OBSDiff*`` class, with the
    pruned shapes and provenance in the config; the pipeline, if any, holds it).
    """
    cfg = PruneConfig.coerce(config)
    pipeline = None if isinstance(target, nn.Module) else target
    model = target if pipeline is None else denoiser_of(pipeline)
    adapter = adapter_for(model)
    run_device = World.local_device(torch.device(device)) if device is not None else next(model.parameters()).device

    callable_calibration = callable(calibration) and not isinstance(calibration, (CalibrationConfig, dict))
    cal_cfg: CalibrationConfig | None = None
    if not callable_calibration:
        cal_cfg = calibration if isinstance(calibration, CalibrationConfig) else CalibrationConfig.model_validate(calibration or {})
    if dtype is None and cal_cfg is not None and cal_cfg.dtype != "auto":
        dtype = cal_cfg.dtype
    compute = DTYPES[dtype] if isinstance(dtype, str) else dtype
    check_device_dtype(run_device, compute or torch.float32)
    if callable_calibration:
        if steps is None:
            raise ValueError("a calibration callable needs `steps`, the sampling steps of each trajectory")
        num_steps = steps
    elif pipeline is None:
        raise ValueError("a bare denoiser needs a calibration callable calibrate(model, set_step)")
    else:
        num_steps = cal_cfg.steps  # type: ignore[union-attr]
    world = World.from_environment(run_device)

    precision = Precision(model, compute, run_device)
    model = precision.working.eval()  # calibration is inference: no dropout in the trajectories
    report = (state.previous_report if state is not None else None) or PruneReport(
        family=adapter.family, model_class=type(model).__name__, config=cfg.model_dump(), params_before=count_parameters(model)
    )
    report.precision = {"checkpoint": str(precision.checkpoint).removeprefix("torch."), "compute": str(precision.compute).removeprefix("torch.")}
    report.world_size = world.size
    reset_peak_memory(run_device)

    calibrate: Any = calibration
    if not callable_calibration:
        assert cal_cfg is not None
        if isinstance(getattr(pipeline, "vae", None), nn.Module):
            pipeline.vae.to(run_device)  # diffusers takes the sampling device from the first component
        prompts = resolve_prompts(cal_cfg.prompts)
        calibrate = PipelineCalibration(pipeline, cal_cfg, prompts, run_device, precision.compute, world.shard(len(prompts)))
        report.calibration = {
            "prompts": len(prompts),
            "prompts_sha256": prompts_sha256(prompts),
            "unconditional": unconditional_input(pipeline, cal_cfg.negative_prompt) if calibrate.uses_cfg else "none (no classifier-free guidance)",
        }

    units = adapter.units(model, cfg.block_ids(len(adapter.blocks(model))), cfg.granularity == "structured")
    batch = (cal_cfg.batch_size * (2 if calibrate.uses_cfg else 1)) if cal_cfg is not None else 1
    activations = _activation_bytes(model, run_device, batch, cal_cfg.resolution if cal_cfg else None) if cfg.packages == "auto" else 0
    asymmetric = cfg.calibration_target == "dense"  # a cross term per Hessian, and a dense copy alongside
    store = torch.device("cpu") if cfg.hessian_device == "cpu" else None  # where the Hessian sums live (default: beside each layer)
    plan = plan_packages(model, units, cfg.packages, cfg.memory_budget_gb, run_device, activations, hessian_factor=2 if asymmetric else 1, hessian_device=store)
    report.package_plan = plan.summary()
    # What this run should peak at on the device: the model as calibrated (twice, asymmetric), then the package plan's needs.
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    report.package_plan["predicted_peak_bytes"] = model_bytes * (2 if asymmetric else 1) + activations + plan.extra_bytes()
    dense = copy.deepcopy(model).eval() if asymmetric else None
    count = len(plan.packages)
    first = state.completed if state is not None else 0

    if isinstance(calibrate, PipelineCalibration):
        t0 = time.perf_counter()
        with world.together("encoding prompts"):
            calibrate.encode()
        report.stages["prompt_encoding_s"] = report.stages.get("prompt_encoding_s", 0.0) + time.perf_counter() - t0
    solver = SiteSolver(precision, cfg)
    alphas = timestep_weights(cfg.weighting, num_steps, cfg.alpha_min, cfg.alpha_max)
    for index, package in enumerate(plan.packages):
        if index < first:
            continue
        if progress:
            progress(ProgressEvent("package", index, count, index, count))
        layers = [p for unit in package for p in hessian_layers(unit)]
        clock = StepClock(alphas)
        hook_time = [0.0]
        t0 = time.perf_counter()
        # Each stage's local work ends with the ranks agreeing it went well, before any other collective.
        with world.together(f"calibrating package {index + 1}"):
            with (
                collect_hessians(model, layers, lambda: clock.alpha, cfg.hessian_precision, hook_time, store) as accumulators,
                # before any package is pruned X̂ = X: the cross term is zero and the dense forward is skipped
                dense_targets(model, dense, layers, lambda: clock.alpha, store) if dense is not None and index > 0 else nullcontext({}) as crosses,
            ):
                if isinstance(calibrate, PipelineCalibration):
                    total, done = len(calibrate.batches), [0]

                    def batch_done() -> None:
                        done[0] += 1
                        if progress:
                            progress(ProgressEvent("trajectories", index, count, done[0], total))

                    calibrate(model, clock.set_step, on_batch=batch_done)
                else:
                    with torch.inference_mode():
                        calibrate(model, clock.set_step)
            clock.check()
        _sum_over_ranks(world, accumulators)
        _sum_over_ranks(world, crosses)
        calibration_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        if cfg.allocation == "error":  # the same on every rank: same Hessians, same weights
            solver.counts = allocate_package(model, package, solver.weight, lambda p: accumulators[p].hessian(), cfg)
        owners = world.owners([_unit_cost(model, unit) for unit in package])
        pending: list[tuple[int, UnitResult | None]] = []
        with world.together(f"solving package {index + 1}"):
            for position, unit in enumerate(package):
                result = None
                mine = owners[position] == world.rank
                hessians = {p: accumulators[p].hessian().to(run_device) for p in hessian_layers(unit)} if mine else {}
                cross_terms = {p: crosses[p].cross_term().to(run_device) for p in hessian_layers(unit)} if mine and crosses else {}
                for p in hessian_layers(unit):
                    accumulators[p].release()  # the normalised copies are all the solve needs
                    if crosses:
                        crosses[p].release()
                if mine:
                    result = solver.solve(unit, hessians, cross_terms)
                del hessians, cross_terms
                if world.size == 1:
                    solver.apply(unit, result, report)  # type: ignore[arg-type]
                else:
                    pending.append((position, result))
                if progress:
                    progress(ProgressEvent("solve", index, count, position + 1, len(package)))
        for position, result in pending:
            solver.apply(package[position], _share(world, result, owners[position], run_device), report)
        del accumulators, crosses
        release_freed_memory()
        report.packages.append(
            PackageRecord(index, len(package), len(layers), plan.package_bytes[index], calibration_s, hook_time[0], time.perf_counter() - t0)
        )
        if state is not None and world.is_main:
            state.package_done(index, precision.models[-1], report)

    report.stages["trajectories_s"] = sum(p.calibration_s - p.hessian_s for p in report.packages)
    report.stages["hessian_accumulation_s"] = sum(p.hessian_s for p in report.packages)
    report.stages["solve_s"] = sum(p.solve_s for p in report.packages)
    report.stages["total_s"] = sum(p.calibration_s + p.solve_s for p in report.packages) + report.stages.get("prompt_encoding_s", 0.0)
    report.peak_memory_bytes = peak_memory_bytes(run_device)

    pruned = promote(precision.result(), provenance(method=cfg.method, granularity=cfg.granularity, sparsity=cfg.ratio_label))
    report.params_after = count_parameters(pruned)
    if isinstance(calibrate, PipelineCalibration):
        calibrate.restore_devices()
    if pipeline is not None:
        pipeline.register_modules(**{denoiser_name(pipeline): pruned})
    return PruneResult(model=pruned, report=report, pipeline=pipeline, adapter=adapter)

