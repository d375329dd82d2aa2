"""Quality of a pruned checkpoint next to its dense base: the same prompts, the same seeds.

Images are generated once per (model, prompts, settings) and cached as PNGs under a key of
the model's fingerprint (sha256 of its files), the prompts and the settings, so evaluating
another metric, or the same base against another checkpoint, reuses them. Every number in
``eval.json`` carries its sample count and a bootstrap 95% interval (1000 resamples of the
images, seed 0).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

from .._version import __version__
from .recipes import EvaluationSpec
from .sampling import default_device, generate_images, image_grid

EVAL_FILE = "eval.json"
GRID_FILE = "samples.png"
BOOTSTRAP = 1000


def cache_root() -> Path:
    """``$OBSDIFF_HUB_CACHE`` or ``~/.cache/obsdiff-hub`` (images of earlier evaluations)."""
    return Path(os.environ.get("OBSDIFF_HUB_CACHE") or Path.home() / ".cache" / "obsdiff-hub")


def eval_prompts(spec: EvaluationSpec, folder: Path | None = None) -> list[str]:
    """``spec.num`` prompts: ``builtin:captions``, ``builtin:shapes`` (the shapes model's fixed
    evaluation scenes) or a prompt file. ``folder``: the recipe's folder when a recipe named
    the file (it must lie inside); None when the user gave the path directly."""
    from ..pruning.prompts import builtin_prompts, contained_path, read_prompt_file

    if spec.prompts == "builtin:shapes":
        from ..shapes.dataset import evaluation_scenes

        prompts = [s.caption for s in evaluation_scenes(spec.num)]
    elif spec.prompts.startswith("builtin:"):
        prompts = builtin_prompts(spec.prompts.removeprefix("builtin:"))
    else:
        prompts = read_prompt_file(contained_path(spec.prompts, folder) if folder is not None else spec.prompts)
    return [prompts[i % len(prompts)] for i in range(spec.num)]


def fingerprint(source: str) -> str:
    """Identity of a model for the image cache: sha256 over its files' names, sizes and hashes."""
    from ..checkpoints.loading import resolve_source
    from ..checkpoints.manifest import sha256_file

    if source.startswith("builtin:"):
        return hashlib.sha256(f"{source}:{__version__}".encode()).hexdigest()
    folder = resolve_source(source)
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in (".safetensors", ".json")):
        if any(part.startswith(".") for part in path.relative_to(folder).parts) or path.name == EVAL_FILE:
            continue
        digest.update(f"{path.relative_to(folder).as_posix()}:{sha256_file(path)}\n".encode())
    return digest.hexdigest()


def _settings(spec: EvaluationSpec) -> dict[str, Any]:
    return {k: v for k, v in spec.model_dump().items() if k != "metrics"}


def cached_images(source: str, prompts: list[str], spec: EvaluationSpec, device: torch.device | None = None) -> list[Image.Image]:
    """The images of ``source`` for ``prompts`` (image i: seed + i), from the cache or generated."""
    key = hashlib.sha256(json.dumps([fingerprint(source), prompts, _settings(spec)]).encode()).hexdigest()
    folder = cache_root() / "images" / key
    paths = [folder / f"{i:05d}.png" for i in range(len(prompts))]
    if all(p.is_file() for p in paths):
        return [Image.open(p).convert("RGB") for p in paths]
    images = generate_images(
        source, prompts, seed=spec.seed, steps=spec.steps, guidance=spec.guidance_scale, resolution=spec.resolution,
        device=str(device or default_device()), batch_size=spec.batch_size,
    )
    folder.mkdir(parents=True, exist_ok=True)
    for image, path in zip(images, paths):
        tmp = path.with_suffix(".tmp")
        image.save(tmp, format="PNG")
        tmp.replace(path)
    return images


def as_array(images: list[Image.Image]) -> np.ndarray:
    """[N, H, W, 3] float64 in 0..255."""
    return np.stack([np.asarray(i.convert("RGB"), dtype=np.float64) for i in images])


def bootstrap(statistic: Callable[[np.ndarray], float], count: int) -> tuple[float, float]:
    """95% percentile interval of ``statistic(indices)`` over resampled image indices."""
    rng = np.random.default_rng(0)
    values = [statistic(rng.integers(0, count, count)) for _ in range(BOOTSTRAP)]
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return (math.inf, math.inf)
    return float(np.percentile(finite, 2.5)), float(np.percentile(finite, 97.5))


@dataclass
class Samples:
    """What every metric may read: prompts and both models' images (same seeds)."""

    prompts: list[str]
    dense: list[Image.Image]
    pruned: list[Image.Image]


def psnr_vs_dense(samples: Samples) -> list[dict[str, Any]]:
    """Fidelity to the dense model: PSNR (dB, 8-bit images) of the pruned image against the dense
    image for the same prompt and seed, from the mean squared error over all images."""
    mse = ((as_array(samples.pruned) - as_array(samples.dense)) ** 2).reshape(len(samples.prompts), -1).mean(1)

    def psnr(idx: np.ndarray) -> float:
        mean = float(mse[idx].mean())
        return 10 * math.log10(255.0**2 / mean) if mean > 0 else math.inf

    every = np.arange(len(mse))
    return [{"name": "psnr_vs_dense", "label": "PSNR vs dense images (dB)", "pruned": psnr(every), "dense": None, "ci95": bootstrap(psnr, len(mse))}]


def shapes_accuracy(samples: Samples) -> list[dict[str, Any]]:
    """The shapes model's shipped scorer: are shape, colour and size as the caption says?"""
    from ..shapes.dataset import ATTRIBUTES, SCORED_ATTRIBUTES, Scene
    from ..shapes.pipeline import load_scorer

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
    for name, label in (
        ("caption_accuracy", "caption accuracy (shape, colour and size all right)"),
        ("attribute_accuracy", "caption accuracy (mean of attributes)"),
    ):
        pruned = per_image["pruned"][name]
        rows.append({
            "name": name,
            "label": label,
            "pruned": float(pruned.mean()),
            "dense": float(per_image["dense"][name].mean()),
            "ci95": bootstrap(lambda idx, v=pruned: float(v[idx].mean()), len(pruned)),
        })
    return rows


METRICS: dict[str, Callable[[Samples], list[dict[str, Any]]]] = {
    "psnr": psnr_vs_dense,
    "shapes": shapes_accuracy,
}


def evaluate(
    model: str, base: str, spec: EvaluationSpec, *, device: torch.device | None = None, folder: Path | None = None
) -> tuple[dict[str, Any], Samples]:
    """Generate (or reuse) both models' images and compute ``spec.metrics``: the ``eval.json``
    record and the images. ``folder``: see :func:`eval_prompts`."""
    unknown = [m for m in spec.metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric {unknown[0]!r}; available: {', '.join(METRICS)}")
    prompts = eval_prompts(spec, folder)
    samples = Samples(prompts, cached_images(base, prompts, spec, device), cached_images(model, prompts, spec, device))
    rows = [row for metric in spec.metrics for row in METRICS[metric](samples)]
    for row in rows:
        row["samples"] = len(prompts)
    return {
        "obsdiff_hub_version": __version__,
        "model": model,
        "base": base,
        "settings": {**_settings(spec), "prompts_sha256": hashlib.sha256("\n".join(prompts).encode()).hexdigest()},
        "metrics": rows,
        "grid": GRID_FILE,
    }, samples


def evaluate_checkpoint(
    folder: Path, base: str, spec: EvaluationSpec, out_folder: Path, *, base_revision: str | None = None, prompt_folder: Path | None = None
) -> dict[str, Any]:
    """Evaluate the checkpoint in ``folder`` against ``base``; write ``eval.json`` and the
    captioned grid (dense row on top, pruned below, at most 8 columns) into ``out_folder``."""
    record, samples = evaluate(str(folder), base, spec, folder=prompt_folder)
    record["model"] = "this checkpoint"
    record["base_revision"] = base_revision
    columns = min(8, len(samples.prompts))
    scale = max(1, 128 // samples.dense[0].width)
    grow = (lambda im: im.resize((im.width * scale, im.height * scale), resample=Image.NEAREST))
    grid = image_grid(
        [[grow(i) for i in samples.dense[:columns]], [grow(i) for i in samples.pruned[:columns]]],
        captions=samples.prompts[:columns],
        row_labels=["dense", "pruned"],
    )
    grid.save(out_folder / GRID_FILE)
    (out_folder / EVAL_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return record
