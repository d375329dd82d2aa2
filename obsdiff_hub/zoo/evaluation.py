"""Quality of a pruned checkpoint next to its dense base: the same prompts, the same seeds.

Images are generated once per (model, prompts, settings) and cached as PNGs under a key of
the model's fingerprint (sha256 of its files), the prompts and the settings, so evaluating
another metric, or the same base against another checkpoint, reuses them. Every number in
``eval.json`` carries its sample count and a bootstrap 95% interval (1000 resamples of the
images, seed 0).

Metrics: ``psnr`` (fidelity to the dense images), ``clip`` (CLIP score, OpenAI CLIP
ViT-B/16 through transformers, pinned revision: ``100·max(cos(image, prompt), 0)``), ``fid``
(Fréchet distance of Inception-v3 pool features, torch-fidelity's FID-compatible network,
to the dense images and to a reference folder when given; ``fid_features: clip`` uses CLIP
image embeddings instead), ``imagereward`` (the ``image-reward`` package, optional) and
``shapes`` (the shipped scorer of the embedded model). Metric models download from the Hub
like any model; settings name them so tests can use small local ones.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import io
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
    """What changes the images (the cache key): not the metrics or their models."""
    return {k: v for k, v in spec.model_dump().items() if k in ("prompts", "num", "steps", "guidance_scale", "resolution", "seed", "batch_size")}


def cached_images(
    source: str, prompts: list[str], spec: EvaluationSpec, device: torch.device | None = None, on_image: Callable[[int], None] | None = None
) -> list[Image.Image]:
    """The images of ``source`` for ``prompts`` (image i: seed + i), from the cache or generated."""
    key = hashlib.sha256(json.dumps([fingerprint(source), prompts, _settings(spec)]).encode()).hexdigest()
    folder = cache_root() / "images" / key
    paths = [folder / f"{i:05d}.png" for i in range(len(prompts))]
    if all(p.is_file() for p in paths):
        return [Image.open(p).convert("RGB") for p in paths]
    images = generate_images(
        source, prompts, seed=spec.seed, steps=spec.steps, guidance=spec.guidance_scale, resolution=spec.resolution,
        device=str(device or default_device()), batch_size=spec.batch_size, on_image=on_image,
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


CLIP_MODEL = ("openai/clip-vit-base-patch16", "57c216476eefef5ab752ec549e440a49ae4ae5f3")


def clip_model(spec: EvaluationSpec) -> tuple[Any, Any, str]:
    """The CLIP model and processor named by the spec (a Hub id at a pinned revision, or a local folder)."""
    source = spec.clip_model or CLIP_MODEL[0]
    return _load_clip(source, None if Path(source).is_dir() else (spec.clip_revision or CLIP_MODEL[1]))


@functools.lru_cache(maxsize=1)  # checked before sampling, then used for both models' images
def _load_clip(source: str, revision: str | None) -> tuple[Any, Any, str]:
    from transformers import CLIPModel, CLIPProcessor

    try:
        model = CLIPModel.from_pretrained(source, revision=revision).eval()
        processor = CLIPProcessor.from_pretrained(source, revision=revision)
    except OSError as error:
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise OSError(f"CLIP model {source} cannot be loaded ({reason}); give a local copy with --clip-model DIR, or leave clip out of --metrics") from None
    return model, processor, f"{source}@{revision}" if revision else source


OPTIONAL = {  # optional packages some metrics import, and how to get them
    "torch_fidelity": "FID with Inception features needs torch-fidelity: pip install 'obsdiff-hub[eval]' (or --fid-features clip)",
    "ImageReward": "the imagereward metric needs the image-reward package: pip install 'obsdiff-hub[imagereward]'",
}


def _require(module: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise ImportError(OPTIONAL[module])


def check_metrics(spec: EvaluationSpec, prompts: list[str]) -> None:
    """Fail before any image is sampled if a metric cannot run: a missing optional package, a
    CLIP model that cannot be loaded, a reference folder that does not exist, prompts the
    shapes scorer cannot read."""
    from ..shapes.dataset import Scene

    unknown = [m for m in spec.metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric {unknown[0]!r}; available: {', '.join(METRICS)}")
    if "shapes" in spec.metrics:
        try:
            for prompt in prompts:
                Scene.from_caption(prompt)
        except ValueError as error:
            raise ValueError(f"the shapes metric scores shapes captions only ({error}); use --prompts builtin:shapes") from None
    if spec.reference and not Path(spec.reference).is_dir():
        raise ValueError(f"reference folder {spec.reference} does not exist")
    if "fid" in spec.metrics and spec.fid_features == "inception":
        _require("torch_fidelity")
    if "imagereward" in spec.metrics:
        _require("ImageReward")
    if "clip" in spec.metrics or ("fid" in spec.metrics and spec.fid_features == "clip"):
        clip_model(spec)


def _features(output: Any) -> torch.Tensor:
    """Projected CLIP features: transformers 5 returns a model output (``pooler_output``), 4.x a tensor."""
    return output.pooler_output if hasattr(output, "pooler_output") else output


def _clip_embeddings(images: list[Image.Image], prompts: list[str] | None, spec: EvaluationSpec) -> tuple[np.ndarray, np.ndarray | None, str]:
    model, processor, name = clip_model(spec)
    image_features, text_features = [], []
    with torch.inference_mode():
        for start in range(0, len(images), spec.batch_size):
            batch = processor(images=images[start : start + spec.batch_size], return_tensors="pt")
            image_features.append(_features(model.get_image_features(pixel_values=batch["pixel_values"])))
            if prompts is not None:
                text = processor(text=prompts[start : start + spec.batch_size], return_tensors="pt", padding=True, truncation=True)
                text_features.append(_features(model.get_text_features(input_ids=text["input_ids"], attention_mask=text["attention_mask"])))
    features = torch.cat(image_features)
    texts = torch.cat(text_features) if prompts is not None else None
    return features.float().numpy(), None if texts is None else texts.float().numpy(), name


def clip_score(samples: Samples, spec: EvaluationSpec) -> list[dict[str, Any]]:
    """CLIP score ``100·max(cos(image, prompt), 0)`` per image, for both models."""
    scores = {}
    for which, images in (("dense", samples.dense), ("pruned", samples.pruned)):
        image, text, name = _clip_embeddings(images, samples.prompts, spec)
        cos = (image * text).sum(1) / (np.linalg.norm(image, axis=1) * np.linalg.norm(text, axis=1))
        scores[which] = 100 * np.clip(cos, 0, None)
    pruned = scores["pruned"]
    return [{
        "name": "clip_score", "label": f"CLIP score ({name.split('@')[0]})", "model": name,
        "pruned": float(pruned.mean()), "dense": float(scores["dense"].mean()),
        "ci95": bootstrap(lambda idx: float(pruned[idx].mean()), len(pruned)),
    }]


def fid_features(images: list[Image.Image], spec: EvaluationSpec) -> tuple[np.ndarray, str]:
    """Features FID is computed on: torch-fidelity's Inception-v3 (2048-d pool), or CLIP image embeddings."""
    if spec.fid_features == "clip":
        features, _, name = _clip_embeddings(images, None, spec)
        return features, f"CLIP image embeddings ({name})"
    _require("torch_fidelity")
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    extractor = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"]).eval()
    rows = []
    with torch.inference_mode():
        for start in range(0, len(images), spec.batch_size):
            batch = torch.from_numpy(as_array(images[start : start + spec.batch_size]).astype(np.uint8)).permute(0, 3, 1, 2)
            rows.append(extractor(batch)[0])
    return torch.cat(rows).double().numpy(), "Inception-v3 pool3 (torch-fidelity inception-v3-compat)"


def fid(samples: Samples, spec: EvaluationSpec) -> list[dict[str, Any]]:
    """FID of the pruned images to the dense images (and to ``spec.reference`` images, for both models)."""
    dense, name = fid_features(samples.dense, spec)
    pruned, _ = fid_features(samples.pruned, spec)
    count = len(pruned)

    def paired(idx: np.ndarray) -> float:
        return frechet_distance(pruned[idx], dense[idx])

    rows = [{"name": "fid_vs_dense", "label": f"FID to the dense images ({name})", "pruned": paired(np.arange(count)), "dense": 0.0, "ci95": bootstrap(paired, count)}]
    if spec.reference:
        reference, _ = fid_features(reference_images(spec.reference), spec)
        rows.append({
            "name": "fid_vs_reference", "label": f"FID to {Path(spec.reference).name} ({name})",
            "pruned": frechet_distance(pruned, reference), "dense": frechet_distance(dense, reference),
            "ci95": bootstrap(lambda idx: frechet_distance(pruned[idx], reference), count),
        })
    return rows


def reference_images(folder: str) -> list[Image.Image]:
    """The images of a reference folder (png, jpg, webp), sorted by name."""
    paths = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp"))
    if not paths:
        raise ValueError(f"reference folder {folder} holds no png/jpg/webp images")
    return [Image.open(p).convert("RGB") for p in paths]


def image_reward(samples: Samples, spec: EvaluationSpec) -> list[dict[str, Any]]:
    """ImageReward-v1.0 (the paper's preference metric), from the optional ``image-reward`` package."""
    _require("ImageReward")
    import ImageReward

    model = ImageReward.load("ImageReward-v1.0")
    scores = {}
    with torch.inference_mode():
        for which, images in (("dense", samples.dense), ("pruned", samples.pruned)):
            scores[which] = np.array([float(model.score(p, [i])) for p, i in zip(samples.prompts, images)])
    pruned = scores["pruned"]
    return [{
        "name": "image_reward", "label": "ImageReward (ImageReward-v1.0)",
        "pruned": float(pruned.mean()), "dense": float(scores["dense"].mean()),
        "ci95": bootstrap(lambda idx: float(pruned[idx].mean()), len(pruned)),
    }]


METRICS: dict[str, Callable[[Samples, EvaluationSpec], list[dict[str, Any]]]] = {
    "psnr": lambda samples, spec: psnr_vs_dense(samples),
    "shapes": lambda samples, spec: shapes_accuracy(samples),
    "clip": clip_score,
    "fid": fid,
    "imagereward": image_reward,
}


def evaluate(
    model: str,
    base: str,
    spec: EvaluationSpec,
    *,
    device: torch.device | None = None,
    folder: Path | None = None,
    on_image: Callable[[str, int, int], None] | None = None,
) -> tuple[dict[str, Any], Samples]:
    """Generate (or reuse) both models' images and compute ``spec.metrics``: the ``eval.json``
    record and the images. ``folder``: see :func:`eval_prompts`. ``on_image(model, done, total)``
    reports generation progress."""
    prompts = eval_prompts(spec, folder)
    check_metrics(spec, prompts)

    def progress(which: str) -> Callable[[int], None] | None:
        return (lambda done: on_image(which, done, len(prompts))) if on_image else None

    samples = Samples(
        prompts, cached_images(base, prompts, spec, device, progress("dense")), cached_images(model, prompts, spec, device, progress("pruned"))
    )
    rows = [row for metric in spec.metrics for row in METRICS[metric](samples, spec)]
    for row in rows:
        row["samples"] = len(prompts)
    return {
        "obsdiff_hub_version": __version__,
        "model": model,
        "base": base,
        "settings": {**spec.model_dump(), "prompts_sha256": hashlib.sha256("\n".join(prompts).encode()).hexdigest()},
        "metrics": rows,
        "grid": GRID_FILE,
    }, samples


def evaluate_checkpoint(
    model: str | Path,
    base: str,
    spec: EvaluationSpec,
    out_folder: Path,
    *,
    base_revision: str | None = None,
    prompt_folder: Path | None = None,
    device: torch.device | None = None,
    on_image: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    """Evaluate the checkpoint ``model`` against ``base``; write ``eval.json`` and the captioned
    grid (dense row on top, pruned below, at most 8 columns) into ``out_folder``."""
    from ..checkpoints.outputs import add_owned, write_atomic

    record, samples = evaluate(str(model), base, spec, folder=prompt_folder, device=device, on_image=on_image)
    record["model"] = "this checkpoint" if Path(model) == out_folder else str(model)
    record["base_revision"] = base_revision
    columns = min(8, len(samples.prompts))
    scale = max(1, 128 // samples.dense[0].width)
    grow = (lambda im: im.resize((im.width * scale, im.height * scale), resample=Image.NEAREST))
    grid = image_grid(
        [[grow(i) for i in samples.dense[:columns]], [grow(i) for i in samples.pruned[:columns]]],
        captions=samples.prompts[:columns],
        row_labels=["dense", "pruned"],
    )
    buffer = io.BytesIO()
    grid.save(buffer, format="PNG")
    out_folder.mkdir(parents=True, exist_ok=True)
    write_atomic(out_folder / GRID_FILE, buffer.getvalue())
    write_atomic(out_folder / EVAL_FILE, json.dumps(record, indent=2) + "\n")
    add_owned(out_folder, [GRID_FILE, EVAL_FILE])
    return record
