"""The keys a pruned checkpoint's config carries, and the provenance record stamped into it."""

from __future__ import annotations

from typing import Any, Mapping

from .._version import __version__

STRUCTURE_KEY = "obsdiff_structure"
# Leading underscore: diffusers keeps private config keys through save/load without passing
# them to __init__, so plain classes load unstructured checkpoints without warnings.
PROVENANCE_KEY = "_obsdiff_provenance"
# Which heads and neurons of the dense base a structured checkpoint kept (architectures.kept).
KEPT_KEY = "_obsdiff_kept"


def plain_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """A config without the private (``_``) and obsdiff keys: the base class's arguments."""
    return {k: v for k, v in config.items() if not k.startswith("_") and k != STRUCTURE_KEY}


def provenance(**fields: Any) -> dict[str, str]:
    """String → string provenance (safetensors metadata allows nothing else); None fields are dropped."""
    record = {"obsdiff_hub_version": __version__}
    record.update({k: str(v) for k, v in fields.items() if v is not None})
    return record


def stamp_provenance(model: Any, record: Mapping[str, str]) -> dict[str, str]:
    """Merge ``record`` into ``model``'s provenance (its fields over what the engine stamped) and return
    the result: what the checkpoint's config and every safetensors header of it carry."""
    previous = model.config.get(PROVENANCE_KEY)
    merged = {**(dict(previous) if isinstance(previous, Mapping) else {}), **record}
    model.register_to_config(**{PROVENANCE_KEY: merged})
    return merged
