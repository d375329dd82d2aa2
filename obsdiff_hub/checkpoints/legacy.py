"""Convert the reference project's whole-module ``.pth`` pickles without running anything in them.

The reference publishes ``torch.save(module)`` files, which ``torch.load`` can only open
with ``weights_only=False``: arbitrary code. This reader never calls ``torch.load`` and never
resolves a name the pickle gives. It reads the zip archive itself and unpickles
``data.pkl`` with an unpickler whose ``find_class`` knows three kinds of names:

* an exact allow-list of ``(module, name)`` pairs needed to rebuild tensors and plain
  containers, each mapped to *this module's own* implementation (``_rebuild_tensor_v2``
  builds a tensor over storage read from the archive, ``OrderedDict`` is the real one);
* classes of the module tree (``torch.nn.modules.*``, ``diffusers.models.*``, diffusers'
  ``FrozenDict`` config): inert stand-ins that record their arguments and state and never
  touch the real class; they may be instantiated, never called;
* everything else (``os.system``, ``builtins.eval``, ``subprocess.Popen`` and its torch
  re-exports, ``copyreg``, dotted names, ``torch.load``, diffusers functions, ...): refused
  by name, at the moment the pickle names it.

The converter then reads the module tree (``_modules``, ``_parameters``, ``_buffers``) and the
diffusers config (``_internal_dict``) out of the stand-ins, builds the model itself from that
config, and saves it as safetensors. Whatever it cannot map is refused by name.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

import torch
from diffusers import ModelMixin

from ..architectures import HeadCoupling, architecture_of
from ..architectures.surgery import structure_of
from ..errors import CheckpointError
from ..models import BASE_CLASSES, build_model, provenance
from .saving import save_pruned


class UnsafePickleError(CheckpointError):
    """The file names code outside the allow-list, or is not a model checkpoint; nothing from it ran."""


_STORAGE_DTYPES = {
    "DoubleStorage": torch.float64,
    "FloatStorage": torch.float32,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
}
_MODEL_NAMES = {f"{c.__module__}.{c.__qualname__}": c for c in BASE_CLASSES}
_PLAIN = (str, int, float, bool, type(None))


class _StorageType:
    """What ``torch.FloatStorage`` etc. stand for in a persistent id: just a dtype."""

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype


class _Storage:
    """One storage read from the archive: raw bytes and the dtype the pickle declared."""

    def __init__(self, data: bytes, dtype: torch.dtype) -> None:
        self.dtype = dtype
        self.untyped = (
            torch.frombuffer(bytearray(data), dtype=torch.uint8).untyped_storage() if data else torch.UntypedStorage(0)
        )


class _Inert:
    """An instance of a class the pickle named: records what the pickle gave it, runs nothing."""

    qualified = ""

    def __new__(cls, *args: Any) -> _Inert:
        obj = object.__new__(cls)
        obj.args = args
        obj.state = None
        obj.items = {}
        return obj

    def __init__(self, *args: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self.items[key] = value


class _InertMeta(type):
    """Stand-in classes may be instantiated (NEWOBJ, BUILD) but not called (REDUCE) unless they are
    configs, whose pickles call them with no arguments and then set items."""

    def __call__(cls, *args: Any) -> Any:
        if not cls.callable_without_args or args:  # type: ignore[attr-defined]
            raise UnsafePickleError(
                f"refusing to convert: the pickle calls {cls.qualified} with arguments, which a module checkpoint "
                "never does"
            )  # type: ignore[attr-defined]
        return super().__call__()


def _stand_in(qualified: str, callable_without_args: bool = False) -> type:
    return _InertMeta(
        qualified.rsplit(".", 1)[-1],
        (_Inert,),
        {"qualified": qualified, "callable_without_args": callable_without_args},
    )


def _natural_ints(values: Any) -> bool:
    """A tuple of non-negative ints (a tensor record's size or stride)."""
    return isinstance(values, tuple) and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in values)


def _rebuild_tensor_v2(
    storage: Any,
    offset: Any,
    size: Any,
    stride: Any,
    requires_grad: Any = False,
    hooks: Any = None,
    metadata: Any = None,
) -> torch.Tensor:
    if (
        not isinstance(storage, _Storage)
        or not isinstance(offset, int)
        or offset < 0
        or not _natural_ints(size)
        or not _natural_ints(stride)
        or len(size) != len(stride)
    ):
        raise UnsafePickleError("refusing to convert: a tensor record is malformed")
    tensor = torch.empty(0, dtype=storage.dtype)
    try:
        tensor.set_(storage.untyped, offset, size, stride)  # bounds-checked against the storage
    except RuntimeError as error:
        raise UnsafePickleError(f"refusing to convert: a tensor lies outside its storage ({error})") from error
    if not tensor.is_contiguous():  # stride 0 or overlap: a few bytes standing for gigabytes
        raise UnsafePickleError("refusing to convert: a tensor record is not dense (zero or overlapping strides)")
    return tensor


def _rebuild_parameter(data: Any, requires_grad: Any = False, hooks: Any = None, *state: Any) -> torch.Tensor:
    if not isinstance(data, torch.Tensor):
        raise UnsafePickleError("refusing to convert: a parameter record holds no tensor")
    return data


def _size(values: Any = ()) -> tuple[int, ...]:
    if not isinstance(values, (tuple, list)) or not all(isinstance(v, int) for v in values):
        raise UnsafePickleError("refusing to convert: a torch.Size record is malformed")
    return tuple(values)


def _set(values: Any = ()) -> set:
    if not isinstance(values, (list, tuple)) or not all(isinstance(v, _PLAIN) for v in values):
        raise UnsafePickleError("refusing to convert: a set record is malformed")
    return set(values)


_SAFE: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("builtins", "set"): _set,
    ("__builtin__", "set"): _set,
    ("torch", "Size"): _size,
    **{("torch", name): _StorageType(dtype) for name, dtype in _STORAGE_DTYPES.items()},
}
_CONFIG_CLASS = ("diffusers.configuration_utils", "FrozenDict")
_TREE_MODULES = ("torch.nn.modules.", "diffusers.models.")


def _load_build(unpickler: pickle._Unpickler) -> None:
    """BUILD sets state on stand-ins only (on a real tensor it could plant ``_backward_hooks``)."""
    state = unpickler.stack.pop()
    instance = unpickler.stack[-1]
    if not isinstance(instance, _Inert):
        raise UnsafePickleError(f"refusing to convert: the pickle sets state on a {type(instance).__name__}")
    instance.__setstate__(state)


class _InertUnpickler(pickle._Unpickler):
    """The pure-Python unpickler, so that opcode handling can be narrowed (see :func:`_load_build`)."""

    dispatch = {**pickle._Unpickler.dispatch, pickle.BUILD[0]: _load_build}

    def __init__(self, file: io.BufferedIOBase, archive: zipfile.ZipFile | None, prefix: str) -> None:
        super().__init__(file)
        self.archive = archive
        self.prefix = prefix
        self.classes: dict[str, type] = {}
        self.storages: dict[str, _Storage] = {}  # read once per key, as torch does

    def find_class(self, module: str, name: str) -> Any:  # noqa: D102 - pickle's hook
        qualified = f"{module}.{name}"
        if (module, name) in _SAFE:
            return _SAFE[(module, name)]
        tree_class = module.startswith(_TREE_MODULES) and name.isidentifier() and name[:1].isupper()
        if (module, name) == _CONFIG_CLASS or tree_class:
            if qualified not in self.classes:
                self.classes[qualified] = _stand_in(qualified, callable_without_args=(module, name) == _CONFIG_CLASS)
            return self.classes[qualified]
        raise UnsafePickleError(
            f"refusing to convert: the pickle references {qualified}, which a model checkpoint never needs; "
            "nothing in it was run"
        )

    def persistent_load(self, pid: Any) -> _Storage:  # noqa: D102 - pickle's hook
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], _StorageType)):
            raise UnsafePickleError("refusing to convert: unexpected persistent record in the pickle")
        key = pid[2]
        if self.archive is None or not isinstance(key, str) or not key.isascii() or not key.isdigit():
            raise UnsafePickleError("refusing to convert: a storage record names no archive entry")
        if key not in self.storages:
            self.storages[key] = _Storage(_stored_entry(self.archive, f"{self.prefix}data/{key}"), pid[1].dtype)
        return self.storages[key]


def _stored_entry(archive: zipfile.ZipFile, name: str) -> bytes:
    """An archive entry's bytes; torch.save stores entries uncompressed, so a compressed one
    (a zip bomb: kilobytes standing for gigabytes) is refused before it is inflated."""
    try:
        info = archive.getinfo(name)
    except KeyError as error:
        raise UnsafePickleError(f"refusing to convert: {name} is missing from the archive") from error
    if info.compress_type != zipfile.ZIP_STORED:
        raise UnsafePickleError(f"refusing to convert: {name} is compressed, which torch.save never does")
    return archive.read(info)


def inert_load(path: str | os.PathLike) -> Any:
    """Unpickle a ``torch.save`` file into plain containers, tensors and inert stand-ins."""
    path = Path(path)
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                pickles = [n for n in archive.namelist() if PurePosixPath(n).name == "data.pkl"]
                if len(pickles) != 1:
                    raise UnsafePickleError(f"{path}: not a torch checkpoint (expected one data.pkl in the archive)")
                prefix = pickles[0][: -len("data.pkl")]
                order = f"{prefix}byteorder"
                if order in archive.namelist() and archive.read(order).strip() != b"little":
                    raise UnsafePickleError(f"{path}: big-endian checkpoints are not supported")
                return _InertUnpickler(io.BytesIO(_stored_entry(archive, pickles[0])), archive, prefix).load()
        with open(path, "rb") as f:
            _InertUnpickler(f, None, "").load()  # surfaces any forbidden name first
        raise UnsafePickleError(f"{path}: not a zip-format torch checkpoint (torch >= 1.6); nothing was converted")
    except UnsafePickleError:
        raise
    except RecursionError as error:
        raise UnsafePickleError(f"{path}: the pickle nests too deeply to be a checkpoint") from error
    except (
        pickle.UnpicklingError,
        EOFError,
        zipfile.BadZipFile,
        ValueError,
        TypeError,
        AttributeError,
        IndexError,
        KeyError,
        OSError,
    ) as error:
        raise UnsafePickleError(
            f"{path}: not a readable torch checkpoint ({type(error).__name__}: {error})".splitlines()[0]
        ) from error


def _plain(value: Any, where: str) -> Any:
    """Config values must be plain data; stand-ins or tensors in a config are refused."""
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v, where) for v in value]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: _plain(v, f"{where}.{k}") for k, v in value.items()}
    raise UnsafePickleError(f"refusing to convert: config entry {where} is a {type(value).__name__}, not plain data")


def _state(node: Any, where: str) -> dict:
    if not isinstance(node, _Inert) or not isinstance(node.state, dict):
        raise UnsafePickleError(f"refusing to convert: {where} is not a module")
    return node.state


def _table(state: dict, key: str, where: str) -> dict:
    table = state.get(key, {})
    if not isinstance(table, dict):
        raise UnsafePickleError(f"refusing to convert: {where}{key} is a {type(table).__name__}, not a table")
    return table


def _tensors(node: Any, prefix: str, out: dict[str, torch.Tensor], depth: int = 0) -> None:
    """Flatten a stand-in module tree into a state dict (parameters and persistent buffers)."""
    if depth > 64:
        raise UnsafePickleError("refusing to convert: the module tree is cyclic or implausibly deep")
    state = _state(node, prefix.rstrip(".") or "the root")
    skip = state.get("_non_persistent_buffers_set", set())
    if not isinstance(skip, set):
        raise UnsafePickleError(f"refusing to convert: {prefix}_non_persistent_buffers_set is not a set")
    for table in ("_parameters", "_buffers"):
        for name, tensor in _table(state, table, prefix).items():
            if tensor is None or (table == "_buffers" and name in skip):
                continue
            if not isinstance(name, str) or not isinstance(tensor, torch.Tensor):
                raise UnsafePickleError(f"refusing to convert: {prefix}{name} is not a tensor")
            out[prefix + name] = tensor
    for name, child in _table(state, "_modules", prefix).items():
        if child is not None:
            if not isinstance(name, str) or not name.isidentifier() and not name.isdigit():
                raise UnsafePickleError(f"refusing to convert: module name {name!r} under {prefix or 'the root'}")
            _tensors(child, f"{prefix}{name}.", out, depth + 1)


def read_legacy_model(path: str | os.PathLike) -> tuple[type[ModelMixin], dict[str, Any], dict[str, torch.Tensor]]:
    """The diffusers class, config and state dict of a legacy whole-module pickle."""
    root = inert_load(path)
    qualified = getattr(type(root), "qualified", type(root).__name__)
    if not isinstance(root, _Inert) or qualified not in _MODEL_NAMES:
        supported = ", ".join(c.__name__ for c in BASE_CLASSES)
        raise UnsafePickleError(f"{path} holds a {qualified}, not a pickled {supported}; nothing was converted")
    config_node = _state(root, "the root").get("_internal_dict")
    if not isinstance(config_node, _Inert) or type(config_node).qualified != ".".join(_CONFIG_CLASS):
        raise UnsafePickleError(f"{path}: the model carries no diffusers config (_internal_dict)")
    config = {str(k): _plain(v, str(k)) for k, v in config_node.items.items()}
    tensors: dict[str, torch.Tensor] = {}
    _tensors(root, "", tensors)
    return _MODEL_NAMES[qualified], config, tensors


def convert_legacy(
    path: str | os.PathLike, output_dir: str | os.PathLike | None = None, *, overwrite: bool = False
) -> ModelMixin:
    """Read a legacy whole-module checkpoint without executing it; return (and optionally save) a clean model.

    Pruned shapes are read from the weights (rows of q/k/v, widths of FFN inputs), not from
    possibly stale module attributes, and the model is built from config + structure.
    """
    cls, config, tensors = read_legacy_model(path)
    config = {k: v for k, v in config.items() if not k.startswith(("obsdiff_", "_obsdiff_"))}
    config["_class_name"] = cls.__name__
    try:
        skeleton = build_model(config)
    except (TypeError, ValueError, RuntimeError, AttributeError, KeyError, IndexError) as error:
        raise UnsafePickleError(
            f"{path}: its config does not build a {cls.__name__} ({type(error).__name__}: {error})".splitlines()[0]
        ) from error
    architecture = architecture_of(skeleton)
    dense = structure_of(skeleton, architecture)
    structure: dict[str, int] = {}
    for c in architecture.couplings(skeleton):
        source = c.row_layers[0] if isinstance(c, HeadCoupling) else c.in_layer
        key = f"{source}.weight"
        if key not in tensors or tensors[key].dim() != 2:
            raise UnsafePickleError(
                f"{path}: {key} is missing or not a matrix; this is not a {cls.__name__} checkpoint"
            )
        rows = tensors[key].shape[0]
        structure[c.key] = rows // c.head_dim if isinstance(c, HeadCoupling) else (rows // 2 if c.geglu else rows)
    model = build_model(config, structure=structure if structure != dense else None)
    try:
        model.load_state_dict(tensors, strict=True, assign=True)
    except RuntimeError as error:
        raise UnsafePickleError(
            f"{path}: the weights do not fit a {cls.__name__} built from its config ({str(error).splitlines()[0]})"
        ) from error
    model.eval()
    if output_dir is not None:
        save_pruned(model, output_dir, record=provenance(converted_from=Path(path).name), overwrite=overwrite)
    return model
