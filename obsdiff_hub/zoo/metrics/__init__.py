"""Quality metrics of a pruned checkpoint next to its dense base, one module each: ``fidelity``
(PSNR vs dense), ``shapes`` (caption accuracy on the embedded model), ``clip`` (CLIP score),
``fid`` (Fréchet distance, exact), ``imagereward``. Each takes :class:`Samples` and returns
:class:`MetricRow` s with a bootstrap 95% interval; :func:`check_metrics` proves they can run
before any image is sampled."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from ...errors import InputError
from ..recipes import EvaluationSpec
from .base import MetricRow, Samples
from .clip import clip_model, clip_score
from .fid import fid, frechet_distance
from .fidelity import psnr_vs_dense
from .imagereward import image_reward
from .optional import require
from .shapes import check_shapes_prompts, shapes_accuracy

METRICS: dict[str, Callable[[Samples, EvaluationSpec], list[MetricRow]]] = {
    "psnr": lambda samples, spec: psnr_vs_dense(samples),
    "shapes": lambda samples, spec: shapes_accuracy(samples),
    "clip": clip_score,
    "fid": fid,
    "imagereward": image_reward,
}


def check_metrics(spec: EvaluationSpec, prompts: list[str]) -> None:
    """Fail before any image is sampled if a metric cannot run: a missing optional package, a
    CLIP model that cannot be loaded, a reference folder that does not exist, prompts the
    shapes scorer cannot read."""
    unknown = [m for m in spec.metrics if m not in METRICS]
    if unknown:
        raise InputError(f"unknown metric {unknown[0]!r}; available: {', '.join(METRICS)}")
    if "shapes" in spec.metrics:
        try:
            check_shapes_prompts(prompts)
        except InputError as error:
            raise InputError(
                f"the shapes metric scores shapes captions only ({error}); use `prompts` builtin:shapes"
            ) from None
    if spec.reference and not Path(spec.reference).is_dir():
        raise InputError(f"reference folder {spec.reference} does not exist")
    if "fid" in spec.metrics and spec.fid_features == "inception":
        require("torch_fidelity")
    if "imagereward" in spec.metrics:
        require("ImageReward")
    if "clip" in spec.metrics or ("fid" in spec.metrics and spec.fid_features == "clip"):
        clip_model(spec)


__all__ = ["METRICS", "MetricRow", "Samples", "check_metrics", "frechet_distance"]
