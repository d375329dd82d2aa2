"""What every metric reads and returns: both models' images for the same prompts and seeds, and
rows with a value, a bootstrap 95% interval and the sample count."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Callable

import numpy as np
from PIL import Image

BOOTSTRAP = 1000


@dataclass
class Samples:
    """Prompts and both models' images (image i of each with seed + i)."""

    prompts: list[str]
    dense: list[Image.Image]
    pruned: list[Image.Image]


@dataclass
class MetricRow:
    """One measured number: the pruned model's value, the dense model's (None where it has no
    meaning, e.g. PSNR against itself), a 95% interval of the pruned value, and how many images."""

    name: str
    label: str
    pruned: float
    dense: float | None
    ci95: tuple[float, float]
    samples: int
    model: str | None = None  # the metric's own model (CLIP), where it has one

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        model = data.pop("model")
        return {
            "name": self.name,
            "label": self.label,
            **({"model": model} if model is not None else {}),
            **{k: data[k] for k in ("pruned", "dense", "ci95", "samples")},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MetricRow:
        """A row read back from ``eval.json``; values that are not finite numbers are a ``ValueError``."""
        ci95 = tuple(data["ci95"])
        numbers = [data["pruned"], *ci95, *([data["dense"]] if data.get("dense") is not None else [])]
        if len(ci95) != 2 or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in numbers
        ):
            raise ValueError(
                f"metric {str(data.get('name'))[:40]!r}: values and its 95% interval must be finite numbers"
            )
        return cls(
            str(data["name"]),
            str(data["label"]),
            float(data["pruned"]),
            data.get("dense"),
            (float(ci95[0]), float(ci95[1])),
            int(data["samples"]),
            data.get("model"),
        )


def as_array(images: list[Image.Image]) -> np.ndarray:
    """[N, H, W, 3] float64 in 0..255."""
    return np.stack([np.asarray(i.convert("RGB"), dtype=np.float64) for i in images])


def bootstrap(statistic: Callable[[np.ndarray], float], count: int) -> tuple[float, float]:
    """95% percentile interval of ``statistic(indices)`` over resampled image indices (1000 resamples, seed 0)."""
    rng = np.random.default_rng(0)
    values = [statistic(rng.integers(0, count, count)) for _ in range(BOOTSTRAP)]
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return (math.inf, math.inf)
    return float(np.percentile(finite, 2.5)), float(np.percentile(finite, 97.5))
