"""Fidelity to the dense model: PSNR of each pruned image against the dense image of the same prompt and seed."""

from __future__ import annotations

import math

import numpy as np

from .base import MetricRow, Samples, as_array, bootstrap


def psnr_vs_dense(samples: Samples) -> list[MetricRow]:
    """PSNR (dB, 8-bit images) from the mean squared error over all images."""
    mse = ((as_array(samples.pruned) - as_array(samples.dense)) ** 2).reshape(len(samples.prompts), -1).mean(1)

    def psnr(idx: np.ndarray) -> float:
        mean = float(mse[idx].mean())
        return 10 * math.log10(255.0**2 / mean) if mean > 0 else math.inf

    every = np.arange(len(mse))
    return [
        MetricRow("psnr_vs_dense", "PSNR vs dense images (dB)", psnr(every), None, bootstrap(psnr, len(mse)), len(mse))
    ]
