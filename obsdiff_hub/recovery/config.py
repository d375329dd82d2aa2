"""The settings of a heal: the ``recover`` section of a recipe, ``obsdiff-hub recover --set``, and ``recover()``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from ..pruning.config import PromptSource
from ..pruning.validation import StrictModel


class RecoverConfig(StrictModel):
    """Distillation of the pruned denoiser towards the dense one (see :mod:`obsdiff_hub.recovery`).

    Defaults were measured on the shipped shapes model (BENCHMARKS.md, "Recovery"): the pruned model's
    own trajectories labelled by the dense model heal it several times better than the dense model's
    trajectories, which the pruned model never visits once it drifts.
    """

    steps: int = Field(300, ge=0, le=10_000_000, description="optimizer steps at most (validation may stop it early)")
    learning_rate: float = Field(3e-4, gt=0, le=1.0)
    schedule: Literal["cosine", "constant"] = Field("cosine", description="after the warmup")
    warmup_steps: int = Field(20, ge=0, le=10_000_000)
    batch_size: int = Field(32, ge=1, le=65_536, description="recorded denoiser calls' rows per step")
    gradient_accumulation: int = Field(1, ge=1, le=4096)
    weight_decay: float = Field(0.0, ge=0, le=1.0)
    max_grad_norm: float | None = Field(1.0, gt=0, le=1e6, description="gradient clipping; None: off")
    trainable: Literal["all", "attention", "norms"] = Field(
        "all", description="which kept weights learn: all, the attention layers only, or the norms only"
    )
    prompts: PromptSource = Field(
        default_factory=lambda: PromptSource(source="builtin", path="captions", count=96),
        description="the prompts sampled for the data; a recipe's evaluation prompts are left out",
    )
    samples_per_prompt: int = Field(
        3,
        ge=1,
        le=1000,
        description="trajectories sampled per prompt, each with its own seed (more data, same prompts)",
    )
    validation_prompts: int = Field(
        8, ge=1, le=100_000, description="prompts held out of training to score each state on"
    )
    seed: int = Field(
        1_000_003, ge=0, le=2**62, description="prompt i is sampled with seed + i (keep clear of the evaluation's)"
    )
    trajectory_steps: int | None = Field(None, ge=1, le=10_000, description="None: the calibration's")
    guidance_scale: float | None = Field(None, ge=0, le=1000, description="None: the calibration's")
    trajectories: Literal["student", "teacher"] = Field(
        "student",
        description="whose sampling makes the inputs: the pruned model's (labelled by the dense one) or the dense "
        "model's own",
    )
    validate_every: int = Field(25, ge=1, le=10_000_000, description="steps between validations")
    patience: int = Field(4, ge=1, le=100_000, description="validations without improvement before stopping")
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    gradient_checkpointing: bool = False
    save_every: int = Field(50, ge=1, le=10_000_000, description="steps between saved progress (for resume)")
    cache_max_gb: float = Field(64.0, gt=0, le=1e6, description="refuse to record more teacher data than this")

    @model_validator(mode="after")
    def _enough_prompts(self) -> RecoverConfig:
        if self.validation_prompts >= self.prompts.count:
            raise ValueError(
                f"validation_prompts ({self.validation_prompts}) must be fewer than prompts.count "
                f"({self.prompts.count}): the rest are the training prompts"
            )
        return self
