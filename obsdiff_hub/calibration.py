"""Calibration trajectories: prompts encoded once, latent-only sampling, step index for α_t.

The reference implementation re-encodes prompts with every text encoder and VAE-decodes
every image once per module package. Here the prompt embeddings are computed once and
cached (text encoders can then leave the accelerator), each trajectory stops at the
latents, and the same seeds are replayed for every package.
"""

from __future__ import annotations

import inspect
from importlib import resources
from typing import Any, Callable, Protocol

import torch
from torch import nn

from .config import CalibrationConfig

SetStep = Callable[[int], None]


class Calibration(Protocol):
    """Runs complete sampling trajectories through ``model``, calling ``set_step(i)`` before step i."""

    def __call__(self, model: nn.Module, set_step: SetStep) -> None: ...


BUILTIN_PROMPT_SETS = {"captions": "calibration_prompts.txt", "shapes": "shapes_prompts.txt"}


def builtin_prompts(name: str = "captions") -> list[str]:
    """A shipped prompt set: ``captions`` (Conceptual Captions style, 240) or ``shapes`` (the embedded model's 150)."""
    if name not in BUILTIN_PROMPT_SETS:
        raise ValueError(f"unknown built-in prompt set {name!r}; choose {', '.join(BUILTIN_PROMPT_SETS)}")
    text = resources.files("obsdiff_hub").joinpath("data", BUILTIN_PROMPT_SETS[name]).read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def denoiser_name(pipeline: Any) -> str:
    """The pipeline's denoiser component: ``unet`` for SD/SDXL, ``transformer`` for SD3 and Flux."""
    for name in ("unet", "transformer"):
        if isinstance(getattr(pipeline, name, None), nn.Module):
            return name
    raise ValueError(f"{type(pipeline).__name__} has no unet or transformer to prune")


def denoiser_of(pipeline: Any) -> nn.Module:
    return getattr(pipeline, denoiser_name(pipeline))


class PipelineCalibration:
    """Calibration through a diffusers text-to-image pipeline's own sampling loop."""

    def __init__(self, pipeline: Any, config: CalibrationConfig, device: torch.device) -> None:
        self.pipeline = pipeline
        self.config = config
        self.device = device
        prompts = list(config.prompts) if config.prompts is not None else builtin_prompts()
        if not prompts:
            raise ValueError("the calibration prompt list is empty")
        self.prompts = [prompts[i % len(prompts)] for i in range(config.num_prompts)]
        self._embeddings: list[dict[str, torch.Tensor]] | None = None
        pipeline.set_progress_bar_config(disable=True)

    @property
    def num_steps(self) -> int:
        return self.config.steps

    @property
    def batches(self) -> list[list[str]]:
        b = self.config.batch_size
        return [self.prompts[i : i + b] for i in range(0, len(self.prompts), b)]

    @property
    def uses_cfg(self) -> bool:
        # Flux.1 is guidance-distilled: guidance is an input of the model, not a second pass.
        has_negative = "negative_prompt_embeds" in inspect.signature(self.pipeline.__call__).parameters
        return has_negative and self.config.guidance_scale > 1.0

    def encode(self) -> None:
        """Encode every batch once, then move the text encoders (and the unused VAE) off the accelerator."""
        if self._embeddings is not None:
            return
        params = inspect.signature(self.pipeline.encode_prompt).parameters
        self._move_text_encoders(self.device)
        self._embeddings = []
        with torch.inference_mode():
            for batch in self.batches:
                kwargs: dict[str, Any] = {"prompt": batch, "device": self.device, "num_images_per_prompt": 1}
                kwargs.update({k: None for k in ("prompt_2", "prompt_3") if k in params})
                if "do_classifier_free_guidance" in params:
                    kwargs["do_classifier_free_guidance"] = self.uses_cfg
                    kwargs["negative_prompt"] = [self.config.negative_prompt] * len(batch)
                out = self.pipeline.encode_prompt(**kwargs)
                self._embeddings.append(self._as_call_kwargs(out))
        if self.device.type != "cpu":
            self._move_text_encoders(torch.device("cpu"))
            if isinstance(getattr(self.pipeline, "vae", None), nn.Module):
                self.pipeline.vae.to("cpu")  # trajectories stop at the latents

    def _as_call_kwargs(self, out: tuple) -> dict[str, torch.Tensor]:
        if "do_classifier_free_guidance" not in inspect.signature(self.pipeline.encode_prompt).parameters:
            # Flux returns (prompt_embeds, pooled_prompt_embeds, text_ids).
            return {"prompt_embeds": out[0], "pooled_prompt_embeds": out[1]}
        names = ("prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds")
        return {n: t for n, t in zip(names, out) if t is not None}

    def _move_text_encoders(self, device: torch.device) -> None:
        for name in ("text_encoder", "text_encoder_2", "text_encoder_3"):
            encoder = getattr(self.pipeline, name, None)
            if isinstance(encoder, nn.Module):
                encoder.to(device).eval()

    def __call__(self, model: nn.Module, set_step: SetStep, on_batch: Callable[[], None] | None = None) -> None:
        self.encode()
        assert self._embeddings is not None
        cfg = self.config

        def step_end(pipe: Any, i: int, t: Any, tensors: dict) -> dict:
            set_step(i + 1)
            return tensors

        with torch.inference_mode():
            for index, embeds in enumerate(self._embeddings):
                set_step(0)
                generator = torch.Generator(device="cpu").manual_seed(cfg.seed + index)
                self.pipeline(
                    **embeds,
                    num_inference_steps=cfg.steps,
                    guidance_scale=cfg.guidance_scale,
                    height=cfg.height,
                    width=cfg.width,
                    generator=generator,
                    output_type="latent",
                    callback_on_step_end=step_end,
                )
                if on_batch is not None:
                    on_batch()
