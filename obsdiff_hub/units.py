"""Human-readable counts for tables and cards."""

from __future__ import annotations


def human(n: float, unit: str = "") -> str:
    """``1.91 B``, ``21.50 TFLOPs``-style: two decimals with the largest SI-like suffix that fits."""
    for scale, suffix in ((1e12, "T"), (1e9, "B" if not unit else "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {suffix}{unit}"
    return f"{n:.0f} {unit}".strip()
