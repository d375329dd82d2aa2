"""Let ``DiffusionPipeline.from_pretrained`` load components declared as ``obsdiff_hub.models``.

For Hub repos diffusers 0.42 accepts only libraries in its ``LOADABLE_CLASSES`` registry
(otherwise it looks for a remote ``.py`` file, i.e. remote code); adding this package's model
module to that registry, with ``ModelMixin``'s save/load methods, is the extension point diffusers
uses for ``onnxruntime.training``. Nothing of diffusers is replaced, and the model classes
themselves are imported only when a pipeline needs them (diffusers imports registered libraries).
"""

from __future__ import annotations

from diffusers.pipelines import pipeline_loading_utils

MODELS_MODULE = "obsdiff_hub.models"


def register_with_diffusers() -> None:
    """Add ``obsdiff_hub.models`` to diffusers' registry of loadable libraries (idempotent)."""
    pipeline_loading_utils.LOADABLE_CLASSES.setdefault(MODELS_MODULE, {"ModelMixin": ["save_pretrained", "from_pretrained"]})
