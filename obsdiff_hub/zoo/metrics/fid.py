"""FID: the Fréchet distance of Inception-v3 pool features (torch-fidelity's FID-compatible network,
optional) or of CLIP image embeddings, pruned to dense images and to a reference folder."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ...errors import InputError
from ...storage.files import checkpoint_files
from ..recipes import EvaluationSpec
from ..sampling import read_image
from .base import MetricRow, Samples, as_array, bootstrap
from .clip import clip_embeddings
from .optional import require

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (rows are samples).

    ``‖μa−μb‖² + tr Σa + tr Σb − 2 tr (Σa Σb)^½``. With ``Σa = AᵀA``, ``Σb = BᵀB`` (centred,
    scaled rows), the non-zero eigenvalues of ``Σa Σb`` are the squared singular values of
    ``A Bᵀ``, so the trace term is their sum: exact, real, and an n×n problem instead of d×d.
    """
    a, b = a.astype(np.float64), b.astype(np.float64)
    A = (a - a.mean(0)) / math.sqrt(max(len(a) - 1, 1))
    B = (b - b.mean(0)) / math.sqrt(max(len(b) - 1, 1))
    cross = A @ B.T if min(len(a), len(b)) <= a.shape[1] else None
    if cross is not None:
        trace_sqrt = float(np.linalg.svd(cross, compute_uv=False).sum())
    else:  # more samples than dimensions: the d×d route, Σa^½ Σb Σa^½
        values, vectors = np.linalg.eigh(A.T @ A)
        root = (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T
        trace_sqrt = float(np.sqrt(np.clip(np.linalg.eigvalsh(root @ (B.T @ B) @ root), 0, None)).sum())
    return float(((a.mean(0) - b.mean(0)) ** 2).sum() + (A**2).sum() + (B**2).sum() - 2 * trace_sqrt)


def fid_features(images: list[Image.Image], spec: EvaluationSpec) -> tuple[np.ndarray, str]:
    """Features FID is computed on: torch-fidelity's Inception-v3 (2048-d pool), or CLIP image embeddings."""
    if spec.fid_features == "clip":
        features, _, name = clip_embeddings(images, None, spec)
        return features, f"CLIP image embeddings ({name})"
    require("torch_fidelity")
    from torch_fidelity.feature_extractor_inceptionv3 import (
        FeatureExtractorInceptionV3,  # optional: the [eval] extra
    )

    extractor = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"]).eval()
    rows = []
    with torch.inference_mode():
        for start in range(0, len(images), spec.batch_size):
            batch = torch.from_numpy(as_array(images[start : start + spec.batch_size]).astype(np.uint8)).permute(
                0, 3, 1, 2
            )
            rows.append(extractor(batch)[0])
    return torch.cat(rows).double().numpy(), "Inception-v3 pool3 (torch-fidelity inception-v3-compat)"


def reference_images(folder: str) -> list[Image.Image]:
    """The images of a reference folder (png, jpg, webp), sorted by name."""
    paths = [p for p in checkpoint_files(Path(folder), recursive=False) if p.suffix.lower() in IMAGE_SUFFIXES]
    if not paths:
        raise InputError(f"reference folder {folder} holds no png/jpg/webp images")
    return [read_image(p) for p in paths]


def fid(samples: Samples, spec: EvaluationSpec) -> list[MetricRow]:
    """FID of the pruned images to the dense images (and to ``spec.reference`` images, for both models)."""
    dense, name = fid_features(samples.dense, spec)
    pruned, _ = fid_features(samples.pruned, spec)
    count = len(pruned)

    def paired(idx: np.ndarray) -> float:
        return frechet_distance(pruned[idx], dense[idx])

    rows = [
        MetricRow(
            "fid_vs_dense",
            f"FID to the dense images ({name})",
            paired(np.arange(count)),
            0.0,
            bootstrap(paired, count),
            count,
        )
    ]
    if spec.reference:
        reference, _ = fid_features(reference_images(spec.reference), spec)
        interval = bootstrap(lambda idx: frechet_distance(pruned[idx], reference), count)
        label = f"FID to {Path(spec.reference).name} ({name})"
        rows.append(
            MetricRow(
                "fid_vs_reference",
                label,
                frechet_distance(pruned, reference),
                frechet_distance(dense, reference),
                interval,
                count,
            )
        )
    return rows
