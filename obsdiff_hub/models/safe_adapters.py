"""The adapter loaders (LoRA, IP-Adapter) of a loaded pipeline: safetensors files only, tensors finite floating
point, a dense LoRA mapped onto the pruned denoiser.

diffusers' adapter loaders fall back to ``torch.load`` for a ``.bin`` file (pickles can run code), and
take NaN or integer tensors as they come. The ``OBSDiff*`` classes check in their own loaders; a
pipeline from :func:`obsdiff_hub.load_pipeline` gets guards set on its instance and on its components'
instances (:func:`guard_adapter_loaders`), so diffusers' classes stay as diffusers ships them.
"""

from __future__ import annotations

import functools
import inspect
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from transformers import CLIPVisionModelWithProjection

from ..errors import InputError

PIPELINE_LOADERS = ("load_lora_weights", "load_ip_adapter")
COMPONENT_LOADERS = ("load_lora_adapter", "load_attn_procs")


def safetensors_only(weight_name: Any, use_safetensors: Any) -> bool:
    """``use_safetensors=True`` for an adapter file, or a one-line error: a ``.bin`` (or any other) weight file
    is a pickle, which can run code, and this tool reads safetensors only."""
    if use_safetensors is False or (weight_name is not None and not str(weight_name).endswith(".safetensors")):
        raise InputError(
            f"obsdiff-hub loads adapters from safetensors files only (a pickled {str(weight_name or 'file')[:80]!r} "
            "can run code); convert it with safetensors.torch.save_file, or load it into the dense base"
        )
    return True


def check_adapter_tensors(state_dict: Mapping[str, Any], where: str = "") -> None:
    """Every adapter tensor (nested mappings included: an IP-Adapter's ``image_proj`` / ``ip_adapter``) a
    finite floating-point tensor, else one line naming the first that is not."""
    for key, value in state_dict.items():
        name = f"{where}{key}"
        if isinstance(value, Mapping):
            check_adapter_tensors(value, f"{name}.")
            continue
        if not isinstance(value, torch.Tensor) or not value.is_floating_point():
            kind = value.dtype if isinstance(value, torch.Tensor) else type(value).__name__
            raise InputError(f"adapter tensor {name[:120]} is {kind}, not floating point; not an adapter's weight")
        if not bool(torch.isfinite(value).all()):
            raise InputError(f"adapter tensor {name[:120]} holds NaN or Inf; the adapter file is damaged")


def _guard(owner: Any, name: str, check: Callable[[Any, Any], Any], after: bool = False) -> None:
    """Replace ``owner.name`` on the instance by a version that runs ``check`` on its bound arguments first (or,
    ``after``, on its result, which ``check`` returns, checked or replaced)."""
    method = getattr(owner, name, None)
    if method is None or getattr(method, "obsdiff_guarded", False):
        return
    signature = inspect.signature(method)

    def guarded(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind_partial(*args, **kwargs)
        if not after:
            check(owner, bound)
        result = method(*bound.args, **bound.kwargs)
        return check(owner, result) if after else result

    guarded.obsdiff_guarded = True  # type: ignore[attr-defined]
    setattr(owner, name, functools.wraps(method)(guarded))


def _files_only(owner: Any, bound: inspect.BoundArguments) -> None:
    """A file source must be safetensors (and is then asked for as such); a state dict's tensors are checked."""
    arguments = bound.arguments
    variadic = next((p.name for p in bound.signature.parameters.values() if p.kind is p.VAR_KEYWORD), None)
    extra = arguments.get(variadic, {}) if variadic else {}
    source = next(iter(arguments.values()), None)
    if isinstance(source, Mapping):
        check_adapter_tensors(source)
        return
    names = arguments.get("weight_name", extra.get("weight_name"))
    use = arguments.get("use_safetensors", extra.get("use_safetensors"))
    for weight_name in names if isinstance(names, (list, tuple)) else [names]:
        safetensors_only(weight_name, use)
    if "use_safetensors" in bound.signature.parameters:
        arguments["use_safetensors"] = True
    elif variadic and bound.signature.parameters.get("weight_name") is None:  # LoRA loaders take it as a keyword
        arguments.setdefault(variadic, {})["use_safetensors"] = True


def _checked_and_mapped(pipeline: Any, result: Any) -> Any:
    """``lora_state_dict``'s result with its tensors checked and the denoiser's LoRA tensors made for the dense
    base already cut to the pruned shapes: diffusers' Flux loader compares them with the layers (and widens the
    layers, for Flux Control LoRAs) before the pruned model's own ``load_lora_adapter`` can map them."""
    state_dict = result[0] if isinstance(result, tuple) else result
    check_adapter_tensors(state_dict)
    for prefix in ("unet", "transformer"):
        mapped_lora = getattr(getattr(pipeline, prefix, None), "mapped_lora", None)
        if mapped_lora is not None:
            state_dict = mapped_lora(state_dict, prefix)
    return (state_dict, *result[1:]) if isinstance(result, tuple) else state_dict


def _image_encoder_from_safetensors(pipeline: Any, bound: inspect.BoundArguments) -> None:
    """``load_ip_adapter`` loads a missing image encoder through transformers, which reads a ``.bin``: loaded here
    first, from safetensors only, as diffusers would find it."""
    _files_only(pipeline, bound)
    arguments = bound.arguments
    source, folder = next(iter(arguments.values()), None), arguments.get("image_encoder_folder", "image_encoder")
    if getattr(pipeline, "image_encoder", 1) is not None or folder is None or isinstance(source, Mapping):
        return
    subfolder = arguments.get("subfolder")
    subfolder = subfolder[0] if isinstance(subfolder, (list, tuple)) else subfolder or ""
    sources = source if isinstance(source, (list, tuple)) else [source]
    within = Path(subfolder, folder).as_posix() if folder.count("/") == 0 else Path(folder).as_posix()
    extra = arguments.get("kwargs", {})
    options = {k: v for k, v in extra.items() if k in ("cache_dir", "local_files_only")}
    encoder = CLIPVisionModelWithProjection.from_pretrained(
        sources[0], subfolder=within, use_safetensors=True, dtype=pipeline.dtype, **options
    )
    pipeline.register_modules(image_encoder=encoder.to(pipeline.device))


def guard_adapter_loaders(pipeline: Any) -> Any:
    """``pipeline`` with every adapter loader of it and of its components guarded (see the module docstring)."""
    _guard(pipeline, "load_lora_weights", _files_only)
    _guard(pipeline, "lora_state_dict", _checked_and_mapped, after=True)  # text encoders' LoRAs too
    _guard(pipeline, "load_ip_adapter", _image_encoder_from_safetensors)  # names its weight file: no flag
    for component in getattr(pipeline, "components", {}).values():
        for name in COMPONENT_LOADERS:
            _guard(component, name, _files_only)
        _guard(component, "_load_ip_adapter_weights", lambda owner, bound: _ip_tensors(bound))
    return pipeline


def _ip_tensors(bound: inspect.BoundArguments) -> None:
    state_dicts = next(iter(bound.arguments.values()), [])
    for state_dict in state_dicts if isinstance(state_dicts, list) else [state_dicts]:
        check_adapter_tensors(state_dict)
