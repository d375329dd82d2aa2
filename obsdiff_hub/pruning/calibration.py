"""Calibration trajectories: prompts encoded once, latent-only sampling, α by sampling step.

The reference implementation re-encodes prompts with every text encoder and VAE-decodes
every image once per module package. Here the prompt embeddings are computed once and
cached (text encoders then leave the accelerator until the run ends), each trajectory
stops at the latents, and the same seeds are replayed for every package. Calibration is
sampling as deployed: the pipeline's own unconditional input (SDXL's zero embeddings,
SD3's encoded empty prompt) unless a negative prompt is set, and prompt ``i`` always
uses ``seed + i``, whatever the batch size or the number of processes.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Protocol

import torch
from torch import nn

from ..architectures.components import TEXT_ENCODERS
from ..errors import InputError
from .config import CalibrationConfig
from .steps import pipeline_step

SetStep = Callable[[int], None]


class Calibration(Protocol):
    """Runs complete sampling trajectories through ``model``, calling ``set_step(i)`` before step i."""

    def __call__(self, model: nn.Module, set_step: SetStep) -> None: ...


def scheduler_class(name: str, current: Any) -> type:
    """The scheduler class ``name`` among those the pipeline's own scheduler declares compatible
    (diffusers' ``compatibles``); anything else a recipe might name is refused."""
    allowed = {type(current).__name__: type(current), **{c.__name__: c for c in getattr(current, "compatibles", [])}}
    if name not in allowed:
        raise InputError(
            f"scheduler {name!r} is not compatible with this pipeline; choose one of {', '.join(sorted(allowed))}"
        )
    return allowed[name]


def unconditional_input(pipeline: Any, negative_prompt: str | None) -> str:
    """How the unconditional half of each CFG batch is made, in words (for reports and cards)."""
    if negative_prompt is not None:
        return f"negative prompt {negative_prompt!r}"
    if getattr(pipeline.config, "force_zeros_for_empty_prompt", False):
        return "zero embeddings (the pipeline's force_zeros_for_empty_prompt default)"
    return "the encoded empty prompt (the pipeline's default)"


class PipelineCalibration:
    """Calibration through a diffusers text-to-image pipeline's own sampling loop.

    ``prompt_ids``: which of ``prompts`` this process samples (all, or its rank's shard).
    ``dtype``: the denoiser's compute dtype; embeddings are cast to it so latents follow.
    """

    def __init__(
        self,
        pipeline: Any,
        config: CalibrationConfig,
        prompts: list[str],
        device: torch.device,
        dtype: torch.dtype,
        prompt_ids: list[int] | None = None,
    ) -> None:
        if not prompts:
            raise InputError("the calibration prompt list is empty")
        self.pipeline = pipeline
        self.config = config
        self.prompts = prompts
        self.device = device
        self.dtype = dtype
        ids = list(range(len(prompts))) if prompt_ids is None else prompt_ids
        b = config.batch_size
        self.batches = [ids[i : i + b] for i in range(0, len(ids), b)]
        self._embeddings: list[dict[str, torch.Tensor]] | None = None
        self._scheduler = (
            scheduler_class(config.scheduler, pipeline.scheduler).from_config(pipeline.scheduler.config)
            if config.scheduler
            else None
        )
        pipeline.set_progress_bar_config(disable=True)

    @property
    def uses_cfg(self) -> bool:
        # Flux.1 is guidance-distilled: guidance is an input of the model, not a second pass.
        has_negative = "negative_prompt_embeds" in inspect.signature(self.pipeline.__call__).parameters
        return has_negative and self.config.guidance_scale > 1.0

    def encode(self) -> None:
        """Encode every batch once, then move the text encoders (and the unused VAE) off the accelerator.

        Encoders run in their own dtype; on the CPU half-precision encoders are widened to
        fp32 for the encoding (exact, and restored after), since CPU half kernels are slow.
        """
        if self._embeddings is not None:
            return
        params = inspect.signature(self.pipeline.encode_prompt).parameters
        encoders = [
            getattr(self.pipeline, n) for n in TEXT_ENCODERS if isinstance(getattr(self.pipeline, n, None), nn.Module)
        ]
        dtypes = [next(e.parameters()).dtype for e in encoders]
        for encoder, dtype in zip(encoders, dtypes):
            widen = self.device.type == "cpu" and dtype in (torch.float16, torch.bfloat16)
            encoder.to(device=self.device, dtype=torch.float32 if widen else dtype).eval()
        self._embeddings = []
        with torch.inference_mode():
            for batch in self.batches:
                texts = [self.prompts[i] for i in batch]
                kwargs: dict[str, Any] = {"prompt": texts, "device": self.device, "num_images_per_prompt": 1}
                kwargs.update({k: None for k in ("prompt_2", "prompt_3") if k in params})
                if "do_classifier_free_guidance" in params:
                    kwargs["do_classifier_free_guidance"] = self.uses_cfg
                    if self.config.negative_prompt is not None:
                        kwargs["negative_prompt"] = [self.config.negative_prompt] * len(texts)
                out = self.pipeline.encode_prompt(**kwargs)
                self._embeddings.append({k: v.to(self.dtype) for k, v in self._as_call_kwargs(out).items()})
        parked = torch.device("cpu") if self.device.type != "cpu" else self.device
        for encoder, dtype in zip(encoders, dtypes):
            encoder.to(device=parked, dtype=dtype)
        if isinstance(getattr(self.pipeline, "vae", None), nn.Module):
            self.pipeline.vae.to(parked)  # trajectories stop at the latents

    def restore_devices(self) -> None:
        """Put the text encoders and the VAE back on the run device, so the pipeline samples again."""
        for name in (*TEXT_ENCODERS, "vae"):
            module = getattr(self.pipeline, name, None)
            if isinstance(module, nn.Module):
                module.to(self.device)

    def _as_call_kwargs(self, out: tuple) -> dict[str, torch.Tensor]:
        if "do_classifier_free_guidance" not in inspect.signature(self.pipeline.encode_prompt).parameters:
            # Flux returns (prompt_embeds, pooled_prompt_embeds, text_ids).
            return {"prompt_embeds": out[0], "pooled_prompt_embeds": out[1]}
        names = ("prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds")
        return {n: t for n, t in zip(names, out) if t is not None}

    def __call__(self, model: nn.Module, set_step: SetStep, on_batch: Callable[[], None] | None = None) -> None:
        self.encode()
        assert self._embeddings is not None
        cfg = self.config
        original_scheduler = self.pipeline.scheduler
        if self._scheduler is not None:
            self.pipeline.scheduler = self._scheduler

        def step_end(pipe: Any, i: int, t: Any, tensors: dict) -> dict:
            scheduler = pipe.scheduler
            set_step(pipeline_step(i + 1, len(scheduler.timesteps), cfg.steps, getattr(scheduler, "order", 1)))
            return tensors

        size = {"height": cfg.resolution, "width": cfg.resolution} if cfg.resolution else {}
        # The embeddings are cached, so the encoders leave the pipeline while it samples: pipelines
        # otherwise cast given embeddings to the encoders' dtype instead of the denoiser's.
        encoders = {
            n: getattr(self.pipeline, n)
            for n in TEXT_ENCODERS
            if isinstance(getattr(self.pipeline, n, None), nn.Module)
        }
        for name in encoders:
            setattr(self.pipeline, name, None)
        try:
            with torch.inference_mode():
                for batch, embeds in zip(self.batches, self._embeddings):
                    set_step(0)
                    self.pipeline(
                        **embeds,
                        num_inference_steps=cfg.steps,
                        guidance_scale=cfg.guidance_scale,
                        generator=[torch.Generator(device="cpu").manual_seed(cfg.seed + i) for i in batch],
                        output_type="latent",
                        callback_on_step_end=step_end,
                        **size,
                    )
                    if on_batch is not None:
                        on_batch()
        finally:
            self.pipeline.scheduler = original_scheduler
            self.pipeline.register_modules(**encoders)  # also restores their model_index entries
