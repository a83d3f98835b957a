"""Bad input never becomes data: the one plausibility check every reader applies.

:func:`apply_bounds` takes a file's values per variable (in the file's units), converts them to the
registry's canonical units (``data/variables.py``, ``data/units.py``) and sets every impossible value
to NaN: values outside the variable's plausible range, values equal to a known missing-value code
(9999, -9999, 999.9, 99999, ... — see :data:`~urlk_forecast.data.variables.SENTINELS`) and dew
points above the air temperature. It emits ONE :class:`ImplausibleValuesWarning` per file naming the
counts and the first example (its line when the reader knows it). A column whose valid values are
mostly (> 50 %) out of range is not "a few bad values" but the wrong unit or the wrong column, and
raises :class:`ReaderError` with a guess at the unit.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from .formats._common import PathLike, ReaderError
from .units import UNITS, UnitError, convert, lookup
from .variables import REGISTRY, SENTINELS, Variable, get_variable

__all__ = [
    "ImplausibleValuesWarning",
    "Locator",
    "apply_bounds",
    "check_bounds",
    "resolve_units",
    "at_lines",
    "at_grid",
    "MOSTLY",
]

#: share of a column's values out of range above which it is an error, not a warning
MOSTLY = 0.5
#: flat index into a variable's array -> (line number or None, "on line 12" / "at <time>, station <id>")
Locator = Callable[[int], tuple[int | None, str]]

_SENTINELS = np.asarray(SENTINELS, np.float64)
_SENTINEL_TOL = 1e-6 * np.maximum(np.abs(_SENTINELS), 1.0) + 1e-6  # float32 9999.9 is 9999.900390625


class ImplausibleValuesWarning(UserWarning):
    """Some values of a file were physically impossible and became NaN."""


def at_lines(lines: Sequence[int] | np.ndarray, per_line: int = 1) -> Locator:
    """Locator for arrays whose rows (``per_line`` values each) come from the given 1-based lines."""
    arr = np.asarray(lines, np.int64)

    def locate(i: int) -> tuple[int | None, str]:
        line = int(arr[i // per_line])
        return line, f"on line {line}"

    return locate


def at_grid(times: Sequence | np.ndarray, stations: Sequence[str] | np.ndarray, what: str = "") -> Locator:
    """Locator for (time, station) arrays: ``"at 2020-01-01T05:00:00, station S0003"``."""
    t = pd.DatetimeIndex(np.asarray(times))
    s = list(stations)
    prefix = f"{what} " if what else ""

    def locate(i: int) -> tuple[int | None, str]:
        r, c = divmod(int(i), len(s))
        return None, f"at {prefix}{t[r].isoformat()}, station {s[c]}"

    return locate


def resolve_units(units: Mapping[str, str] | None, native: Mapping[str, str], source: PathLike) -> dict[str, str]:
    """The unit of each variable a reader takes from ``source``: its ``native`` unit unless ``units`` says.

    ``units`` keys must be variables the reader reads from this file, and values units of that
    variable's quantity; anything else raises :class:`ReaderError` naming the argument and the known
    variables/units — a misspelt key is never silently ignored.
    """
    out = dict(native)
    if units is None:
        return out
    if not isinstance(units, Mapping):
        raise TypeError(f"units must be a mapping like {{'temperature': 'degF'}}, got {type(units).__name__}")
    have = ", ".join(native) or "nothing"
    for key, unit in units.items():
        if key not in native:
            why = (
                f"this file has no {key} column that is read"
                if key in REGISTRY
                else f"{key!r} is not a variable name (known variables: {', '.join(REGISTRY)})"
            )
            raise ReaderError(source, f"units={{{key!r}: {unit!r}}}: {why}; the variables read here are {have}")
        try:
            lookup(str(unit), REGISTRY[key].quantity)
        except UnitError as e:
            raise ReaderError(source, f"units={{{key!r}: {unit!r}}}: {e}") from None
        out[key] = str(unit)
    return out


def _is_sentinel(raw: np.ndarray) -> np.ndarray:
    r = np.asarray(raw, np.float64)[..., None]
    return (np.abs(r - _SENTINELS) <= _SENTINEL_TOL).any(axis=-1)


def _example(loc: str) -> str:
    """``"first on line 3: "`` when the place is known, else ``"e.g. "``."""
    return f"first {loc}: " if loc else "e.g. "


def _fmt(x: float, unit: str) -> str:
    return f"{float(x):g} {unit}"


def _guess_unit(raw_ok: np.ndarray, spec: Variable, unit: str) -> str:
    """Advice for a column mostly out of range: the unit under which (almost) all values are plausible."""
    sample = raw_ok[:: max(1, raw_ok.size // 100_000)].astype(np.float64)
    current = lookup(unit).name
    best, best_share = None, 0.0
    for u in UNITS:
        if u.quantity != spec.quantity or u.name == current:
            continue
        v = convert(sample, u.name, spec.units)
        share = float(np.mean((v >= spec.valid_min) & (v <= spec.valid_max)))
        if share > best_share:
            best, best_share = u.name, share
    if best is not None and best_share >= 0.9:
        return f"they look like {best}, not {unit}: pass units={{{spec.name!r}: {best!r}}}"
    return f"is the column really {spec.long_name} in {unit}? pass units={{{spec.name!r}: ...}} if not"


def _check_one(
    raw: np.ndarray, spec: Variable, unit: str, field: str, source: PathLike, locate: Locator | None
) -> tuple[np.ndarray, str | None]:
    """(canonical float32 values with impossible ones NaN, the warning part or None) of one variable."""
    raw = np.asarray(raw)
    same = lookup(unit).name == lookup(spec.units).name
    vals = raw.astype(np.float32, copy=False) if same else convert(raw, unit, spec.units).astype(np.float32)
    with np.errstate(invalid="ignore"):
        bad = (vals < spec.valid_min) | (vals > spec.valid_max)
    if not bad.any():
        return vals, None
    flat_bad = np.flatnonzero(bad)
    raw_flat = raw.reshape(-1)
    sentinel = _is_sentinel(raw_flat[flat_bad])
    out_idx, sent_idx = flat_bad[~sentinel], flat_bad[sentinel]
    n_valid = int(np.count_nonzero(~np.isnan(vals))) - len(sent_idx)

    def where(i: int) -> tuple[int | None, str]:
        return locate(i) if locate is not None else (None, "")

    if len(out_idx) and len(out_idx) > MOSTLY * n_valid:
        line, loc = where(int(out_idx[0]))
        ok = ~np.isnan(vals.reshape(-1))
        ok[sent_idx] = False
        raise ReaderError(
            source,
            f"{len(out_idx)} of {n_valid} {field} values ({100.0 * len(out_idx) / n_valid:.0f} %) are outside the "
            f"plausible {spec.long_name} range {spec.range_text()} "
            f"({_example(loc)}{_fmt(raw_flat[out_idx[0]], unit)}); {_guess_unit(raw_flat[ok], spec, unit)}",
            line,
            field,
        )
    parts = []
    if len(out_idx):
        _, loc = where(int(out_idx[0]))
        parts.append(
            f"{len(out_idx)} {field} value(s) outside the plausible range {spec.range_text()} set to NaN "
            f"({_example(loc)}{_fmt(raw_flat[out_idx[0]], unit)})"
        )
    if len(sent_idx):
        codes = sorted({float(c) for c in raw_flat[sent_idx][:1000].astype(np.float64).round(2)})
        _, loc = where(int(sent_idx[0]))
        parts.append(
            f"{len(sent_idx)} {field} value(s) equal to a missing-value code ({', '.join(f'{c:g}' for c in codes)}) "
            f"set to NaN{f' (first {loc})' if loc else ''}"
        )
    vals = vals.copy() if vals is raw else vals
    vals[bad] = np.nan
    return vals, " and ".join(parts)


def _check_relations(
    out: dict[str, np.ndarray], fields: Mapping[str, str], locate: Locator | None
) -> list[str]:
    """NaN values above their ``at_most`` partner (dew point above air temperature); warning parts."""
    parts = []
    for name, vals in out.items():
        spec = REGISTRY[name]
        if spec.at_most is None or spec.at_most[0] not in out:
            continue
        other, tol = spec.at_most
        if out[other].shape != vals.shape:
            continue
        with np.errstate(invalid="ignore"):
            bad = vals > out[other] + np.float32(tol)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            loc = locate(i)[1] if locate is not None else ""
            parts.append(
                f"{int(bad.sum())} {fields.get(name, name)} value(s) above {fields.get(other, other)} + {tol:g} "
                f"set to NaN ({_example(loc)}{vals.reshape(-1)[i]:g} > "
                f"{out[other].reshape(-1)[i]:g} {spec.units})"
            )
            out[name] = np.where(bad, np.float32(np.nan), vals)
    return parts


def check_bounds(
    values: Mapping[str, np.ndarray],
    source: PathLike,
    *,
    units: Mapping[str, str] | None = None,
    fields: Mapping[str, str] | None = None,
    locate: Locator | None = None,
) -> tuple[dict[str, np.ndarray], str | None]:
    """Like :func:`apply_bounds` but returns the warning text (or None) instead of warning."""
    fields = dict(fields or {})
    out: dict[str, np.ndarray] = {}
    parts: list[str] = []
    for name, raw in values.items():
        spec = get_variable(name)
        unit = (units or {}).get(name, spec.units)
        vals, part = _check_one(raw, spec, unit, fields.get(name, name), source, locate)
        out[name] = vals
        if part:
            parts.append(part)
    parts += _check_relations(out, fields, locate)
    return out, (f"{source}: " + "; ".join(parts)) if parts else None


def apply_bounds(
    values: Mapping[str, np.ndarray],
    source: PathLike,
    *,
    units: Mapping[str, str] | None = None,
    fields: Mapping[str, str] | None = None,
    locate: Locator | None = None,
    stacklevel: int = 3,
) -> dict[str, np.ndarray]:
    """Canonical float32 values per variable with every impossible value NaN; one warning per call.

    ``values``: variable name -> array in ``units[name]`` (default: the registry's canonical unit);
    ``source``: the file, named in the warning and in errors; ``fields``: the variable's name in the
    file (``TEMP``, ``air_temp``) for messages; ``locate``: maps a flat index to its place in the file
    (:func:`at_lines`, :func:`at_grid`). Raises :class:`ReaderError` when more than half of a
    variable's valid values are out of range (naming the first and the unit they look like).
    """
    out, message = check_bounds(values, source, units=units, fields=fields, locate=locate)
    if message:
        warnings.warn(message, ImplausibleValuesWarning, stacklevel=stacklevel)
    return out
