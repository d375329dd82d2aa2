"""Caption accuracy on the embedded shapes model: does the shipped scorer see the shape, colour and size the
caption asks for?"""

from __future__ import annotations

import numpy as np
import torch

from ...shapes.dataset import ATTRIBUTES, SCORED_ATTRIBUTES, Scene
from ...shapes.pipeline import load_scorer
from .base import MetricRow, Samples, as_array, bootstrap

ROWS = (
    ("caption_accuracy", "caption accuracy (shape, colour and size all right)"),
    ("attribute_accuracy", "caption accuracy (mean of attributes)"),
)


def check_shapes_prompts(prompts: list[str]) -> None:
    """Raise (naming the first) unless every prompt is a shapes caption the scorer can read."""
    for prompt in prompts:
        Scene.from_caption(prompt)


def shapes_accuracy(samples: Samples) -> list[MetricRow]:
    """Per image: all scored attributes right (caption accuracy), and the fraction right; both models."""
    scenes = [Scene.from_caption(p) for p in samples.prompts]
    scorer = load_scorer()
    labels = {k: torch.tensor([s.labels()[k] for s in scenes]) for k in ATTRIBUTES}
    per_image: dict[str, dict[str, np.ndarray]] = {}
    for which, images in (("dense", samples.dense), ("pruned", samples.pruned)):
        x = torch.from_numpy(as_array(images)).float().permute(0, 3, 1, 2) / 127.5 - 1
        with torch.no_grad():
            logits = scorer(x)
        hits = torch.stack([logits[k].argmax(-1) == labels[k] for k in SCORED_ATTRIBUTES]).numpy()
        per_image[which] = {"caption_accuracy": hits.all(0).astype(float), "attribute_accuracy": hits.mean(0)}
    rows = []
    for name, label in ROWS:
        pruned = per_image["pruned"][name]
        interval = bootstrap(lambda idx, v=pruned: float(v[idx].mean()), len(pruned))
        rows.append(
            MetricRow(name, label, float(pruned.mean()), float(per_image["dense"][name].mean()), interval, len(pruned))
        )
    return rows
