"""Typed settings for one pruning run: one schema for Python dicts, recipe files and the CLI.

A recipe's ``prune`` and ``calibration`` sections *are* these models, so every field has
one name, one default and one validation, whichever way it is set. The method and the refining
solver are picked by name from their registries (:mod:`.methods`, :mod:`.solvers`), each with its
own settings.
"""

from __future__ import annotations

import warnings
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from ..dtypes import DtypeName
from ..maths.hessian import AccumulationPrecision, WeightingStrategy
from .methods import METHODS
from .registry import registry_field
from .solvers import SOLVERS
from .validation import StrictModel

Granularity = Literal["unstructured", "n:m", "structured"]
RunDtype = Literal["auto"] | DtypeName

# Schema 1 kept every method's and solver's settings flat on ``prune``; per chosen method or solver,
# where each flat name lives now (the others had no effect on that choice).
FLAT_METHOD_SETTINGS = {
    "obs-diff": {
        "blocksize": "blocksize",
        "rrf_k": "rrf_k",
        "head_saliency": "head_saliency",
        "neuron_batch": "neuron_batch",
    }
}
FLAT_SOLVER_SETTINGS = {
    "admm": {
        "admm_iterations": "iterations",
        "admm_rho": "rho",
        "refit_iterations": "refit_iterations",
        "refit_tolerance": "refit_tolerance",
    },
    "obs+lsq": {"refit_iterations": "iterations", "refit_tolerance": "tolerance"},
}
RENAMED = {"percdamp": "damping_fraction"}


def _nested(data: dict[str, Any], section: str, default: str, table: dict[str, dict[str, str]], lenient: bool) -> None:
    """Move ``data``'s flat settings of ``section`` (method or solver) into its settings mapping."""
    known = {key for names in table.values() for key in names}
    flat = {key: data.pop(key) for key in list(data) if key in known}
    if not flat:
        return
    choice = data.get(section, default)
    nested = (
        dict(choice)
        if isinstance(choice, dict)
        else choice.model_dump()
        if hasattr(choice, "model_dump")
        else {"name": choice}
    )
    where = table.get(str(nested.get("name")), {})
    for key, value in flat.items():
        if key in where:
            nested[where[key]] = value
        elif not lenient:
            users = " or ".join(name for name, names in table.items() if key in names)
            raise ValueError(f"{key} is a setting of {section} {users}, not of {nested.get('name')!r}")
    data[section] = nested


def schema_2_path(field: str, prune: dict[str, Any]) -> list[str]:
    """Where a ``prune`` field named the schema-1 way (``percdamp``, ``admm_rho``, ...) lives now, for the
    method and solver ``prune`` (a schema-2 mapping) chooses; other fields are where they were."""
    if field in RENAMED:
        return [RENAMED[field]]
    for section, table in (("method", FLAT_METHOD_SETTINGS), ("solver", FLAT_SOLVER_SETTINGS)):
        choice = prune.get(section)
        name = choice.get("name") if isinstance(choice, dict) else choice
        if field in table.get(str(name), {}):
            return [section, table[str(name)][field]]
    return [field]  # not a setting of the chosen ones: validation says whose it is


def migrate_flat_settings(data: Any, *, lenient: bool = False) -> Any:
    """Schema-1 ``prune`` settings in schema 2's shape: ``percdamp`` is ``damping_fraction``, and the flat
    ``blocksize``, ``rrf_k``, ``head_saliency``, ``neuron_batch``, ``admm_*`` and ``refit_*`` move into the
    chosen method's or solver's settings. ``lenient`` (a schema-1 file): a flat setting of another
    method or solver is dropped (it had no effect); otherwise it is an error."""
    if not isinstance(data, dict):
        return data
    data = dict(data)
    for old, new in RENAMED.items():
        if old in data:
            if new in data:
                raise ValueError(f"{old} is the old name of {new}; give one of them")
            data[new] = data.pop(old)
    _nested(data, "method", METHODS.default, FLAT_METHOD_SETTINGS, lenient)
    _nested(data, "solver", SOLVERS.default, FLAT_SOLVER_SETTINGS, lenient)
    return data


class PruneConfig(StrictModel):
    """What to prune and how (SPEC §1–2 defaults)."""

    method: registry_field(METHODS) = Field(
        default_factory=METHODS.default_settings, description="the pruning method, with its settings"
    )
    granularity: Granularity = "unstructured"
    sparsity: float = Field(0.5, ge=0.0, lt=1.0, description="per targeted layer, or heads/neurons per block")
    n: int = Field(0, ge=0, le=1024, description="N of N:M (granularity n:m)")
    m: int = Field(0, ge=0, le=1024, description="M of N:M (granularity n:m)")
    block_sparsity: dict[int, float] = Field(default_factory=dict, description="per-block overrides of sparsity")
    blocks: list[int] | str | None = Field(None, description="block indices, a 'start:stop' range, or None for all")
    packages: int | Literal["auto"] = Field(
        "auto", description="module packages P, or 'auto': the fewest whose Hessians fit the free memory"
    )
    memory_budget_gb: float | None = Field(
        None, gt=0, le=1e6, description="with packages 'auto': cap on Hessian memory alive at once"
    )
    weighting: WeightingStrategy = "log_decrease"
    alpha_min: float = Field(0.8, gt=0, le=1e6)
    alpha_max: float = Field(1.2, gt=0, le=1e6)
    damping_fraction: float = Field(
        0.01,
        ge=0,
        le=1e3,
        description="Hessian damping: this fraction of mean(diag H) is added to the diagonal before every solve "
        "(schema 1: percdamp)",
    )
    hessian_precision: AccumulationPrecision = "fp32"
    hessian_device: Literal["model", "cpu"] = Field(
        "model",
        description="cpu: keep the Hessian sums in host memory (products still computed on the accelerator): "
        "more blocks per package on a full GPU",
    )
    offload: Literal["none", "blocks", "blocks-to-disk"] = Field(
        "none",
        description="blocks: the blocks' weights in host memory, one block on the device at a time (a package's "
        "while it is solved); blocks-to-disk: in one safetensors file per block, read as the block runs",
    )
    calibration_target: Literal["self", "dense"] = Field(
        "self",
        description="dense: fit the dense network's outputs from the drifted inputs (asymmetric; a dense copy "
        "runs alongside)",
    )
    allocation: Literal["uniform", "error"] = Field(
        "uniform", description="error: per-layer sparsity from measured sensitivity, same total"
    )
    allocation_spread: float = Field(
        0.1, ge=0.0, lt=1.0, description="with allocation error: each layer within ratio ± spread"
    )
    solver: registry_field(SOLVERS) = Field(
        default_factory=SOLVERS.default_settings,
        description="the refining solver run on the method's result, with its settings",
    )

    @model_validator(mode="before")
    @classmethod
    def _flat_settings(cls, data: Any) -> Any:
        """Schema-1 spellings (``percdamp``, flat ``admm_*``, ...) still work, with a note."""
        migrated = migrate_flat_settings(data)
        if migrated is not data and migrated != data:
            old = sorted(set(data) - set(migrated))
            warnings.warn(
                f"prune settings {', '.join(old)} are schema-1 spellings; see `obsdiff-hub recipes methods` for "
                "where they live now",
                FutureWarning,
                stacklevel=2,
            )
        return migrated

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
        self.method.check(self)
        self.solver.check(self)
        if self.alpha_min > self.alpha_max:
            raise ValueError(f"alpha_min ({self.alpha_min}) must not exceed alpha_max ({self.alpha_max})")
        if self.offload != "none" and self.calibration_target == "dense":
            raise ValueError("offload works with calibration_target 'self' (a dense copy alongside would be resident)")
        if self.calibration_target == "dense" and not self.method.compensates:
            raise ValueError("calibration_target 'dense' applies to method obs-diff (the baselines do not compensate)")
        if self.allocation == "error" and (not self.method.compensates or self.granularity == "n:m"):
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
        description="builtin: set name (captions, shapes); file: path relative to the recipe; hub-dataset: file in "
        "the repo",
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
    guidance_scale: float = Field(7.0, ge=0, le=1000)
    resolution: int | None = Field(
        512, ge=8, le=16_384, description="image side in pixels; None: the pipeline's default"
    )
    batch_size: int = Field(4, ge=1, le=4096)
    seed: int = Field(24432, ge=0, le=2**62, description="prompt i is sampled with seed + i")
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
