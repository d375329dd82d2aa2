"""The errors obsdiff-hub raises on purpose: one family, so a user's mistake is told from a bug.

Every exception the library raises knowingly is an :class:`ObsDiffError`. Its message says
what is wrong and how to fix it, in the library's own terms: a parameter is named in
backquotes, as it is spelled in Python (`` `overwrite` ``, `` `resolution` ``, a recipe field
as `` `prune.sparsity` ``), so the command line can print its own flag in its place. Any other
exception escaping the library is a bug. The subclasses say whose move it is:

- :class:`InputError`: the input or the settings are wrong (a recipe field, a prompt file, an
  output folder, a model of another family); change them.
- :class:`CheckpointError`: a checkpoint cannot be read, trusted or written (truncated file,
  shapes that do not match the config, a manifest mismatch, an unsafe pickle).
- :class:`HubError`: the Hub refused or could not be reached (token, repo, revision, network).
- :class:`UnsupportedEnvironmentError`: this machine cannot do it (no CUDA, a dtype the device
  lacks, an optional package not installed, out of memory).

This module imports nothing of the package, so every layer may use it.
"""

from __future__ import annotations


class ObsDiffError(Exception):
    """Base of every error obsdiff-hub raises on purpose; the message names the fix."""


class InputError(ObsDiffError, ValueError):
    """Bad input or settings: a recipe, an option, a prompt file, an output folder, a model."""


class CheckpointError(ObsDiffError, ValueError):
    """A checkpoint that cannot be loaded, trusted or written; the message names the file."""


class HubError(ObsDiffError):
    """A Hub request that failed; the message names the repo or endpoint (never the token)."""


class UnsupportedEnvironmentError(ObsDiffError, RuntimeError):
    """What was asked needs something this machine or installation lacks."""


__all__ = ["CheckpointError", "UnsupportedEnvironmentError", "HubError", "InputError", "ObsDiffError"]


def first_line(error: BaseException) -> str:
    """An exception's message cut to one line (its type's name when it has none), for one-line errors."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]
