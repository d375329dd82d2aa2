"""A small CNN that reads shape, colour, size and position back from an image (the scorer)."""

from __future__ import annotations

import torch
from torch import nn

from .dataset import ATTRIBUTES, SCORED_ATTRIBUTES


class ShapeClassifier(nn.Module):
    """Four heads over a shared conv trunk; trained on the same procedural data."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1),
            nn.SiLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.SiLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(64, 64, 3, padding=1),
            nn.SiLU(),
            nn.Flatten(),
            nn.Linear(64 * 8 * 8, 128),
            nn.SiLU(),
        )
        self.heads = nn.ModuleDict({k: nn.Linear(128, len(v)) for k, v in ATTRIBUTES.items()})

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.trunk(images)
        return {k: head(features) for k, head in self.heads.items()}


def caption_accuracy(
    classifier: ShapeClassifier,
    images: torch.Tensor,
    labels: dict[str, torch.Tensor],
    scored: tuple[str, ...] = SCORED_ATTRIBUTES,
) -> dict[str, float]:
    """Per-attribute accuracy of the classifier against the captions' attributes, plus
    ``all`` (every scored attribute right) and ``mean`` (over the scored attributes)."""
    with torch.no_grad():
        logits = classifier(images)
    hits = {k: (logits[k].argmax(-1) == labels[k]) for k in ATTRIBUTES}
    scores = {k: float(v.float().mean()) for k, v in hits.items()}
    scores["all"] = float(torch.stack([hits[k] for k in scored]).all(0).float().mean())
    scores["mean"] = sum(scores[k] for k in scored) / len(scored)
    return scores
