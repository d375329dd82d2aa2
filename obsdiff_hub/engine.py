"""OBS-Diff over a whole denoiser: module packages, hooked calibration, per-site solves.

Lifecycle per package (SPEC §1): hook every layer input the package needs, run all
calibration trajectories once (timestep-weighted Hessians), remove the hooks, solve
and write every layer of the package, free the Hessians; the next package calibrates
on the already-pruned network. Structured sites shrink the modules right away, which is
numerically the same as zeroing the removed heads/neurons and makes later packages cheaper.
"""

from __future__ import annotations

import time
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Protocol

import torch
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from torch import nn

from . import baselines, solvers, surgery
from .adapters import (
    ArchitectureAdapter,
    BlockUnit,
    HeadCoupling,
    LinearSite,
    NeuronCoupling,
    StructuredSite,
    adapter_for,
)
from .calibration import Calibration, PipelineCalibration, denoiser_of
from .config import CalibrationConfig, PruneConfig
from .hessian import HessianAccumulator, timestep_weights
from .packages import hessian_bytes, hessian_layers, split_packages
from .report import (
    LayerRecord,
    PackageRecord,
    PruneReport,
    StructureRecord,
    count_parameters,
    peak_memory_bytes,
    reset_peak_memory,
)

_UNSTRUCTURED: dict[str, Callable[..., tuple[torch.Tensor, torch.Tensor]]] = {
    "magnitude": baselines.magnitude_prune,
    "wanda": baselines.wanda_prune,
    "dsnot": baselines.dsnot_prune,
}


class PackageState(Protocol):
    """Where a run resumes: packages already applied to the model, and a callback after each one."""

    completed: int
    previous_report: PruneReport | None

    def package_done(self, index: int, model: nn.Module, report: PruneReport) -> None: ...


@dataclass
class PruneResult:
    """``model`` is the pruned denoiser (shrunk in place); ``pipeline`` is set when one was given."""

    model: nn.Module
    report: PruneReport
    pipeline: Any | None = None
    adapter: ArchitectureAdapter = field(repr=False, default=None)  # type: ignore[assignment]

    def structure(self) -> dict[str, int]:
        """Heads per attention and width per MLP, as recorded in checkpoint configs."""
        return surgery.structure_of(self.model, self.adapter)


class _StepClock:
    """The current sampling step's weight α_t, read by every hook."""

    def __init__(self, alphas: torch.Tensor) -> None:
        self.alphas = alphas.tolist()
        self.step = 0

    def set_step(self, step: int) -> None:
        self.step = step

    @property
    def alpha(self) -> float:
        if self.step >= len(self.alphas):
            raise ValueError(
                f"calibration ran step {self.step} but the weights cover {len(self.alphas)} steps; "
                "set `steps` to the number of sampling steps"
            )
        return self.alphas[self.step]


@contextmanager
def collect_hessians(
    model: nn.Module,
    layers: list[str],
    set_weight: Callable[[], float],
    precision: str = "fp32",
    timer: list[float] | None = None,
) -> Iterator[dict[str, HessianAccumulator]]:
    """Hook the inputs of ``layers``; every call adds ``2·α·XᵀX`` with ``α = set_weight()``.

    Yields the accumulators; the hooks are removed on exit. ``timer[0]`` (if given)
    accumulates the seconds spent inside the hooks.
    """
    accumulators: dict[str, HessianAccumulator] = {}
    with ExitStack() as stack:
        for path in layers:
            linear = model.get_submodule(path)
            acc = HessianAccumulator(linear.in_features, device=linear.weight.device, precision=precision)  # type: ignore[arg-type]
            accumulators[path] = acc

            def hook(module: nn.Module, args: tuple, acc: HessianAccumulator = acc) -> None:
                start = time.perf_counter()
                acc.add(args[0], set_weight())
                if timer is not None:
                    timer[0] += time.perf_counter() - start

            stack.callback(linear.register_forward_pre_hook(hook).remove)
        yield accumulators


def _relative_error(W: torch.Tensor, W_new: torch.Tensor, H: torch.Tensor) -> float:
    """``‖(W−Ŵ)X‖² / ‖WX‖²`` computed from the Hessian, so no activations are kept."""
    W, W_new, H = W.float(), W_new.float(), H.to(W.device)
    delta = W - W_new
    denominator = float((W @ H * W).sum())
    return float((delta @ H * delta).sum()) / denominator if denominator > 0 else 0.0


class _Solver:
    """Applies one config's method to sites; records what it did."""

    def __init__(self, model: nn.Module, config: PruneConfig, report: PruneReport) -> None:
        self.model = model
        self.config = config
        self.report = report

    def solve(self, unit: BlockUnit, hessians: dict[str, torch.Tensor]) -> None:
        for site in unit.sites:
            if isinstance(site, LinearSite):
                for path in site.layers:
                    self._solve_linear(unit.block, path, hessians[site.hessian_layer])
            else:
                self._solve_structured(unit.block, site, hessians)

    def _solve_linear(self, block: int, path: str, H: torch.Tensor) -> None:
        cfg = self.config
        linear = self.model.get_submodule(path)
        W = linear.weight.data
        sparsity = cfg.sparsity_for(block)
        if cfg.method == "obs-diff":
            W_new, mask = solvers.obs_prune(W, H, sparsity, cfg.n, cfg.m, cfg.blocksize, cfg.percdamp)
        else:
            W_new, mask = _UNSTRUCTURED[cfg.method](W, H, sparsity, cfg.n, cfg.m)
        error = _relative_error(W, W_new, H)
        W.copy_(W_new)
        self.report.layers.append(LayerRecord(path, block, tuple(W.shape), float(mask.float().mean()), error))

    def _solve_structured(self, block: int, site: StructuredSite, hessians: dict[str, torch.Tensor]) -> None:
        cfg = self.config
        ratio = cfg.sparsity_for(block)
        outs = [self.model.get_submodule(p) for p in site.out_layers]
        originals = [o.weight.data.clone() for o in outs]
        groups: list[torch.Tensor] = []
        head_ids: list[int] = []
        neuron_ids: list[int] = []
        if site.heads is not None:
            head_ids = list(range(surgery.current_heads(self.model, site.heads)))
            groups += solvers.column_groups(len(head_ids) * site.heads.head_dim, site.heads.head_dim)
        if site.neurons is not None:
            width = surgery.current_width(self.model, site.neurons)
            offset = outs[0].in_features - width
            neuron_ids = list(range(len(groups), len(groups) + width))
            groups += solvers.column_groups(width, 1, offset)
        remove_heads = surgery.removal_count(len(head_ids), ratio) if head_ids else 0
        remove_neurons = surgery.removal_count(len(neuron_ids), ratio) if neuron_ids else 0

        if cfg.method == "obs-diff":
            group_solvers = [
                solvers.GroupOBS.from_layer(o.weight.data, hessians[p], groups, cfg.percdamp, cfg.head_saliency)
                for o, p in zip(outs, site.out_layers)
            ]
            gone_heads = solvers.obs_prune_groups(group_solvers, head_ids, remove_heads, cfg.rrf_k)
            gone_neurons = solvers.obs_prune_groups(group_solvers, neuron_ids, remove_neurons, cfg.rrf_k, cfg.neuron_batch)
            for o, s in zip(outs, group_solvers):
                o.weight.data.copy_(s.W.to(o.weight.dtype))
        else:  # l1: smallest Σ|w| over all output projections, no compensation
            stacked = torch.cat([o.weight.data for o in outs])
            gone_heads = baselines.smallest_l1_groups(stacked, groups, head_ids, remove_heads)
            gone_neurons = baselines.smallest_l1_groups(stacked, groups, neuron_ids, remove_neurons)
            for o in outs:
                for g in gone_heads + gone_neurons:
                    o.weight.data[:, groups[g].to(o.weight.device)] = 0

        for o, p, W in zip(outs, site.out_layers, originals):
            zeroed = (o.weight.data == 0).all(0).float().mean()
            self.report.layers.append(LayerRecord(p, block, tuple(W.shape), float(zeroed), _relative_error(W, o.weight.data, hessians[p])))
        if site.heads is not None:
            self._shrink(block, site.heads, len(head_ids), [g for g in head_ids if g not in gone_heads])
        if site.neurons is not None:
            kept = [g - len(head_ids) for g in neuron_ids if g not in gone_neurons]
            self._shrink(block, site.neurons, len(neuron_ids), kept)

    def _shrink(self, block: int, coupling: HeadCoupling | NeuronCoupling, before: int, kept: list[int]) -> None:
        keep = torch.tensor(sorted(kept), dtype=torch.long)
        if isinstance(coupling, HeadCoupling):
            surgery.keep_heads(self.model, coupling, keep)
            self.report.structure.append(StructureRecord(coupling.attention, block, "heads", before, len(kept)))
        else:
            surgery.keep_neurons(self.model, coupling, keep)
            self.report.structure.append(StructureRecord(coupling.owner, block, "neurons", before, len(kept)))


def _progress(enabled: bool) -> Progress | None:
    if not enabled:
        return None
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), transient=False
    )


def prune(
    target: Any,
    config: PruneConfig | dict[str, Any],
    *,
    calibration: Calibration | CalibrationConfig | dict[str, Any] | None = None,
    device: torch.device | str | None = None,
    progress: bool = True,
    state: PackageState | None = None,
) -> PruneResult:
    """Prune a diffusers pipeline or a bare denoiser with OBS-Diff (or a baseline), in place.

    ``target``: a pipeline (its ``unet``/``transformer`` is pruned) or the denoiser itself.
    ``calibration``: settings for the pipeline's own sampler (``CalibrationConfig`` or a
    dict), or, for a bare denoiser, a callable ``calibrate(model, set_step)`` that runs
    complete trajectories and calls ``set_step(i)`` before step ``i`` (then ``steps``
    must be set in ``config``). ``device``: where calibration and solves run (default:
    the model's device). The model keeps its dtype; Hessians and solves are fp32.
    ``state``: resume after ``state.completed`` packages (already applied to the model)
    and get a callback after each package, e.g. to persist progress (see ``resume.py``).
    """
    cfg = PruneConfig.coerce(config)
    pipeline = None if isinstance(target, nn.Module) else target
    model = target if pipeline is None else denoiser_of(pipeline)
    adapter = adapter_for(model)
    run_device = torch.device(device) if device is not None else next(model.parameters()).device
    if pipeline is not None:
        pipeline.to(run_device)
    else:
        model.to(run_device)
    model.eval()  # calibration is inference: no dropout in the trajectories

    if callable(calibration) and not isinstance(calibration, (CalibrationConfig, dict)):
        if cfg.steps is None:
            raise ValueError("a calibration callable needs `steps` (sampling steps per trajectory) in the config")
        calibrate, num_steps = calibration, cfg.steps
    else:
        if pipeline is None:
            raise ValueError("a bare denoiser needs a calibration callable calibrate(model, set_step)")
        cal_cfg = calibration if isinstance(calibration, CalibrationConfig) else CalibrationConfig.model_validate(calibration or {})
        calibrate, num_steps = PipelineCalibration(pipeline, cal_cfg, run_device), cal_cfg.steps
    clock = _StepClock(timestep_weights(cfg.weighting, num_steps, cfg.alpha_min, cfg.alpha_max))

    units = adapter.units(model, cfg.block_ids(len(adapter.blocks(model))), cfg.granularity == "structured")
    packages = split_packages(model, units, cfg.packages, cfg.memory_budget_gb)
    report = (state.previous_report if state is not None else None) or PruneReport(
        family=adapter.family,
        model_class=type(model).__name__,
        config=cfg.model_dump(),
        params_before=count_parameters(model),
    )
    first = state.completed if state is not None else 0
    reset_peak_memory(run_device)
    if isinstance(calibrate, PipelineCalibration):
        t0 = time.perf_counter()
        calibrate.encode()
        report.stages["prompt_encoding_s"] = time.perf_counter() - t0
    solver = _Solver(model, cfg, report)
    bar = _progress(progress)
    with bar if bar is not None else nullcontext():
        package_task = bar.add_task("packages", total=len(packages), completed=first) if bar else None
        for index, package in enumerate(packages):
            if index < first:
                continue
            layers = [p for unit in package for p in hessian_layers(unit)]
            package_bytes = sum(hessian_bytes(model, unit) for unit in package)
            hook_time = [0.0]
            t0 = time.perf_counter()
            with collect_hessians(model, layers, lambda: clock.alpha, cfg.hessian_precision, hook_time) as accumulators:
                if isinstance(calibrate, PipelineCalibration):
                    traj_task = bar.add_task(f"  package {index + 1} trajectories", total=len(calibrate.batches)) if bar else None
                    calibrate(model, clock.set_step, on_batch=(lambda: bar.advance(traj_task)) if bar else None)
                    if bar:
                        bar.remove_task(traj_task)
                else:
                    with torch.inference_mode():
                        calibrate(model, clock.set_step)
            calibration_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            for unit in package:
                hessians = {p: accumulators[p].hessian() for p in hessian_layers(unit)}
                solver.solve(unit, hessians)
                for p in hessian_layers(unit):
                    accumulators[p].release()
            report.packages.append(
                PackageRecord(
                    index=index,
                    units=len(package),
                    layers=len(layers),
                    hessian_bytes=package_bytes,
                    calibration_s=calibration_s,
                    hessian_s=hook_time[0],
                    solve_s=time.perf_counter() - t0,
                )
            )
            if state is not None:
                state.package_done(index, model, report)
            if bar:
                bar.advance(package_task)
    report.stages["trajectories_s"] = sum(p.calibration_s - p.hessian_s for p in report.packages)
    report.stages["hessian_accumulation_s"] = sum(p.hessian_s for p in report.packages)
    report.stages["solve_s"] = sum(p.solve_s for p in report.packages)
    report.stages["total_s"] = sum(p.calibration_s + p.solve_s for p in report.packages) + report.stages.get("prompt_encoding_s", 0.0)
    report.params_after = count_parameters(model)
    report.peak_memory_bytes = peak_memory_bytes(run_device)
    return PruneResult(model=model, report=report, pipeline=pipeline, adapter=adapter)
