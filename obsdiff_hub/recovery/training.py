"""Distillation on the recorded teacher data, guarded so it never hands back a worse model.

Training is plain regression of the student's prediction onto the teacher's (MSE), with accelerate for
the device, mixed precision and gradient accumulation, and torch's AdamW; it runs in one process. What
makes it safe to run unattended:

- **Validation first.** The one-shot model is scored on held-out prompts' rows before the first step
  and every ``validate_every`` steps; the best state is kept, the one-shot one if nothing beats it, and
  training stops once ``patience`` validations in a row do not improve.
- **Masks are sacred.** For unstructured and N:M checkpoints the zeros of every weight get no gradient
  and are re-zeroed after each step; the pattern is checked at the end, bit for bit.
- **Resumable.** Every ``save_every`` steps the weights, the optimizer's moments and the best state go
  to safetensors (never a pickle); the rows of step ``s`` are drawn from ``seed + s``, so a resumed run
  equals an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from accelerate import Accelerator
from safetensors.torch import load_file
from torch import nn

from ..errors import InputError
from ..storage.files import read_json, write_safetensors_file
from ..storage.outputs import write_atomic
from .cache import TeacherCache
from .config import RecoverConfig

PROGRESS = "progress.json"
WEIGHTS = "weights.safetensors"
BEST = "best.safetensors"
OPTIMIZER = "optimizer.safetensors"


@dataclass
class RecoveryReport:
    """What the heal did, for ``report.json`` and the card."""

    steps_run: int = 0
    kept_step: int = 0  # the step whose state was kept; 0: the one-shot weights (the heal was rejected)
    one_shot_validation: float = 0.0  # validation loss (MSE to the teacher) before training
    best_validation: float = 0.0
    validation: list[tuple[int, float]] = field(default_factory=list)  # (step, loss)
    training_loss: list[tuple[int, float]] = field(default_factory=list)  # (step, mean loss since the last)
    stopped_early: bool = False
    trainable_parameters: int = 0
    rows: dict[str, int] = field(default_factory=dict)  # train / validation rows of the cache
    seconds: dict[str, float] = field(default_factory=dict)  # record / train

    @property
    def rejected(self) -> bool:
        return self.kept_step == 0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "rejected": self.rejected}


Progress = Callable[[int, int, float | None], None]  # step, of steps, last validation loss


def trainable_parameters(model: nn.Module, which: str) -> dict[str, nn.Parameter]:
    """The parameters that learn: all floating ones, or those of the attention or norm modules."""
    if which == "all":
        return {n: p for n, p in model.named_parameters() if p.is_floating_point()}
    word = {"attention": "Attention", "norms": "Norm"}[which]
    chosen = {}
    for prefix, module in model.named_modules():
        if word in type(module).__name__:
            chosen.update({f"{prefix}.{n}" if prefix else n: p for n, p in module.named_parameters()})
    if not chosen:
        raise InputError(f"recover.trainable {which!r}: this model has no {word} modules; use 'all'")
    return chosen


def snapshot(params: dict[str, nn.Parameter]) -> dict[str, torch.Tensor]:
    """A copy of the trainable weights in host memory (the best state, or the weights to save)."""
    return {n: p.detach().cpu().clone() for n, p in params.items()}


def zero_masks(parameters: dict[str, nn.Parameter]) -> dict[str, torch.Tensor]:
    """Where each pruned weight matrix is zero (what an unstructured or N:M heal must keep zero)."""
    return {n: p.detach() != 0 for n, p in parameters.items() if p.dim() >= 2 and bool((p == 0).any())}


def learning_rate(config: RecoverConfig, step: int) -> float:
    """Linear warmup, then constant or cosine decay to zero at ``config.steps``."""
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    if config.schedule == "constant":
        return config.learning_rate
    span = max(config.steps - config.warmup_steps, 1)
    return config.learning_rate * 0.5 * (1 + math.cos(math.pi * (step - config.warmup_steps) / span))


class TrainingState:
    """Saved progress of a heal in ``folder``: weights, AdamW moments, best state and history. Each save
    goes into a fresh ``step-N`` folder; ``progress.json``, written last and atomically, names it, so a
    crash mid-save leaves the previous save whole."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def exists(self) -> bool:
        return (self.folder / PROGRESS).is_file()

    def store(
        self,
        params: dict[str, nn.Parameter],
        optimizer: torch.optim.Optimizer,
        best: dict[str, torch.Tensor],
        report: RecoveryReport,
        bad: int,
    ) -> None:
        saved = f"step-{report.steps_run}"
        target = self.folder / saved
        target.mkdir(parents=True, exist_ok=True)
        names = {id(p): n for n, p in params.items()}
        moments = {}
        for p, values in optimizer.state.items():
            for key, value in values.items():
                moments[f"{names[id(p)]}/{key}"] = value.detach().cpu().contiguous()
        write_safetensors_file(target / WEIGHTS, snapshot(params))
        write_safetensors_file(target / OPTIMIZER, moments)
        write_safetensors_file(target / BEST, best)
        write_atomic(
            self.folder / PROGRESS, json.dumps({"saved": saved, "report": report.to_dict(), "bad": bad}) + "\n"
        )
        for old in self.folder.glob("step-*"):
            if old.name != saved and old.is_dir() and not old.is_symlink():
                shutil.rmtree(old)

    def load(
        self, params: dict[str, nn.Parameter], optimizer: torch.optim.Optimizer
    ) -> tuple[dict[str, torch.Tensor], RecoveryReport, int]:
        progress = read_json(self.folder / PROGRESS)
        saved = self.folder / str(progress.get("saved", ""))
        if not str(progress.get("saved", "")).startswith("step-") or saved.parent != self.folder:
            raise InputError(f"{self.folder / PROGRESS} names no saved step; pass `restart` to begin again")
        weights = load_file(saved / WEIGHTS)
        moments = load_file(saved / OPTIMIZER)
        best = load_file(saved / BEST)
        if set(weights) != set(params) or set(best) != set(params):
            raise InputError(f"{self.folder}: saved progress of other trainable weights; pass `restart`")
        grouped: dict[str, dict[str, torch.Tensor]] = {}
        for key, value in moments.items():
            name, part = key.split("/", 1)
            grouped.setdefault(name, {})[part] = value
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(weights[name])
                if name in grouped:
                    optimizer.state[p] = {k: v.to(p.device) for k, v in grouped[name].items()}
        data = {k: v for k, v in progress["report"].items() if k != "rejected"}
        data["validation"] = [tuple(v) for v in data["validation"]]
        data["training_loss"] = [tuple(v) for v in data["training_loss"]]
        return best, RecoveryReport(**data), int(progress["bad"])


def validation_loss(
    model: nn.Module,
    cache: TeacherCache,
    rows: list[int],
    config: RecoverConfig,
    accelerator: Accelerator,
) -> float:
    """Mean squared error to the teacher over the validation rows (same rows, same order, every time)."""
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad(), accelerator.autocast():
        for kwargs, target in cache.batches(rows, config.batch_size, accelerator.device, torch.float32):
            out = model(**kwargs)[0].float()
            total += float(((out - target) ** 2).sum())
            count += target.numel()
    model.train()
    return total / max(count, 1)


def optimizer_step(
    wrapped: nn.Module,
    optimizer: Any,
    accelerator: Accelerator,
    cache: TeacherCache,
    rows: list[int],
    config: RecoverConfig,
    params: dict[str, nn.Parameter],
    masks: dict[str, torch.Tensor],
    step: int,
) -> float:
    """One optimizer step over ``gradient_accumulation`` batches of rows drawn from ``seed + step``, pruned
    weights' gradients masked, gradients clipped; returns the mean loss of its batches."""
    size = config.batch_size
    drawn = torch.randint(
        len(rows), (size * config.gradient_accumulation,), generator=torch.Generator().manual_seed(config.seed + step)
    )
    total = 0.0
    for micro in range(config.gradient_accumulation):
        chosen = [rows[i] for i in drawn[micro * size : (micro + 1) * size].tolist()]
        with accelerator.accumulate(wrapped):
            kwargs, target = cache.batch(chosen, accelerator.device, torch.float32)
            with accelerator.autocast():
                out = wrapped(**kwargs)[0]
            loss = ((out.float() - target) ** 2).mean()
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                for name, mask in masks.items():
                    params[name].grad.mul_(mask)
                if config.max_grad_norm is not None:
                    accelerator.clip_grad_norm_(list(params.values()), config.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        total += float(loss.detach())
    with torch.no_grad():
        for name, mask in masks.items():
            params[name].masked_fill_(~mask, 0.0)
    return total / config.gradient_accumulation


def restore_best(
    model: nn.Module, params: dict[str, nn.Parameter], best: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]
) -> None:
    """Put the kept state back, freeze the model, and check that every pruned zero is still zero, bit for bit."""
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(best[name].to(p.device))
    model.requires_grad_(False)
    for name, mask in masks.items():
        if not torch.equal(params[name] != 0, mask):
            raise RuntimeError(f"recovery changed the zero pattern of {name}; this is a bug, please report it")


def distill(
    model: nn.Module,
    cache: TeacherCache,
    config: RecoverConfig,
    *,
    train_rows: list[int],
    validation_rows: list[int],
    keep_zeros: bool = True,
    state: TrainingState | None = None,
    resume: bool = False,
    progress: Progress | None = None,
) -> RecoveryReport:
    """Fit ``model`` (fp32 weights, any device) to the teacher's predictions; it ends holding the best state.
    ``keep_zeros``: every weight matrix's zeros stay zero (the pruned weights of unstructured and N:M checkpoints;
    off for structured ones, whose removed units are gone from the shapes and whose zeros are the model's own)."""
    if not train_rows or not validation_rows:
        raise InputError("the teacher cache has no training or no validation rows; record more prompts")
    accelerator = Accelerator(
        cpu=next(model.parameters()).device.type == "cpu",
        mixed_precision=config.mixed_precision,
        gradient_accumulation_steps=config.gradient_accumulation,
    )
    params = trainable_parameters(model, config.trainable)
    masks = zero_masks(params) if keep_zeros else {}
    model.requires_grad_(False)
    for p in params.values():
        p.requires_grad_(True)
    if config.gradient_checkpointing and hasattr(model, "enable_gradient_checkpointing"):
        model.enable_gradient_checkpointing()
    optimizer = torch.optim.AdamW(list(params.values()), lr=config.learning_rate, weight_decay=config.weight_decay)
    report = RecoveryReport(trainable_parameters=sum(p.numel() for p in params.values()))
    bad = 0
    if resume and state is not None and state.exists():
        best, report, bad = state.load(params, optimizer)
    wrapped, optimizer = accelerator.prepare(model, optimizer)
    if report.steps_run == 0:
        report.one_shot_validation = report.best_validation = validation_loss(
            wrapped, cache, validation_rows, config, accelerator
        )
        report.validation.append((0, report.one_shot_validation))
        best = snapshot(params)
    started = time.perf_counter()
    running, seen = 0.0, 0
    wrapped.train()
    for step in range(report.steps_run, config.steps):
        if bad >= config.patience:
            report.stopped_early = True
            break
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(config, step)
        running += optimizer_step(wrapped, optimizer, accelerator, cache, train_rows, config, params, masks, step)
        seen += 1
        report.steps_run = step + 1
        last = None
        if report.steps_run % config.validate_every == 0 or report.steps_run == config.steps:
            report.training_loss.append((report.steps_run, running / max(seen, 1)))
            running, seen = 0.0, 0
            last = validation_loss(wrapped, cache, validation_rows, config, accelerator)
            report.validation.append((report.steps_run, last))
            if last < report.best_validation:
                report.best_validation, report.kept_step, bad = last, report.steps_run, 0
                best = snapshot(params)
            else:
                bad += 1
        if state is not None and accelerator.is_main_process and report.steps_run % config.save_every == 0:
            state.store(params, optimizer.optimizer, best, report, bad)
        if progress is not None:
            progress(report.steps_run, config.steps, last)
    report.seconds["train"] = report.seconds.get("train", 0.0) + time.perf_counter() - started
    restore_best(model, params, best, masks)
    if config.gradient_checkpointing and hasattr(model, "disable_gradient_checkpointing"):
        model.disable_gradient_checkpointing()
    accelerator.free_memory()
    return report
