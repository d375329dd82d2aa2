"""Typed settings for one pruning run: one schema for Python dicts, recipe files and the CLI.

A recipe's ``prune`` and ``calibration`` sections *are* these models, so every field has
one name, one default and one validation, whichever way it is set.
"""

from __future__ import annotations

import difflib
import typing
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from ..errors import InputError
from ..maths.hessian import AccumulationPrecision, WeightingStrategy

Method = Literal["obs-diff", "magnitude", "wanda", "dsnot", "l1"]
Granularity = Literal["unstructured", "n:m", "structured"]
RunDtype = Literal["auto", "float32", "float16", "bfloat16"]


class StrictModel(BaseModel):
    """Frozen, and unknown fields are errors (a typo in a recipe must not be ignored)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @classmethod
    def coerce(cls, value: Any) -> Any:
        """``value`` if it already is one, else validated from a mapping; a bad field is an
        :class:`InputError` naming it (``calibration.steps: ...``)."""
        if isinstance(value, cls):
            return value
        try:
            return cls.model_validate(value if value is not None else {})
        except ValidationError as error:
            raise InputError(describe_error(error, cls)) from None


def _fields_at(model: type[BaseModel], path: list[str]) -> list[str]:
    """Field names of the (nested) model that ``path`` leads to, or [] if it leads elsewhere."""
    for part in path:
        field = model.model_fields.get(part)
        options = [field.annotation, *typing.get_args(field.annotation)] if field is not None else []
        nested = [t for t in options if isinstance(t, type) and issubclass(t, BaseModel)]
        if not nested:
            return []
        model = nested[0]
    return list(model.model_fields)


def describe_error(error: ValidationError, model: type[BaseModel]) -> str:
    """The first problem of a failed validation of ``model`` in one line: the field, pydantic's
    message, the allowed values, and for an unknown field the closest real one."""
    first = error.errors()[0]
    loc = [str(part) for part in first["loc"]]
    expected = str(first.get("ctx", {}).get("expected", ""))
    hint = f" (allowed: {expected})" if expected and expected not in first["msg"] else ""
    if first["type"] == "extra_forbidden" and loc:
        close = difflib.get_close_matches(loc[-1], _fields_at(model, loc[:-1]), n=1, cutoff=0.6)
        hint = f"; did you mean {'.'.join([*loc[:-1], close[0]])}?" if close else ""
    return f"{'.'.join(loc) or model.__name__}: {first['msg']}{hint}"


class PruneConfig(StrictModel):
    """What to prune and how (SPEC §1–2 defaults)."""

    method: Method = "obs-diff"
    granularity: Granularity = "unstructured"
    sparsity: float = Field(0.5, ge=0.0, lt=1.0, description="per targeted layer, or heads/neurons per block")
    n: int = Field(0, ge=0, description="N of N:M (granularity n:m)")
    m: int = Field(0, ge=0, description="M of N:M (granularity n:m)")
    block_sparsity: dict[int, float] = Field(default_factory=dict, description="per-block overrides of sparsity")
    blocks: list[int] | str | None = Field(None, description="block indices, a 'start:stop' range, or None for all")
    packages: int | Literal["auto"] = Field(
        "auto", description="module packages P, or 'auto': the fewest whose Hessians fit the free memory"
    )
    memory_budget_gb: float | None = Field(
        None, gt=0, description="with packages 'auto': cap on Hessian memory alive at once"
    )
    weighting: WeightingStrategy = "log_decrease"
    alpha_min: float = Field(0.8, gt=0)
    alpha_max: float = Field(1.2, gt=0)
    percdamp: float = Field(0.01, ge=0)
    blocksize: int = Field(128, ge=1)
    rrf_k: int = Field(60, ge=0)
    head_saliency: Literal["reference", "exact"] = "reference"
    neuron_batch: int = Field(32, ge=1, description="FFN neurons removed per OBS round (heads: always 1)")
    hessian_precision: AccumulationPrecision = "fp32"
    hessian_device: Literal["model", "cpu"] = Field(
        "model",
        description="cpu: keep the Hessian sums in host memory (products still computed on the accelerator): more blocks per package on a full GPU",
    )
    calibration_target: Literal["self", "dense"] = Field(
        "self",
        description="dense: fit the dense network's outputs from the drifted inputs (asymmetric; a dense copy runs alongside)",
    )
    allocation: Literal["uniform", "error"] = Field(
        "uniform", description="error: per-layer sparsity from measured sensitivity, same total"
    )
    allocation_spread: float = Field(
        0.1, ge=0.0, lt=1.0, description="with allocation error: each layer within ratio ± spread"
    )
    solver: Literal["obs", "obs+lsq", "admm"] = Field(
        "obs",
        description="obs: the paper's greedy pass; obs+lsq: its mask with the kept weights re-fitted to the optimum; "
        "admm: mask and weights refined by ADMM from the obs result, then re-fitted (unstructured and N:M)",
    )
    admm_iterations: int = Field(60, ge=1, le=10_000, description="with solver admm: ADMM steps at most")
    admm_rho: float = Field(
        0.1, gt=0, description="with solver admm: the first penalty, relative to the scaled Hessian's unit diagonal"
    )
    refit_iterations: int = Field(
        100, ge=1, le=100_000, description="with solver obs+lsq or admm: conjugate-gradient steps at most"
    )
    refit_tolerance: float = Field(
        1e-6, gt=0, lt=1, description="with solver obs+lsq or admm: relative residual at which the re-fit stops"
    )

    @field_validator("block_sparsity")
    @classmethod
    def _overrides_in_range(cls, value: dict[int, float]) -> dict[int, float]:
        for block, ratio in value.items():
            if not 0.0 <= ratio < 1.0:
                raise ValueError(f"block_sparsity[{block}] = {ratio} must be in [0, 1)")
        return value

    @field_validator("packages")
    @classmethod
    def _positive_packages(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 1:
            raise ValueError(f"packages must be at least 1 or 'auto', got {value}")
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
        if self.calibration_target == "dense" and self.method != "obs-diff":
            raise ValueError("calibration_target 'dense' applies to method obs-diff (the baselines do not compensate)")
        if self.solver != "obs" and (self.method != "obs-diff" or self.granularity == "structured"):
            raise ValueError(f"solver {self.solver!r} refines method obs-diff with granularity unstructured or n:m")
        if self.allocation == "error" and (self.method != "obs-diff" or self.granularity == "n:m"):
            raise ValueError(
                "allocation 'error' applies to method obs-diff with granularity unstructured or structured"
            )
        if self.memory_budget_gb is not None and self.packages != "auto":
            raise ValueError("memory_budget_gb applies to packages 'auto'; set one or the other")
        if isinstance(self.blocks, str) and not _parse_range(self.blocks):
            raise ValueError(f"blocks {self.blocks!r} must look like 'start:stop' (stop exclusive)")
        return self

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


class PromptSource(StrictModel):
    """Where the calibration prompts come from, and (once run) which prompts they were."""

    source: Literal["builtin", "file", "hub-dataset", "inline"] = "builtin"
    path: str | None = Field(
        None,
        description="builtin: set name (captions, shapes); file: path relative to the recipe; hub-dataset: file in the repo",
    )
    repo_id: str | None = Field(None, description="Hub dataset repo id (source: hub-dataset)")
    revision: str | None = Field(None, description="Hub dataset revision (source: hub-dataset)")
    column: str | None = Field(None, description="column holding the prompts in csv/tsv/jsonl files")
    texts: list[str] | None = Field(None, description="the prompts themselves (source: inline)")
    count: int = Field(100, ge=1, le=1_000_000, description="prompts used; a shorter source is cycled")
    sha256: str | None = Field(
        None, pattern=r"^[0-9a-f]{64}$", description="sha256 of the prompts used; checked when set"
    )

    @model_validator(mode="after")
    def _complete(self) -> PromptSource:
        if self.source in ("file", "hub-dataset") and not self.path:
            raise ValueError(f"prompt source {self.source!r} needs a path")
        if self.source == "hub-dataset" and not self.repo_id:
            raise ValueError("prompt source 'hub-dataset' needs repo_id")
        if (self.source == "inline") != bool(self.texts):
            raise ValueError("texts goes with prompt source 'inline', which needs at least one prompt")
        return self


class CalibrationConfig(StrictModel):
    """Calibration trajectories (SPEC §2 reference settings)."""

    prompts: PromptSource = PromptSource()
    steps: int = Field(25, ge=1, le=10_000, description="sampling steps per trajectory")
    guidance_scale: float = Field(7.0, ge=0)
    resolution: int | None = Field(
        512, ge=8, le=16_384, description="image side in pixels; None: the pipeline's default"
    )
    batch_size: int = Field(4, ge=1, le=4096)
    seed: int = Field(24432, description="prompt i is sampled with seed + i")
    negative_prompt: str | None = Field(None, description="None: the pipeline's own unconditional input (SDXL: zeros)")
    scheduler: str | None = Field(None, description="diffusers scheduler class; None keeps the pipeline's")
    dtype: RunDtype = Field(
        "auto", description="calibration dtype; auto: the checkpoint's own (fp32 on CPU for half types)"
    )

    @model_validator(mode="before")
    @classmethod
    def _prompt_list(cls, data: Any) -> Any:
        """A plain list of prompts (library use) is an inline source of that many prompts."""
        if isinstance(data, dict) and isinstance(data.get("prompts"), (list, tuple)):
            texts = [str(t) for t in data["prompts"]]
            data = {**data, "prompts": {"source": "inline", "texts": texts, "count": len(texts)}}
        return data
