"""Where the shipped data lives: recipes, public model configs and card templates."""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def data_dir(name: str) -> Path:
    """``recipes`` or ``model_cards``: packaged under ``obsdiff_hub/_data`` in a wheel, at the repo root in a
    checkout."""
    packaged = Path(str(resources.files("obsdiff_hub"))) / "_data" / name
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / name
