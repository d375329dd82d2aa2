"""Load the shipped shapes pipeline and score generated images (caption accuracy, fidelity)."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from diffusers import StableDiffusionPipeline
from diffusers.utils import logging
from PIL import Image
from safetensors.torch import load_file

from ..errors import UnsupportedEnvironmentError
from .dataset import ATTRIBUTES, Scene, evaluation_scenes
from .scorer import ShapeClassifier, caption_accuracy

WEIGHTS = Path(__file__).parent / "weights"


@contextmanager
def quiet_truncation_warnings() -> Iterator[None]:
    """Silence diffusers' 'input was truncated' notice while running the shapes model.

    Its tokenizer (shipped with the weights) splits two words into several tokens, so a few
    captions exceed its 16 positions; the model was trained with exactly that truncation.
    The notice would otherwise print every padded batch.
    """
    logger = logging.get_logger("diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def load_shapes_pipeline(torch_dtype: torch.dtype = torch.float32) -> Any:
    """The trained tiny Stable Diffusion pipeline, with the usual ``from_pretrained``."""
    folder = WEIGHTS / "pipeline"
    if not (folder / "model_index.json").is_file():
        raise UnsupportedEnvironmentError(
            f"{folder} is missing from this installation; train it with `python -m obsdiff_hub.shapes.train`"
        )
    return StableDiffusionPipeline.from_pretrained(
        folder, dtype=torch_dtype, safety_checker=None, requires_safety_checker=False
    )


def load_scorer() -> ShapeClassifier:
    classifier = ShapeClassifier()
    classifier.load_state_dict({k: v.float() for k, v in load_file(WEIGHTS / "scorer.safetensors").items()})
    return classifier.eval()


def generate(
    pipeline: Any, scenes: list[Scene], *, seed: int = 0, steps: int = 20, guidance: float = 4.0
) -> torch.Tensor:
    """Images in [-1, 1], one per scene; scene i uses seed + i (same noise for dense and pruned)."""
    pipeline.set_progress_bar_config(disable=True)
    generators = [torch.Generator().manual_seed(seed + i) for i in range(len(scenes))]
    with torch.no_grad(), quiet_truncation_warnings():
        images = pipeline(
            [s.caption for s in scenes],
            num_inference_steps=steps,
            guidance_scale=guidance,
            height=32,
            width=32,
            generator=generators,
            output_type="pt",
        ).images
    return images.float() * 2 - 1


def evaluate(
    pipeline: Any, reference: torch.Tensor | None = None, scenes: list[Scene] | None = None, **kwargs: Any
) -> tuple[dict[str, float], torch.Tensor]:
    """Caption accuracy of generated images (per attribute, mean, all four right) and, given
    the dense model's images for the same seeds, their PSNR against them."""
    scenes = scenes or evaluation_scenes()
    images = generate(pipeline, scenes, **kwargs)
    labels = {k: torch.tensor([s.labels()[k] for s in scenes]) for k in ATTRIBUTES}
    scores = caption_accuracy(load_scorer(), images, labels)
    if reference is not None:
        mse = float(((images - reference) ** 2).mean())
        scores["psnr_vs_dense"] = (
            10 * torch.log10(torch.tensor(4.0 / max(mse, 1e-12))).item()
        )  # range [-1, 1] → peak 2
    return scores, images


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    array = ((images.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(a) for a in array]
