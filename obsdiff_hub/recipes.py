"""Versioned recipes: the unit of reproducibility of the zoo.

A recipe is plain YAML read with ``yaml.safe_load`` (no Python tags) and validated by
typed models that reject unknown fields. Its identity is name + version + the sha256 of
its canonical JSON form; every checkpoint it produces records all three.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .config import CalibrationConfig, Granularity, Method, PruneConfig
from .hessian import WeightingStrategy

SCHEMA_VERSION = 1


class RecipeError(ValueError):
    """A recipe that cannot be found or does not validate; the message says what to change."""


def data_dir(name: str) -> Path:
    """``recipes`` or ``model_cards``: packaged under ``obsdiff_hub/_data`` in a wheel, at the repo root in a checkout."""
    packaged = Path(str(resources.files("obsdiff_hub"))) / "_data" / name
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / name


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BaseModelSpec(_Strict):
    repo_id: str = Field(description="Hub repo id, local directory, or builtin:NAME for the shipped tiny models")
    revision: str = "main"
    pipeline: str = Field(description="diffusers pipeline class, e.g. StableDiffusionXLPipeline")
    component: Literal["unet", "transformer"]
    family: Literal["unet", "mmdit", "flux"]
    config: str | None = Field(None, description="shipped public config (recipes/configs/NAME.json) for offline plan")
    license: str | None = None


class PromptSource(_Strict):
    source: Literal["builtin", "file", "hub-dataset"] = "builtin"
    path: str | None = Field(None, description="built-in set name, file path, or the file inside the Hub dataset repo")
    repo_id: str | None = Field(None, description="Hub dataset repo id (source: hub-dataset)")
    column: str | None = Field(None, description="column for csv/tsv/jsonl files")
    count: int = Field(100, ge=1)

    @model_validator(mode="after")
    def _complete(self) -> PromptSource:
        if self.source in ("file", "hub-dataset") and not self.path:
            raise ValueError(f"prompt source {self.source!r} needs a path")
        if self.source == "hub-dataset" and not self.repo_id:
            raise ValueError("prompt source 'hub-dataset' needs repo_id")
        return self


class CalibrationSpec(_Strict):
    prompts: PromptSource = PromptSource()
    steps: int = Field(25, ge=1)
    guidance_scale: float = Field(7.0, ge=0)
    resolution: int = Field(512, ge=8)
    batch_size: int = Field(4, ge=1)
    seed: int = 24432
    scheduler: str | None = Field(None, description="diffusers scheduler class; None keeps the pipeline's")


class WeightingSpec(_Strict):
    strategy: WeightingStrategy = "log_decrease"
    alpha_min: float = Field(0.8, gt=0)
    alpha_max: float = Field(1.2, gt=0)


class PruneSpec(_Strict):
    method: Method = "obs-diff"
    granularity: Granularity
    sparsity: float = Field(0.0, ge=0.0, lt=1.0)
    n: int = Field(0, ge=0)
    m: int = Field(0, ge=0)
    block_sparsity: dict[int, float] = Field(default_factory=dict)
    blocks: str | list[int] | None = None
    packages: int | None = Field(4, ge=1)
    memory_budget_gb: float | None = Field(None, gt=0)
    percdamp: float = Field(0.01, ge=0)
    blocksize: int = Field(128, ge=1)
    rrf_k: int = Field(60, ge=0)
    head_saliency: Literal["reference", "exact"] = "reference"
    neuron_batch: int = Field(32, ge=1)
    weighting: WeightingSpec = WeightingSpec()


class OutputSpec(_Strict):
    dtype: Literal["float32", "float16", "bfloat16"] = "float16"
    variant: str | None = None


class Recipe(_Strict):
    schema_version: Literal[1]
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9.\-]*$")
    version: int = Field(ge=1)
    description: str
    base_model: BaseModelSpec
    prune: PruneSpec
    calibration: CalibrationSpec = CalibrationSpec()
    output: OutputSpec = OutputSpec()

    @model_validator(mode="after")
    def _prune_config_valid(self) -> Recipe:
        self.prune_config()  # raises ValueError with pydantic's message if inconsistent
        return self

    def prune_config(self, **overrides: Any) -> PruneConfig:
        p = self.prune
        fields = p.model_dump(exclude={"weighting"})
        fields.update(
            weighting=p.weighting.strategy, alpha_min=p.weighting.alpha_min, alpha_max=p.weighting.alpha_max, **overrides
        )
        return PruneConfig.model_validate(fields)

    def calibration_config(self, prompts: list[str], **overrides: Any) -> CalibrationConfig:
        c = self.calibration
        fields = dict(
            prompts=prompts,
            num_prompts=len(prompts),
            steps=c.steps,
            guidance_scale=c.guidance_scale,
            height=c.resolution,
            width=c.resolution,
            batch_size=c.batch_size,
            seed=c.seed,
        )
        fields.update(overrides)
        return CalibrationConfig.model_validate(fields)

    def canonical_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()

    @property
    def tag(self) -> str:
        return f"{self.name}-v{self.version}"

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def recipe_names() -> list[str]:
    return sorted(p.stem for p in data_dir("recipes").glob("*.yaml"))


def load_recipe(name_or_path: str | Path) -> Recipe:
    """A shipped recipe by name, or a YAML file by path; clear errors for everything else."""
    path = Path(name_or_path)
    if not (path.suffix in (".yaml", ".yml") and path.is_file()):
        path = data_dir("recipes") / f"{name_or_path}.yaml"
        if not path.is_file():
            names = recipe_names()
            close = difflib.get_close_matches(str(name_or_path), names, n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(close)}?" if close else "; `obsdiff-hub recipes list` shows them"
            raise RecipeError(f"unknown recipe {str(name_or_path)!r}{hint}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise RecipeError(f"{path}: not valid YAML (only plain YAML is read, no Python tags): {error}".splitlines()[0]) from error
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe is a YAML mapping, got {type(data).__name__}")
    if data.get("schema_version") != SCHEMA_VERSION:
        raise RecipeError(f"{path}: schema_version {data.get('schema_version')!r} is not supported (this obsdiff-hub reads {SCHEMA_VERSION})")
    try:
        return Recipe.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "recipe"
        allowed = f" (allowed: {first['ctx']['expected']})" if "expected" in first.get("ctx", {}) else ""
        raise RecipeError(f"{path}: {where}: {first['msg']}{allowed}") from error
