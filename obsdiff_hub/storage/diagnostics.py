"""Why a checkpoint does not load, in one line.

Used when a load has already failed (never before: unused variants or stray folders beside the
components must not stop a load diffusers would do). Everything here reads files and builds
empty skeletons on the meta device; nothing is executed or written. The model class is handed
in by the caller, so this layer knows no model class of its own.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import diffusers
import torch
import transformers
from accelerate import init_empty_weights

from ..errors import CheckpointError, ObsDiffError
from .files import check_config_bounds, checkpoint_files, read_json, tensor_shapes

LIBRARIES = {"diffusers": diffusers, "transformers": transformers}  # what a model_index.json names most


def expected_shapes(model_class: Any, config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """The tensor shapes ``model_class`` builds from ``config`` (on the meta device: nothing is allocated)."""
    check_config_bounds(config, "config.json")
    with init_empty_weights():
        skeleton = model_class.from_config({k: v for k, v in config.items() if not k.startswith("_")})
    return {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}


def check_pipeline_configs(folder: Path) -> None:
    """A pipeline folder checked before anything is built from it: every component ``model_index.json``
    declares is a ``[library, class]`` pair whose class really is a class of a library diffusers loads
    from (nothing a file names is called), and every component config asks for sane sizes
    (:func:`~obsdiff_hub.storage.files.check_config_bounds`); and no file in it is a special file or
    a link out of it (:func:`~obsdiff_hub.storage.files.readable_file`)."""
    checkpoint_files(folder)
    index = folder / "model_index.json"
    if not index.is_file():
        return
    for name, value in read_json(index).items():
        if name.startswith("_") or not isinstance(value, list):
            continue
        if len(value) != 2 or not all(v is None or isinstance(v, str) for v in value):
            raise CheckpointError(f"{index}: component {name} must be declared as [library, class]")
        library, class_name = value
        if (
            library in LIBRARIES
            and class_name is not None
            and not isinstance(getattr(LIBRARIES[library], class_name, None), type)
        ):
            raise CheckpointError(
                f"{index}: component {name} is declared as {library}.{class_name}, which is not a class; the "
                "pipeline cannot load"
            )
        config = folder / name / "config.json"
        if config.is_file():
            check_config_bounds(read_json(config), str(config))
        # tokenizer and scheduler files too: bounded in size and nesting before a library reads them
        for other in sorted((folder / name).glob("*.json")) if (folder / name).is_dir() else []:
            read_json(other)


def diagnose(folder: Path, model_class: Any) -> str | None:
    """Explain why the checkpoint in ``folder`` does not load as ``model_class``, in one line (None if no fault found).

    Checks, in order: missing shards named by an index, unreadable or truncated files, and
    tensor shapes that disagree with what the config builds.
    """
    try:
        for index in folder.glob("*.safetensors.index.json"):
            shards = set(read_json(index).get("weight_map", {}).values())
            missing = sorted(s for s in shards if not (folder / str(s)).is_file())
            if missing:
                return f"{folder / missing[0]}: shard listed in {index.name} is missing; re-download the checkpoint"
        shapes = tensor_shapes(folder)
        config_path = folder / "config.json"
        if not config_path.is_file():
            return f"{config_path}: missing config.json"
        expected = expected_shapes(model_class, read_json(config_path))
    except CheckpointError as error:
        return str(error)
    except (ValueError, TypeError, KeyError, AttributeError, IndexError) as error:
        return f"{folder / 'config.json'}: {(str(error).splitlines() or [type(error).__name__])[0]}"
    for key, shape in shapes.items():
        if key in expected and expected[key] != shape:
            module = key.rsplit(".", 1)[0]
            return (
                f"{folder}: module {module}: config builds {key} as {list(expected[key])} but the file holds "
                f"{list(shape)}"
            )
    return None


@contextmanager
def explained_pipeline_failure(source: str, folder: Path | None) -> Iterator[None]:
    """A failed load of the pipeline ``source`` (read from ``folder``, if local) becomes one
    :class:`CheckpointError` line: the first truncated or corrupted safetensors file of a component
    that ``model_index.json`` lists, else the loader's own first line. Checked only after a
    failure: unused variants or stray folders beside the components never stop a load. Errors of
    this package and running out of memory pass through unchanged."""
    try:
        yield
    except (ObsDiffError, MemoryError, torch.OutOfMemoryError):
        raise
    except Exception as error:
        index = folder / "model_index.json" if folder is not None else None
        if index is not None and index.is_file():
            for name, value in read_json(index).items():
                if not name.startswith("_") and isinstance(value, list) and (folder / name).is_dir():
                    tensor_shapes(folder / name)  # raises the CheckpointError naming a corrupted file
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise CheckpointError(f"{source}: the pipeline does not load ({type(error).__name__}: {reason})") from error
