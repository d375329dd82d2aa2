"""The ``obsdiff-hub`` command line: it parses arguments, calls the library and prints; nothing else.

One module per command or group (``prune``, ``evaluate``, ``bench``, ``generate``, ``inspect``,
``recipes`` with ``plan``, ``publish`` with ``card``/``push``/``pull``, ``convert``), shared option
types in ``options``, output in ``display``, and the one mapping of errors to lines and exit codes
in ``errors``.
"""

import os

from transformers.utils import logging as transformers_logging

# transformers prints notices about optional backends when pipeline classes are first imported,
# before any option is parsed; the command line shows the libraries' logs only with --verbose
# (or when the user set TRANSFORMERS_VERBOSITY).
if "TRANSFORMERS_VERBOSITY" not in os.environ:
    transformers_logging.set_verbosity_error()

from .main import app, main  # noqa: E402 - after the verbosity above

__all__ = ["app", "main"]
