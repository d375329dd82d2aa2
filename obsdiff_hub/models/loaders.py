"""The loaders the pruned classes add to diffusers' (its ``loaders/`` layout: one mixin per concern).

:class:`PrunedLoadingMixin` is ``from_pretrained`` plus manifest verification, 2:4 kernels and one-line
diagnoses of failed loads; :class:`DenseAdapterMixin` maps adapters made for the dense base (LoRA,
IP-Adapter) onto the kept heads and neurons, and warns when fusing fills a sparse checkpoint's zeros.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Mapping

import diffusers
import torch
from accelerate import init_empty_weights
from diffusers.loaders.lora_base import _fetch_state_dict
from diffusers.utils import convert_unet_state_dict_to_peft

from ..architectures import architecture_of
from ..architectures.dense_adapters import map_lora_state_dict, slice_ip_adapter_processors
from ..architectures.kept import Selection, decode, dense_selections
from ..architectures.sparse_kernels import enable_sparse_kernels
from ..architectures.surgery import structure_of
from ..errors import CheckpointError, InputError, ObsDiffError, first_line
from ..hub import HubClient, cached_snapshot, fetch
from ..storage.diagnostics import diagnose
from .keys import KEPT_KEY, PROVENANCE_KEY, STRUCTURE_KEY
from .safe_adapters import check_adapter_tensors, safetensors_only
from .single_file import exported_config, load_exported

PEFT_PARTS = ("lora_A", "lora_B", ".lokr_")  # anything else goes through the conversion, which keeps peft names


def peft_layout(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A LoRA state dict in peft key names, decided per key: diffusers' training scripts write mixed files
    (attention as ``lora.down``/``lora.up``, the FFN as ``lora_A``/``lora_B``), so converting only files with
    no peft key at all would leave the attention tensors unmapped."""
    peft = {k: v for k, v in state_dict.items() if any(part in k for part in PEFT_PARTS)}
    legacy = {k: v for k, v in state_dict.items() if k not in peft}
    converted = convert_unet_state_dict_to_peft(legacy) if legacy else {}
    clashes = sorted(set(converted) & set(peft))
    if clashes:
        raise InputError(f"LoRA file holds {clashes[0]} twice, in two key layouts; keep one of them")
    return {**peft, **converted}


class PrunedLoadingMixin:
    """``from_pretrained`` of the OBSDiff classes: the base loader plus verification, kernels and diagnostics."""

    @classmethod
    def from_single_file(cls, pretrained_model_link_or_path_or_dict: Any = None, **kwargs: Any) -> Any:
        """diffusers' ``from_single_file`` (all its arguments); a file exported by ``obsdiff-hub export`` loads
        from its own metadata (config, pruned shapes, kept indices, provenance): no config folder, no download."""
        source = pretrained_model_link_or_path_or_dict
        if isinstance(source, (str, os.PathLike)) and Path(source).is_file():
            config = exported_config(Path(source))
            if config is not None:
                return load_exported(cls, Path(source), config, kwargs.get("torch_dtype"))
        return super().from_single_file(source, **kwargs)  # type: ignore[misc]

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        *args: Any,
        verify: bool = False,
        sparse_kernels: bool = False,
        **kwargs: Any,
    ) -> Any:
        """diffusers' ``from_pretrained`` (all its arguments), plus:

        ``verify``: check the files against the repo's ``obsdiff-manifest.json`` first (a
        mismatching file is deleted from the snapshot and the load refused).
        ``sparse_kernels``: swap 2:4-sparse Linear weights to semi-structured sparse
        kernels (CUDA, compute capability ≥ 8.0, fp16/bf16).
        A failing load is explained in one line when the cause is found (missing shard,
        truncated file, config/weights mismatch naming the module).
        """
        if kwargs.get("use_safetensors") is False:
            raise InputError(
                "obsdiff-hub loads safetensors only (pickled weights can run code); leave `use_safetensors` at True"
            )
        kwargs["use_safetensors"] = True
        source = str(pretrained_model_name_or_path)
        if verify:
            fetch(
                source,
                revision=kwargs.get("revision"),
                subfolder=kwargs.get("subfolder"),
                cache_dir=kwargs.get("cache_dir"),
                local_files_only=bool(kwargs.get("local_files_only", False)),
                client=HubClient(token=kwargs.get("token")),
            )
        try:
            with HubClient(token=kwargs.get("token")).errors(source, maybe_folder=True):
                model = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)  # type: ignore[misc]
        except (ObsDiffError, MemoryError, torch.OutOfMemoryError):
            raise
        except Exception as error:
            snapshot = cached_snapshot(source, kwargs.get("revision"), kwargs.get("cache_dir"))
            folder = snapshot / (kwargs.get("subfolder") or "") if snapshot is not None else None
            if folder is None or not folder.is_dir():
                raise
            reason = (
                diagnose(folder, cls)
                or f"{folder}: does not load as {cls.__name__} ({type(error).__name__}: {first_line(error)})"
            )
            raise CheckpointError(reason) from error
        if sparse_kernels:
            enable_sparse_kernels(model)
        return model


class DenseAdapterMixin:
    """Adapters made for the dense base work on the pruned model: LoRA tensors and IP-Adapter
    projections are restricted to the kept heads and neurons; fusing into a sparse checkpoint warns."""

    def kept_selections(self) -> tuple[dict[str, Selection], bool]:
        """Per reshaped layer, the dense rows and columns it kept; and whether the checkpoint
        records its kept indices at all (checkpoints from before 0.3 do not)."""
        record = self.config.get(KEPT_KEY)  # type: ignore[attr-defined]
        if not isinstance(record, Mapping):
            return {}, not self.config.get(STRUCTURE_KEY)  # type: ignore[attr-defined]
        dense = self.dense_counts()
        for key, entry in record.items():  # bounded by the base's real sizes before anything is decoded
            where = f"{type(self).__name__} config {KEPT_KEY}[{str(key)[:80]!r}]"
            if key not in dense:
                raise CheckpointError(f"{where}: this {type(self).__name__} has no such attention or MLP")
            of = entry.get("of") if isinstance(entry, Mapping) else None
            if of != dense[key]:
                raise CheckpointError(f"{where}: records {str(of)[:20]} units where the base has {dense[key]}")
        kept = {
            key: decode(entry, f"{type(self).__name__} config {KEPT_KEY}[{key!r}]") for key, entry in record.items()
        }
        return dense_selections(self, architecture_of(self), kept, dense), True  # type: ignore[arg-type]

    def dense_counts(self) -> dict[str, int]:
        """Heads per attention and neurons per MLP of the dense base this model's config describes (from a
        meta-device skeleton of the base class, built once per model)."""
        cached = self.__dict__.get("_obsdiff_dense_counts")
        if cached is None:
            architecture = architecture_of(self)  # type: ignore[arg-type]
            base = getattr(diffusers, architecture.model_class_name)
            config = {k: v for k, v in self.config.items() if not k.startswith("_") and k != STRUCTURE_KEY}  # type: ignore[attr-defined]
            with init_empty_weights():
                skeleton = base.from_config(config)
            cached = self.__dict__["_obsdiff_dense_counts"] = structure_of(skeleton, architecture)
        return cached

    def load_lora_adapter(
        self,
        pretrained_model_name_or_path_or_dict: Any,
        prefix: str | None = "transformer",
        hotswap: bool = False,
        **kwargs: Any,
    ) -> None:
        """diffusers' ``load_lora_adapter`` (every argument), for a LoRA of the dense base or of this
        pruned model: tensors of reshaped layers are restricted to the kept rows and columns first."""
        state_dict = pretrained_model_name_or_path_or_dict
        if not isinstance(state_dict, dict):
            kwargs["use_safetensors"] = safetensors_only(kwargs.get("weight_name"), kwargs.get("use_safetensors"))
            fetch_args = (
                "weight_name",
                "use_safetensors",
                "local_files_only",
                "cache_dir",
                "force_download",
                "proxies",
                "token",
                "revision",
                "subfolder",
            )
            state_dict, metadata = _fetch_state_dict(
                pretrained_model_name_or_path_or_dict=state_dict,
                allow_pickle=False,
                metadata=kwargs.pop("metadata", None),
                user_agent={"file_type": "attn_procs_weights", "framework": "pytorch"},
                **{k: kwargs.pop(k, None) for k in fetch_args},
            )
            kwargs["metadata"] = metadata
        check_adapter_tensors(state_dict)
        state_dict = self.mapped_lora(peft_layout(state_dict), prefix)
        super().load_lora_adapter(state_dict, prefix=prefix, hotswap=hotswap, **kwargs)  # type: ignore[misc]

    def mapped_lora(self, state_dict: Mapping[str, torch.Tensor], prefix: str | None) -> dict[str, torch.Tensor]:
        """``state_dict`` with this model's LoRA tensors (peft names, under ``prefix.``) made for the dense base
        cut to the kept rows and columns; tensors that already fit, and other keys, as they are."""
        selections, recorded = self.kept_selections()
        return map_lora_state_dict(state_dict, self, selections, prefix, recorded)  # type: ignore[arg-type]

    def load_attn_procs(self, pretrained_model_name_or_path_or_dict: Any, **kwargs: Any) -> Any:
        """diffusers' ``load_attn_procs``, from safetensors files only."""
        if not isinstance(pretrained_model_name_or_path_or_dict, dict):
            kwargs["use_safetensors"] = safetensors_only(kwargs.get("weight_name"), kwargs.get("use_safetensors"))
        else:
            check_adapter_tensors(pretrained_model_name_or_path_or_dict)
        return super().load_attn_procs(pretrained_model_name_or_path_or_dict, **kwargs)  # type: ignore[misc]

    def _convert_ip_adapter_attn_to_diffusers(
        self, state_dicts: list[dict[str, Any]], *args: Any, **kwargs: Any
    ) -> dict[str, Any]:
        """diffusers builds the IP-Adapter processors at the dense widths; they are cut to the kept heads here."""
        processors = super()._convert_ip_adapter_attn_to_diffusers(state_dicts, *args, **kwargs)  # type: ignore[misc]
        selections, recorded = self.kept_selections()
        slice_ip_adapter_processors(self, processors, selections, recorded)  # type: ignore[arg-type]
        return processors

    def fuse_lora(self, *args: Any, **kwargs: Any) -> None:
        """diffusers' ``fuse_lora``; on an unstructured or N:M checkpoint it warns that the fused
        weights are dense (the LoRA delta fills the pruned zeros)."""
        record = self.config.get(PROVENANCE_KEY)  # type: ignore[attr-defined]
        granularity = record.get("granularity") if isinstance(record, Mapping) else None
        if granularity in ("unstructured", "n:m"):
            warnings.warn(
                f"fusing a LoRA into this {granularity}-sparse model fills its pruned zeros (the weights become dense "
                "and sparse kernels no longer apply); keep the adapter unfused (load_lora_weights + set_adapters) "
                "to stay sparse",
                UserWarning,
                stacklevel=2,
            )
        super().fuse_lora(*args, **kwargs)  # type: ignore[misc]
