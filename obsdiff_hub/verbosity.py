"""Quiet libraries: no tqdm bars, info logs or known deprecation warnings from diffusers,
transformers and the Hub client. The command line calls this unless ``--verbose``; library
users keep the libraries' own settings."""

from __future__ import annotations

import os
import warnings

import diffusers
import transformers
from huggingface_hub.utils import disable_progress_bars
from huggingface_hub.utils import logging as hub_logging


def quiet_libraries() -> None:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    disable_progress_bars()
    hub_logging.set_verbosity_error()  # e.g. its retry lines: a failure ends in one error line of ours
    for category in (FutureWarning, DeprecationWarning, UserWarning):
        warnings.filterwarnings("ignore", category=category)
