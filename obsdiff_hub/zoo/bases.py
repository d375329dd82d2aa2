"""A recipe's dense base: loaded in its checkpoint's own dtype and checked against the recipe's family."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from diffusers import DiffusionPipeline

from ..architectures import architecture_of
from ..architectures.components import denoiser_of, pipeline_vae_scale, resolution_multiple
from ..errors import InputError
from ..hub import HubClient, builtin_name, local_folder_or_repo
from ..models.lazy import open_offloaded
from ..storage.diagnostics import check_pipeline_configs, explained_pipeline_failure
from ..storage.files import stored_dtype
from .recipes import Recipe
from .sampling import load_pipeline


class ModelMismatchError(InputError):
    """The model given does not belong to the recipe's family, or cannot run the recipe's settings."""


def load_base_pipeline(recipe: Recipe, offload_folder: Path | None = None) -> Any:
    """The recipe's base pipeline in its checkpoint's own dtype, checked against the recipe's family. With
    ``prune.offload: blocks-to-disk`` a base on disk is opened lazily: its denoiser's blocks stay in their
    files (their solved versions go to ``offload_folder``), so the base never has to fit in memory."""
    source = recipe.base_model.repo_id
    if builtin_name(source) is not None:
        pipeline = load_pipeline(source)
    else:
        # Download exactly the files from_pretrained reads (not every variant), then read the dtype.
        folder = local_folder_or_repo(source)
        if folder is None:
            with HubClient().errors(source, maybe_folder=True):
                folder = Path(
                    DiffusionPipeline.download(source, revision=recipe.base_model.revision, use_safetensors=True)
                )
        with explained_pipeline_failure(source, folder):
            check_pipeline_configs(folder)
            component = recipe.base_model.component
            dtype = stored_dtype(folder / component)
            lazy = (
                {component: open_offloaded(folder / component, "blocks-to-disk", offload_folder)}
                if recipe.prune.offload == "blocks-to-disk"
                else {}
            )
            pipeline = DiffusionPipeline.from_pretrained(folder, dtype=dtype, use_safetensors=True, **lazy)
    found = architecture_of(denoiser_of(pipeline)).family
    if found != recipe.base_model.family:
        raise ModelMismatchError(
            f"recipe {recipe.name} is for {recipe.base_model.family} models but {source} has a "
            f"{type(denoiser_of(pipeline)).__name__}; "
            "pick a recipe of that family (`obsdiff-hub recipes list`)"
        )
    resolution = recipe.calibration.resolution
    multiple = resolution_multiple(denoiser_of(pipeline), pipeline_vae_scale(pipeline))
    if resolution is not None and resolution % multiple:
        raise ModelMismatchError(
            f"calibration resolution {resolution} is not a multiple of {multiple}, which this model needs"
        )
    return pipeline
