"""One pass of sampling that records the teacher's data (see :mod:`.cache`).

``student`` trajectories (the default): the pruned model samples, and at every one of its calls the
dense model predicts on the very same inputs; those inputs are where the pruned model goes when it
samples, which the dense model's own trajectories stop covering once the pruned model drifts.
``teacher`` trajectories: the dense model samples and labels its own calls. Either way the sampling is
the calibration's (prompts encoded once, the pipeline's own loop, prompt ``i`` with seed ``seed + i``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from ..architectures.components import denoiser_name
from ..pruning.calibration import PipelineCalibration
from ..pruning.config import CalibrationConfig
from .cache import Recorder


def record_teacher(
    pipeline: Any,
    teacher: nn.Module,
    calibration: CalibrationConfig,
    prompts: list[str],
    folder: Path,
    *,
    identity: str,
    trajectories: Literal["student", "teacher"],
    device: torch.device,
    dtype: torch.dtype,
    max_bytes: int,
) -> None:
    """Sample ``prompts`` with ``pipeline`` (whose denoiser is the pruned student) and write every call's
    inputs with ``teacher``'s prediction for them into ``folder``."""
    name = denoiser_name(pipeline)
    student = getattr(pipeline, name)
    sampler = PipelineCalibration(pipeline, calibration, prompts, device, dtype)
    calls = len(sampler.batches) * calibration.steps * getattr(pipeline.scheduler, "order", 1)
    recorder = Recorder.for_model(student, folder, identity, max_bytes, calls)
    batch = [0]

    def prompt_ids() -> list[int]:
        return sampler.batches[batch[0]]

    def labelled(module: nn.Module, args: tuple, kwargs: dict) -> None:
        target = teacher(*args, **{**kwargs, "return_dict": False})[0]
        recorder.add(args, kwargs, target, prompt_ids())

    def own(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        recorder.add(args, kwargs, output[0] if isinstance(output, tuple) else output.sample, prompt_ids())

    def next_batch() -> None:
        batch[0] += 1

    teacher.to(device=device, dtype=dtype).eval()
    sampling = student if trajectories == "student" else teacher
    if sampling is not student:
        pipeline.register_modules(**{name: teacher})
    handle = (
        student.register_forward_pre_hook(labelled, with_kwargs=True)
        if trajectories == "student"
        else teacher.register_forward_hook(own, with_kwargs=True)
    )
    try:
        sampler(sampling, lambda step: None, on_batch=next_batch)
    finally:
        handle.remove()
        if sampling is not student:
            pipeline.register_modules(**{name: student})
        sampler.restore_devices()
    recorder.finish()
