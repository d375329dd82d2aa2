"""Typed settings for one pruning run, validated the same way from Python, dicts and recipes."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .hessian import AccumulationPrecision, WeightingStrategy

Method = Literal["obs-diff", "magnitude", "wanda", "dsnot", "l1"]
Granularity = Literal["unstructured", "n:m", "structured"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PruneConfig(_Strict):
    """What to prune and how (SPEC §1–2 defaults)."""

    method: Method = "obs-diff"
    granularity: Granularity = "unstructured"
    sparsity: float = Field(0.5, ge=0.0, lt=1.0, description="per targeted layer, or heads/neurons per block")
    n: int = Field(0, ge=0)
    m: int = Field(0, ge=0)
    block_sparsity: dict[int, float] = Field(default_factory=dict, description="per-block overrides of sparsity")
    blocks: list[int] | str | None = Field(None, description="block indices, a 'start:stop' range, or None for all")
    packages: int | None = Field(4, ge=1, description="module packages P; None with memory_budget_gb to plan")
    memory_budget_gb: float | None = Field(None, gt=0, description="most fp32 Hessian memory alive at once")
    steps: int | None = Field(None, ge=1, description="sampling steps T when a callable drives calibration")
    weighting: WeightingStrategy = "log_decrease"
    alpha_min: float = Field(0.8, gt=0)
    alpha_max: float = Field(1.2, gt=0)
    percdamp: float = Field(0.01, ge=0)
    blocksize: int = Field(128, ge=1)
    rrf_k: int = Field(60, ge=0)
    head_saliency: Literal["reference", "exact"] = "reference"
    neuron_batch: int = Field(32, ge=1, description="FFN neurons removed per OBS round (heads: always 1)")
    hessian_precision: AccumulationPrecision = "fp32"

    @field_validator("block_sparsity")
    @classmethod
    def _overrides_in_range(cls, value: dict[int, float]) -> dict[int, float]:
        for block, ratio in value.items():
            if not 0.0 <= ratio < 1.0:
                raise ValueError(f"block_sparsity[{block}] = {ratio} must be in [0, 1)")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> PruneConfig:
        if self.granularity == "n:m":
            if not 0 < self.n < self.m:
                raise ValueError(f"granularity 'n:m' needs 0 < n < m, got n={self.n}, m={self.m}")
        elif self.n or self.m:
            raise ValueError(f"n and m only apply to granularity 'n:m', not {self.granularity!r}")
        if self.method == "l1" and self.granularity != "structured":
            raise ValueError("method 'l1' is a structured baseline: use granularity 'structured'")
        if self.granularity == "structured" and self.method not in ("obs-diff", "l1"):
            raise ValueError(f"structured pruning supports methods obs-diff and l1, not {self.method!r}")
        if self.alpha_min > self.alpha_max:
            raise ValueError(f"alpha_min ({self.alpha_min}) must not exceed alpha_max ({self.alpha_max})")
        if self.packages is None and self.memory_budget_gb is None:
            raise ValueError("set packages, or memory_budget_gb to let the planner choose them")
        if isinstance(self.blocks, str) and not _parse_range(self.blocks):
            raise ValueError(f"blocks {self.blocks!r} must look like 'start:stop' (stop exclusive)")
        return self

    @classmethod
    def coerce(cls, config: PruneConfig | dict[str, Any]) -> PruneConfig:
        return config if isinstance(config, cls) else cls.model_validate(config)

    @property
    def ratio_label(self) -> str:
        return f"{self.n}:{self.m}" if self.granularity == "n:m" else f"{self.sparsity:.0%}"

    def block_ids(self, num_blocks: int) -> list[int] | None:
        if self.blocks is None:
            return None
        if isinstance(self.blocks, str):
            start, stop = _parse_range(self.blocks)  # type: ignore[misc]
            return list(range(start, min(stop, num_blocks) if stop is not None else num_blocks))
        return list(self.blocks)

    def sparsity_for(self, block: int) -> float:
        return self.block_sparsity.get(block, self.sparsity)


def _parse_range(text: str) -> tuple[int, int | None] | None:
    parts = text.split(":")
    if len(parts) != 2 or not parts[0].strip().isdigit() or not (parts[1].strip().isdigit() or not parts[1].strip()):
        return None
    return int(parts[0]), int(parts[1]) if parts[1].strip() else None


class CalibrationConfig(_Strict):
    """Calibration trajectories (SPEC §2 reference settings)."""

    prompts: list[str] | None = Field(None, description="None: the built-in caption set")
    num_prompts: int = Field(100, ge=1)
    steps: int = Field(25, ge=1)
    guidance_scale: float = Field(7.0, ge=0)
    height: int | None = Field(512, ge=8)
    width: int | None = Field(512, ge=8)
    batch_size: int = Field(4, ge=1)
    seed: int = 24432
    negative_prompt: str = ""
