"""Small helpers shared by every package of urlk-forecast, each defined once.

* :mod:`.atomic` -- atomic file writes (temporary file in the target directory, fsync, ``os.replace``);
* :mod:`.jsonable` -- the one converter of Python/numpy/pandas values to JSON-ready values;
* :mod:`.names` -- the one registry-name normaliser (``"Holt-Winters "`` → ``"holt_winters"``);
* :mod:`.indices` -- evenly spaced window indices;
* :mod:`.steps` -- step counts worded in the data's time step ("24 h", "24 days", "6 x 10 min");
* :mod:`.quantiles` -- the one check of quantile levels and their column names.

This package imports nothing else from urlk_forecast, so any module may import it.
"""

from __future__ import annotations

from .atomic import atomic_path, atomic_torch_save, atomic_write, atomic_write_bytes, atomic_write_text
from .indices import evenly_spaced
from .jsonable import to_jsonable
from .names import normalize_name
from .quantiles import quantile_label, quantile_levels
from .steps import describe_steps, freq_label

__all__ = [
    "atomic_path",
    "atomic_torch_save",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "describe_steps",
    "evenly_spaced",
    "freq_label",
    "normalize_name",
    "quantile_label",
    "quantile_levels",
    "to_jsonable",
]
