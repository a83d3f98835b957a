"""Registry names: one normaliser so that "Holt-Winters", " holt_winters" and "HOLT-WINTERS" are one name."""

from __future__ import annotations

__all__ = ["normalize_name"]


def normalize_name(name: object) -> str:
    """``name`` stripped, lower-cased, with ``-`` and spaces as ``_`` (model, variant and baseline names)."""
    return str(name).strip().lower().replace("-", "_").replace(" ", "_")
