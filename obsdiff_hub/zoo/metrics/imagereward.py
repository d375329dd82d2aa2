"""ImageReward-v1.0, the paper's preference metric, from its authors' optional ``image-reward`` package."""

from __future__ import annotations

import numpy as np
import torch

from ..recipes import EvaluationSpec
from .base import MetricRow, Samples, bootstrap
from .optional import require


def image_reward(samples: Samples, spec: EvaluationSpec) -> list[MetricRow]:
    """Mean ImageReward of both models' images for their prompts."""
    require("ImageReward")
    import ImageReward  # optional: the [imagereward] extra

    model = ImageReward.load("ImageReward-v1.0")
    scores = {}
    with torch.inference_mode():
        for which, images in (("dense", samples.dense), ("pruned", samples.pruned)):
            scores[which] = np.array([float(model.score(p, [i])) for p, i in zip(samples.prompts, images)])
    pruned = scores["pruned"]
    interval = bootstrap(lambda idx: float(pruned[idx].mean()), len(pruned))
    return [
        MetricRow(
            "image_reward",
            "ImageReward (ImageReward-v1.0)",
            float(pruned.mean()),
            float(scores["dense"].mean()),
            interval,
            len(pruned),
        )
    ]
