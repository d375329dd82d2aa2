"""``recover``: heal a pruned pipeline's denoiser from the dense one, in the library (no files but its work folder)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from ..architectures.components import denoiser_of
from ..errors import InputError
from ..models import PROVENANCE_KEY
from ..pruning.config import CalibrationConfig, PromptSource
from ..pruning.precision import default_compute_dtype, floating_dtype
from ..pruning.prompts import counted_prompts, prompts_sha256, source_prompts
from .cache import TeacherCache, cache_identity
from .config import RecoverConfig
from .recording import record_teacher
from .training import Progress, RecoveryReport, TrainingState, distill

CACHE_FOLDER = "teacher"
TRAINING_FOLDER = "training"


def recovery_prompts(config: RecoverConfig, exclude: Sequence[str] = (), folder: Path | None = None) -> list[str]:
    """The recovery's prompts, with every prompt of ``exclude`` (the evaluation's) left out; the last
    ``config.validation_prompts`` of them are the validation prompts."""
    excluded = set(exclude)
    every = source_prompts(config.prompts, folder)
    counted_prompts(config.prompts, every)  # a pinned sha256 names the source's first count prompts
    texts = list(dict.fromkeys(t for t in every if t not in excluded))  # each prompt once
    if len(texts) < config.prompts.count:
        raise InputError(
            f"recover.prompts gives {len(texts)} distinct prompts outside the evaluation's, fewer than "
            f"recover.prompts.count ({config.prompts.count}); lower the count or give more prompts"
        )
    return texts[: config.prompts.count]


def sampling_settings(config: RecoverConfig, calibration: CalibrationConfig, prompts: list[str]) -> CalibrationConfig:
    """The calibration's sampling, with the recovery's prompts (each ``samples_per_prompt`` times: trajectory
    ``j·n + i`` is prompt ``i`` with seed ``seed + j·n + i``), and steps and guidance where set."""
    repeated = prompts * config.samples_per_prompt
    return calibration.model_copy(
        update={
            "prompts": PromptSource(source="inline", texts=repeated, count=len(repeated)),
            "seed": config.seed,
            "steps": config.trajectory_steps or calibration.steps,
            "guidance_scale": calibration.guidance_scale if config.guidance_scale is None else config.guidance_scale,
        }
    )


def recover(
    pipeline: Any,
    teacher: nn.Module,
    config: RecoverConfig | dict[str, Any] | None = None,
    *,
    calibration: CalibrationConfig | dict[str, Any] | None = None,
    work: str | Path,
    device: torch.device | str | None = None,
    exclude_prompts: Sequence[str] = (),
    identity: str = "",
    resume: bool = False,
    progress: Progress | None = None,
) -> RecoveryReport:
    """Heal ``pipeline``'s (pruned) denoiser in place by distillation from ``teacher``, the dense denoiser.

    ``calibration``: how trajectories are sampled (resolution, scheduler, ...), as for pruning; the
    recovery's own prompts, seeds, steps and guidance replace the calibration's. ``work``: a folder for
    the teacher cache and the saved progress. ``exclude_prompts``: prompts kept out of the recovery (the
    evaluation's). ``identity``: names the run the cache belongs to (a cache of another is refused).
    ``resume``: continue from the cache and progress in ``work``. The teacher is only used while the
    cache is recorded; the student ends in its own dtype, holding the best state validation found. The zeros
    of an unstructured or N:M result (any denoiser but a structured one, by its provenance) stay zero.
    """
    config = RecoverConfig.coerce(config)
    calibration = CalibrationConfig.coerce(calibration)
    student = denoiser_of(pipeline)
    checkpoint_dtype = floating_dtype(student)
    run_device = torch.device(device) if device is not None else next(student.parameters()).device
    prompts = recovery_prompts(config, exclude_prompts)
    sampling = sampling_settings(config, calibration, prompts)
    work = Path(work)
    identity = cache_identity(
        run=identity,
        settings=config.model_dump(mode="json", exclude={"steps", "save_every", "patience", "validate_every"}),
        sampling=sampling.model_dump(mode="json", exclude={"prompts"}),
        prompts=prompts_sha256(prompts),
    )
    report_seconds = {}
    if not (resume and (work / CACHE_FOLDER / "cache.json").is_file()):
        start = time.perf_counter()
        compute = default_compute_dtype(checkpoint_dtype, run_device)
        student.to(device=run_device, dtype=compute)
        record_teacher(
            pipeline,
            teacher,
            sampling,
            list(sampling.prompts.texts or []),
            work / CACHE_FOLDER,
            identity=identity,
            trajectories=config.trajectories,
            device=run_device,
            dtype=compute,
            max_bytes=int(config.cache_max_gb * 1e9),
        )
        report_seconds["record"] = time.perf_counter() - start
    teacher.to("cpu")  # not resident while the student trains
    cache = TeacherCache(work / CACHE_FOLDER, identity)
    trajectories = len(prompts) * config.samples_per_prompt
    held_out = {t for t in range(trajectories) if t % len(prompts) >= len(prompts) - config.validation_prompts}
    validation_rows = cache.rows_of(held_out)
    train_rows = cache.rows_of(set(range(trajectories)) - held_out)
    student.to(device=run_device, dtype=torch.float32)
    try:
        report = distill(
            student,
            cache,
            config,
            train_rows=train_rows,
            validation_rows=validation_rows,
            keep_zeros=student.config.get(PROVENANCE_KEY, {}).get("granularity") != "structured",
            state=TrainingState(work / TRAINING_FOLDER),
            resume=resume,
            progress=progress,
        )
    finally:
        student.to(dtype=checkpoint_dtype).eval()
    report.rows = {"train": len(train_rows), "validation": len(validation_rows)}
    report.seconds.update(report_seconds)
    return report
