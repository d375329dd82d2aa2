"""The library as the command line sees it: modules bound at the top of each command module and
imported when first used, so ``--help`` and usage errors answer without loading torch and diffusers.

``runs = library("zoo.runs")`` declares the dependency where a reader looks for it (and where
``tests/test_layers.py`` reads it as the import edge it is); the module is imported at the first
attribute access. The stand-in is a plain object, not an entry of ``sys.modules``: code that
walks every loaded module (``inspect.getmodule``, which torch calls while it imports) must not
trigger an import halfway through another one, as ``importlib.util.LazyLoader`` modules would.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any


class Library:
    """Stands for the module ``obsdiff_hub.<name>`` until it is first used."""

    def __init__(self, name: str) -> None:
        self._name = f"obsdiff_hub.{name}"
        self._module: ModuleType | None = None

    def __getattr__(self, attribute: str) -> Any:
        if self._module is None:
            self._module = importlib.import_module(self._name)
        return getattr(self._module, attribute)

    def __repr__(self) -> str:
        return f"<{self._name}, imported on first use>"


def library(name: str) -> Any:
    """``obsdiff_hub.<name>``, imported at its first attribute access."""
    return Library(name)
