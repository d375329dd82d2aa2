"""CLIP score (``100·max(cos(image, prompt), 0)``) with OpenAI CLIP ViT-B/16 through transformers, at a
pinned revision; its image embeddings also serve as FID features (``fid_features: clip``)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
import torch
from huggingface_hub.errors import HFValidationError
from PIL import Image
from transformers import CLIPModel, CLIPProcessor

from ...errors import InputError
from ..recipes import EvaluationSpec
from .base import MetricRow, Samples, bootstrap

CLIP_MODEL = ("openai/clip-vit-base-patch16", "57c216476eefef5ab752ec549e440a49ae4ae5f3")


def clip_model(spec: EvaluationSpec) -> tuple[Any, Any, str]:
    """The CLIP model and processor named by the spec (a Hub id at a pinned revision, or a local folder)."""
    source = spec.clip_model or CLIP_MODEL[0]
    return _load_clip(source, None if Path(source).is_dir() else (spec.clip_revision or CLIP_MODEL[1]))


@functools.lru_cache(maxsize=1)  # checked before sampling, then used for both models' images
def _load_clip(source: str, revision: str | None) -> tuple[Any, Any, str]:
    try:
        model = CLIPModel.from_pretrained(source, revision=revision, use_safetensors=True).eval()
        processor = CLIPProcessor.from_pretrained(source, revision=revision)
    except (
        OSError,
        HFValidationError,
    ) as error:  # with peft installed, transformers validates a missing path as a repo id
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise InputError(
            f"CLIP model {source} cannot be loaded ({reason}); give a local copy with `clip_model`, or leave clip "
            "out of `metrics`"
        ) from None
    return model, processor, f"{source}@{revision}" if revision else source


def _features(output: Any) -> torch.Tensor:
    """Projected CLIP features: transformers 5 returns a model output (``pooler_output``), 4.x a tensor."""
    return output.pooler_output if hasattr(output, "pooler_output") else output


def clip_embeddings(
    images: list[Image.Image], prompts: list[str] | None, spec: EvaluationSpec
) -> tuple[np.ndarray, np.ndarray | None, str]:
    """Image embeddings (and, with ``prompts``, text embeddings) of CLIP, and the model's name."""
    model, processor, name = clip_model(spec)
    image_features, text_features = [], []
    with torch.inference_mode():
        for start in range(0, len(images), spec.batch_size):
            batch = processor(images=images[start : start + spec.batch_size], return_tensors="pt")
            image_features.append(_features(model.get_image_features(pixel_values=batch["pixel_values"])))
            if prompts is not None:
                text = processor(
                    text=prompts[start : start + spec.batch_size], return_tensors="pt", padding=True, truncation=True
                )
                text_features.append(
                    _features(
                        model.get_text_features(input_ids=text["input_ids"], attention_mask=text["attention_mask"])
                    )
                )
    features = torch.cat(image_features)
    texts = torch.cat(text_features) if prompts is not None else None
    return features.float().numpy(), None if texts is None else texts.float().numpy(), name


def clip_score(samples: Samples, spec: EvaluationSpec) -> list[MetricRow]:
    """CLIP score ``100·max(cos(image, prompt), 0)`` per image, for both models."""
    scores = {}
    for which, images in (("dense", samples.dense), ("pruned", samples.pruned)):
        image, text, name = clip_embeddings(images, samples.prompts, spec)
        cos = (image * text).sum(1) / (np.linalg.norm(image, axis=1) * np.linalg.norm(text, axis=1))
        scores[which] = 100 * np.clip(cos, 0, None)
    pruned = scores["pruned"]
    interval = bootstrap(lambda idx: float(pruned[idx].mean()), len(pruned))
    return [
        MetricRow(
            "clip_score",
            f"CLIP score ({name.split('@')[0]})",
            float(pruned.mean()),
            float(scores["dense"].mean()),
            interval,
            len(pruned),
            model=name,
        )
    ]
