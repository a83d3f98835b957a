"""The one converter of values to what ``json.dumps`` accepts (configs, run records, metrics, model files)."""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["to_jsonable"]


def to_jsonable(v: Any) -> Any:
    """``v`` with numpy scalars/arrays → Python numbers/lists, non-finite floats → ``None`` (JSON has no NaN),
    tuples → lists, mapping keys → ``str``, paths and pandas timestamps/timedeltas → ``str``, dataclasses → dicts."""
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, np.generic):
        return to_jsonable(v.item())
    if isinstance(v, np.ndarray):
        return to_jsonable(v.tolist())
    if isinstance(v, Mapping):
        return {str(k): to_jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple, set, frozenset)):
        return [to_jsonable(x) for x in v]
    if isinstance(v, os.PathLike):
        return os.fspath(v)
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return to_jsonable(dataclasses.asdict(v))
    if hasattr(v, "isoformat") or type(v).__module__.startswith("pandas"):
        return str(v)
    return v
