"""Versioned recipes: the unit of reproducibility of the zoo.

A recipe is plain YAML read with ``yaml.safe_load`` (no Python tags) and validated by typed
models that reject unknown fields; its ``prune`` and ``calibration`` sections are the
engine's own :class:`PruneConfig` and :class:`CalibrationConfig`. Its identity is name +
version + the sha256 of its canonical JSON form; every checkpoint it produces records all
three, and ships the *effective* recipe (every override applied, the prompts pinned) that
reproduces it.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, PrivateAttr, ValidationError, field_validator

from ..dtypes import DtypeName
from ..errors import InputError
from ..pruning.config import CalibrationConfig, PruneConfig, migrate_flat_settings, schema_2_path
from ..pruning.validation import StrictModel, describe_error
from ..recovery.config import RecoverConfig
from ..resources import data_dir

SCHEMA_VERSION = 2  # 2: each method's and solver's settings nested under its name (1 is migrated on load)
MAX_RECIPE_BYTES = 1024**2
MAX_YAML_NODES = 100_000  # with every alias expanded: a recipe has a few hundred
CONFIG_NAME = r"^[a-z0-9][a-z0-9._\-]*$"


class RecipeError(InputError):
    """A recipe that cannot be found or does not validate; the message says what to change."""


class BaseModelSpec(StrictModel):
    repo_id: str = Field(description="Hub repo id, local directory, or builtin:NAME for the shipped tiny models")
    revision: str = "main"
    pipeline: str = Field(description="diffusers pipeline class, e.g. StableDiffusionXLPipeline")
    component: Literal["unet", "transformer"]
    family: Literal["unet", "mmdit", "flux"]
    config: str | None = Field(
        None, pattern=CONFIG_NAME, description="shipped public config (recipes/configs/NAME.json) for offline plan"
    )
    license: str | None = None


class OutputSpec(StrictModel):
    dtype: DtypeName = "float16"
    variant: str | None = Field(None, pattern=r"^[A-Za-z0-9_]+$")


class EvaluationSpec(StrictModel):
    """Quality measured on the saved checkpoint against the dense base, same seeds (see ``zoo/evaluation.py``)."""

    metrics: list[Literal["shapes", "psnr", "clip", "fid", "imagereward"]] = ["psnr"]
    prompts: str = Field("builtin:captions", description="builtin:NAME or a prompt file")
    num: int = Field(60, ge=1, le=1_000_000, description="images per model")
    steps: int = Field(25, ge=1, le=10_000)
    guidance_scale: float | None = Field(None, ge=0, le=1000)
    resolution: int | None = Field(None, ge=8, le=16_384)
    seed: int = Field(0, ge=0, le=2**62)
    batch_size: int = Field(8, ge=1, le=4096)
    clip_model: str | None = Field(
        None, description="CLIP for clip (and fid_features: clip): Hub id or local folder; default OpenAI ViT-B/16"
    )
    clip_revision: str | None = Field(None, description="revision of clip_model (default: the pinned one)")
    fid_features: Literal["inception", "clip"] = "inception"
    reference: str | None = Field(None, description="folder of reference images for FID (e.g. MS-COCO val)")


class RecipeIdentity(StrictModel):
    name: str
    version: int
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class Recipe(StrictModel):
    schema_version: Literal[2]
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9.\-]*$")
    version: int = Field(ge=1)
    description: str
    base_model: BaseModelSpec
    prune: PruneConfig
    calibration: CalibrationConfig = CalibrationConfig()
    output: OutputSpec = OutputSpec()
    evaluation: EvaluationSpec | None = None
    recover: RecoverConfig | None = Field(
        None, description="heal after pruning: distillation from the dense model (off in the paper's recipes)"
    )
    derived_from: RecipeIdentity | None = Field(None, description="the recipe this effective recipe was run from")
    _folder: Path | None = PrivateAttr(default=None)

    @field_validator("name")
    @classmethod
    def _a_git_ref(cls, value: str) -> str:
        """The name becomes a tag (``NAME-vN``) and, in a family, a branch: it must be a valid git ref."""
        if len(value) > 200:  # a tag, a branch and a folder name (with this tool's suffixes) must all fit
            raise ValueError(f"{value[:40]}… has {len(value)} characters; a recipe name has at most 200")
        if ".." in value or value.endswith((".", ".lock")):
            raise ValueError(f"{value[:80]!r} cannot be a git tag or branch (no '..', not ending in '.' or '.lock')")
        return value

    @property
    def folder(self) -> Path | None:
        """The folder of the recipe file (prompt files are relative to it); None for shipped recipes."""
        return self._folder

    def as_data(self) -> dict[str, Any]:
        """The recipe as plain data; a recipe without a ``recover`` stage has none (so its identity is what it
        was before recovery existed)."""
        data = self.model_dump(mode="json")
        if data.get("recover") is None:
            data.pop("recover", None)
        return data

    def canonical_json(self) -> str:
        return json.dumps(self.as_data(), sort_keys=True, separators=(",", ":"))

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()

    @property
    def tag(self) -> str:
        return f"{self.name}-v{self.version}"

    def identity(self) -> RecipeIdentity:
        return RecipeIdentity(name=self.name, version=self.version, sha256=self.sha256)

    def to_yaml(self) -> str:
        return f"# obsdiff-hub recipe (schema {SCHEMA_VERSION}). See README.md, 'Recipes'.\n" + yaml.safe_dump(
            self.as_data(), sort_keys=False
        )

    def with_changes(self, changes: dict[str, Any]) -> Recipe:
        """A copy with dotted-path changes (``{"prune.sparsity": 0.4}``), validated as a whole. Schema-1
        field names (``prune.percdamp``, ``prune.admm_rho``) change the field that holds them now."""
        data = self.model_dump(mode="json")
        for dotted, value in changes.items():
            node = data
            *parents, leaf = dotted.split(".")
            if parents == ["prune"]:
                *more, leaf = schema_2_path(leaf, data["prune"])
                parents += more
            for part in parents:
                child = node.get(part)
                if child is None:
                    child = node[part] = {}
                if isinstance(child, str) and part in ("method", "solver"):
                    child = node[part] = {"name": child}  # a bare name gains settings
                if not isinstance(child, dict):
                    raise RecipeError(f"{dotted}: {part} is not a section of the recipe")
                node = child
            node[leaf] = value
        recipe = validate_recipe(data, "override")
        recipe._folder = self._folder
        return recipe


def validate_recipe(data: Any, where: str) -> Recipe:
    """A recipe from parsed YAML, or a one-line error naming the first bad field."""
    if not isinstance(data, dict):
        raise RecipeError(f"{where}: a recipe is a YAML mapping, got {type(data).__name__}")
    if data.get("schema_version") == 1:
        data = migrate_schema_1(data, where)
    if data.get("schema_version") != SCHEMA_VERSION:
        raise RecipeError(
            f"{where}: schema_version {data.get('schema_version')!r} is not supported (this obsdiff-hub reads "
            f"{SCHEMA_VERSION})"
        )
    try:
        return Recipe.model_validate(data)
    except ValidationError as error:
        raise RecipeError(f"{where}: {describe_error(error, Recipe)}") from error


def migrate_schema_1(data: dict[str, Any], where: str) -> dict[str, Any]:
    """A schema-1 recipe as the identical schema-2 recipe: its flat method and solver settings nested
    under the chosen method and solver (settings of the others, which had no effect, dropped)."""
    prune = data.get("prune")
    try:
        migrated = migrate_flat_settings(prune, lenient=True) if isinstance(prune, dict) else prune
    except ValueError as error:
        raise RecipeError(f"{where}: prune: {error}") from None
    return {**data, "schema_version": SCHEMA_VERSION, "prune": migrated}


def _expanded_size(node: yaml.Node, sizes: dict[int, int], open_nodes: set[int]) -> int:
    """Nodes in ``node`` with every alias expanded (what constructing and validating it touches)."""
    key = id(node)
    if key in sizes:
        return sizes[key]
    if key in open_nodes:  # a node that contains itself expands without end
        return MAX_YAML_NODES + 1
    open_nodes.add(key)
    if isinstance(node, yaml.MappingNode):
        size = 1 + sum(
            _expanded_size(k, sizes, open_nodes) + _expanded_size(v, sizes, open_nodes) for k, v in node.value
        )
    elif isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_expanded_size(child, sizes, open_nodes) for child in node.value)
    else:
        size = 1
    open_nodes.discard(key)
    sizes[key] = min(size, MAX_YAML_NODES + 1)
    return sizes[key]


def read_yaml(text: str, where: str) -> Any:
    """Plain YAML (``SafeLoader``: no Python tags), refused before it is built when its aliases
    expand to more than 100,000 nodes (a kilobyte "billion laughs" must not become gigabytes)."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node, {}, set()) > MAX_YAML_NODES:
            raise RecipeError(f"{where}: its aliases expand to more than {MAX_YAML_NODES:,} YAML nodes; not a recipe")
        return loader.construct_document(node)
    except RecursionError:
        raise RecipeError(f"{where}: nested too deeply to be a recipe") from None
    finally:
        loader.dispose()


def recipe_names() -> list[str]:
    return sorted(p.stem for p in (data_dir("recipes")).glob("*.yaml"))


def load_recipe(name_or_path: str | Path) -> Recipe:
    """A shipped recipe by name, or a YAML file by path; clear errors for everything else."""
    path = Path(name_or_path)
    shipped = not (path.suffix in (".yaml", ".yml") and path.is_file())
    if shipped:
        if not re.fullmatch(r"[a-z0-9][a-z0-9.\-]*", str(name_or_path)):
            raise RecipeError(
                f"no recipe file {str(name_or_path)!r}, and that is not a shipped recipe's name (`obsdiff-hub "
                "recipes list`)"
            )
        path = data_dir("recipes") / f"{name_or_path}.yaml"
        if not path.is_file():
            names = recipe_names()
            close = difflib.get_close_matches(str(name_or_path), names, n=3, cutoff=0.5)
            hint = f"; did you mean {', '.join(close)}?" if close else "; `obsdiff-hub recipes list` shows them"
            raise RecipeError(f"unknown recipe {str(name_or_path)!r}{hint}")
    if path.stat().st_size > MAX_RECIPE_BYTES:
        raise RecipeError(f"{path}: larger than {MAX_RECIPE_BYTES >> 10} KiB, not a recipe")
    try:
        data = read_yaml(path.read_text(encoding="utf-8"), str(path))
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise RecipeError(
            f"{path}: not valid YAML (only plain YAML is read, no Python tags): {error}".splitlines()[0]
        ) from error
    recipe = validate_recipe(data, str(path))
    recipe._folder = None if shipped else path.resolve().parent
    return recipe
