"""Optional packages some metrics need, and how to get them (checked before any image is sampled)."""

from __future__ import annotations

import importlib.util

from ...errors import UnsupportedEnvironmentError

OPTIONAL = {
    "torch_fidelity": "FID with Inception features needs torch-fidelity: pip install 'obsdiff-hub[eval]' (or "
    "`fid_features` clip)",
    "ImageReward": "the imagereward metric needs the image-reward package: pip install 'obsdiff-hub[imagereward]'",
}


def require(module: str) -> None:
    """Raise with the install line unless the optional ``module`` can be imported."""
    if importlib.util.find_spec(module) is None:
        raise UnsupportedEnvironmentError(OPTIONAL[module])
