"""The ``obsdiff-hub`` command line: it parses arguments, calls the library and prints; nothing else.

One module per command or group (``prune``, ``evaluate``, ``bench``, ``generate``, ``inspect``,
``recipes`` with ``plan``, ``publish`` with ``card``/``push``/``pull``, ``convert``), shared option
types in ``options``, output in ``display``, the one mapping of errors to lines and exit codes in
``errors``, and lazy binding of the library in ``lazy``.
"""

from .main import app, main

__all__ = ["app", "main"]
