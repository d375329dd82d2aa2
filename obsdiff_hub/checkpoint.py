"""Pruned checkpoints: safetensors with provenance, written atomically, diagnosed on failure.

Layout follows diffusers exactly (``config.json``, ``diffusion_pytorch_model[-0000k-of-0000n]
[.variant].safetensors`` + index), so stock loaders find the files. Structured results are
saved as ``OBSDiff*`` classes whose config records the pruned shapes; unstructured and N:M
results keep their diffusers class and load without obsdiff_hub.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch
from diffusers import (
    ModelMixin,
)
from huggingface_hub import split_torch_state_dict_into_shards
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from . import __version__
from .adapters import adapter_for
from .models import (
    BASE_CLASSES,
    PROVENANCE_KEY,
    STRUCTURE_KEY,
    base_class_for,
    pruned_class_for,
)
from .surgery import structure_of

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
INDEX_NAME = "diffusion_pytorch_model.safetensors.index.json"


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded or written; the message names the file and the fix."""


def with_variant(name: str, variant: str | None) -> str:
    """``diffusion_pytorch_model.safetensors`` → ``diffusion_pytorch_model.fp16.safetensors`` (diffusers' rule)."""
    if not variant:
        return name
    stem, ext = name.rsplit(".safetensors", 1)
    return f"{stem}.{variant}.safetensors{ext}"


def provenance(**fields: Any) -> dict[str, str]:
    """String → string provenance (safetensors metadata allows nothing else); None fields are dropped."""
    record = {"obsdiff_hub_version": __version__}
    record.update({k: str(v) for k, v in fields.items() if v is not None})
    return record


def mark_pruned(model: ModelMixin, record: dict[str, str]) -> ModelMixin:
    """Record provenance in the config; promote structurally pruned models to their OBSDiff class.

    The OBSDiff classes add no state, only the config entries, so switching the instance's
    class in place is exact and avoids copying the weights.
    """
    dense = _dense_structure(model)
    structure = structure_of(model, adapter_for(model))
    if structure != dense:
        model.__class__ = pruned_class_for(model)
        model.register_to_config(**{STRUCTURE_KEY: structure})
    model.register_to_config(**{PROVENANCE_KEY: dict(record)})
    return model


def _dense_structure(model: ModelMixin) -> dict[str, int]:
    from accelerate import init_empty_weights

    base = base_class_for(model)
    config = {k: v for k, v in model.config.items() if k not in (STRUCTURE_KEY, PROVENANCE_KEY)}
    with init_empty_weights():
        skeleton = base.from_config(config)
    return structure_of(skeleton, adapter_for(skeleton))


def write_safetensors(
    model: ModelMixin,
    directory: str | os.PathLike,
    *,
    variant: str | None = None,
    torch_dtype: torch.dtype | None = None,
    max_shard_size: int | str = "10GB",
    metadata: dict[str, str] | None = None,
    **_: Any,
) -> None:
    """Write ``config.json`` and safetensors shards (+ index), metadata in every shard header.

    Accepts and ignores the extra keywords ``DiffusionPipeline.save_pretrained`` passes.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_config(directory)
    state = {k: (v.to(torch_dtype) if torch_dtype is not None and v.is_floating_point() else v) for k, v in model.state_dict().items()}
    pattern = with_variant(WEIGHTS_NAME, variant).replace(".safetensors", "{suffix}.safetensors")
    split = split_torch_state_dict_into_shards(state, max_shard_size=max_shard_size, filename_pattern=pattern)
    header = {"format": "pt", **(metadata or {})}
    for filename, names in split.filename_to_tensors.items():
        save_file({n: state[n].contiguous() for n in names}, directory / filename, metadata=header)
    if split.is_sharded:
        index = {"metadata": dict(split.metadata), "weight_map": split.tensor_to_filename}
        (directory / with_variant(INDEX_NAME, variant)).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


@contextmanager
def _provenance_on_save(model: ModelMixin, metadata: dict[str, str], torch_dtype: torch.dtype | None) -> Iterator[None]:
    """Make ``pipeline.save_pretrained`` write this component with :func:`write_safetensors`."""
    model.save_pretrained = functools.partial(write_safetensors, model, metadata=metadata, torch_dtype=torch_dtype)  # type: ignore[method-assign]
    try:
        yield
    finally:
        del model.save_pretrained


@contextmanager
def atomic_directory(target: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temp dir beside ``target``; rename it into place only if the block succeeds."""
    target = Path(target)
    if target.exists() and not overwrite:
        raise CheckpointError(f"{target} already exists; choose another output directory or pass overwrite")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield tmp
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def save_pruned(
    target: Any,
    directory: str | os.PathLike,
    *,
    record: dict[str, str] | None = None,
    variant: str | None = None,
    torch_dtype: torch.dtype | None = None,
    max_shard_size: int | str = "10GB",
    overwrite: bool = False,
    extra_files: dict[str, str | bytes] | None = None,
) -> Path:
    """Save a pruned pipeline (full diffusers layout) or denoiser (component layout), atomically.

    ``record`` is the provenance (see :func:`provenance`), written to config.json and to
    every safetensors header. ``torch_dtype``/``variant`` give e.g. fp16 files named
    ``*.fp16.safetensors``. ``extra_files`` (name → content: recipe, report, card) are
    written into the same directory before it is renamed into place.
    """
    from .calibration import denoiser_name

    record = record or provenance()
    model = target if isinstance(target, ModelMixin) else getattr(target, denoiser_name(target))
    mark_pruned(model, record)
    if model is not target:  # model_index.json must name the (possibly promoted) class
        target.register_modules(**{denoiser_name(target): model})
    with atomic_directory(directory, overwrite) as tmp:
        if model is target:
            write_safetensors(model, tmp, variant=variant, torch_dtype=torch_dtype, max_shard_size=max_shard_size, metadata=record)
        else:
            with _provenance_on_save(model, record, torch_dtype):
                target.save_pretrained(tmp, safe_serialization=True, variant=variant, max_shard_size=max_shard_size)
        for name, content in (extra_files or {}).items():
            path = tmp / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return Path(directory)


# --------------------------------------------------------------------------- diagnosis


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The safetensors header metadata of one file (no tensor data is read)."""
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def _weight_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.safetensors"))


def diagnose(folder: str | os.PathLike, model_class: type[ModelMixin] | None = None) -> str | None:
    """Explain why the checkpoint in ``folder`` does not load, in one line (None if no fault found).

    Checks, in order: missing shards named by an index, unreadable or truncated files,
    a structured checkpoint opened with a plain class, and tensor shapes that disagree
    with what the config builds (meta device, nothing allocated).
    """
    folder = Path(folder)
    for index in folder.glob("*.safetensors.index.json"):
        shards = set(json.loads(index.read_text())["weight_map"].values())
        missing = sorted(s for s in shards if not (folder / s).is_file())
        if missing:
            return f"{folder / missing[0]}: shard listed in {index.name} is missing; re-download the checkpoint"
    shapes: dict[str, tuple[int, ...]] = {}
    for path in _weight_files(folder):
        try:
            with safe_open(str(path), framework="pt") as f:
                for key in f.keys():
                    shapes[key] = tuple(f.get_slice(key).get_shape())
        except (SafetensorError, OSError, RuntimeError) as error:
            return f"{path}: truncated or corrupted safetensors file ({error}); delete it and download again"
    config_path = folder / "config.json"
    if not config_path.is_file():
        return f"{config_path}: missing config.json"
    config = json.loads(config_path.read_text())
    if config.get(STRUCTURE_KEY) and model_class is not None and STRUCTURE_KEY not in _init_keys(model_class):
        pruned = config.get("_class_name", "the OBSDiff class")
        return (
            f"{folder} holds a structurally pruned model (per-block head counts and FFN widths); "
            f"load it with obsdiff_hub.{pruned}.from_pretrained(...) instead of {model_class.__name__}"
        )
    if model_class is not None:
        mismatch = _shape_mismatch(model_class, config, shapes)
        if mismatch:
            return f"{folder}: {mismatch}"
    return None


def _init_keys(cls: type) -> set[str]:
    import inspect

    return set(inspect.signature(cls.__init__).parameters)


def _shape_mismatch(model_class: type[ModelMixin], config: dict, shapes: dict[str, tuple[int, ...]]) -> str | None:
    from accelerate import init_empty_weights

    with init_empty_weights():
        skeleton = model_class.from_config(config)
    expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    for key, shape in shapes.items():
        if key in expected and expected[key] != shape:
            module = key.rsplit(".", 1)[0]
            return f"module {module}: config builds {key} as {list(expected[key])} but the file holds {list(shape)}"
    return None


def _local_folder(path: str, kwargs: dict[str, Any]) -> Path | None:
    subfolder = kwargs.get("subfolder") or ""
    if os.path.isdir(path):
        return Path(path) / subfolder
    try:
        from huggingface_hub import snapshot_download

        snapshot = snapshot_download(
            path, revision=kwargs.get("revision"), cache_dir=kwargs.get("cache_dir"), local_files_only=True
        )
        return Path(snapshot) / subfolder
    except Exception:  # not in the cache: nothing local to diagnose
        return None


def _verify_before_load(source: str, kwargs: dict[str, Any]) -> None:
    """``verify=True``: check the repo's obsdiff manifest (downloading the snapshot if needed)."""
    from .hub import verify_manifest

    if os.path.isdir(source):
        root = Path(source)
    else:
        from huggingface_hub import snapshot_download

        root = Path(
            snapshot_download(
                source,
                revision=kwargs.get("revision"),
                cache_dir=kwargs.get("cache_dir"),
                token=kwargs.get("token"),
                local_files_only=kwargs.get("local_files_only", False),
            )
        )
    verify_manifest(root, kwargs.get("subfolder"))


def _explained(load: Any) -> Any:
    """Wrap ``from_pretrained``: ``verify=True`` (manifest check), ``sparse_kernels=True`` (2:4
    kernels on CUDA), and one-line errors when a load fails."""

    @functools.wraps(load)
    def from_pretrained(cls: type[ModelMixin], pretrained_model_name_or_path: str | os.PathLike, *args: Any, **kwargs: Any) -> Any:
        if kwargs.pop("verify", False):
            _verify_before_load(str(pretrained_model_name_or_path), kwargs)
        sparse_kernels = kwargs.pop("sparse_kernels", False)
        try:
            model = load.__func__(cls, pretrained_model_name_or_path, *args, **kwargs)
        except Exception as error:
            folder = _local_folder(str(pretrained_model_name_or_path), kwargs)
            reason = diagnose(folder, cls) if folder is not None and folder.is_dir() else None
            if reason is None:
                raise
            raise CheckpointError(reason) from error
        if sparse_kernels:
            from .sparse import enable_sparse_kernels

            enable_sparse_kernels(model)
        return model

    return classmethod(from_pretrained)


def install_load_diagnostics() -> None:
    """Give the three diffusers base classes (and so the OBSDiff ones) one-line load errors.

    Only the failure path changes: a checkpoint that loads is untouched. Idempotent.
    """
    for cls in BASE_CLASSES:
        if not getattr(cls.from_pretrained, "_obsdiff_wrapped", False):
            cls.from_pretrained = _explained(cls.from_pretrained)
            cls.from_pretrained.__func__._obsdiff_wrapped = True  # type: ignore[attr-defined]
