"""Handing memory freed by large tensors back to the system."""

from __future__ import annotations

import ctypes


def release_freed_memory() -> None:
    """Hand memory freed by large tensors back to the system (glibc keeps it resident otherwise:
    a 2 GB fp16 model widened to fp32 measured 5.3 GB resident instead of 3.9). No-op elsewhere."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
