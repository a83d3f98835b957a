"""Post-hoc calibration of quantile forecasts: per lead time and level, a factor on each quantile's gap toward the
median, chosen on held-out windows so that every level's empirical level there equals its nominal one.

A network trained with the pinball loss on a short budget (or on a calm training period) forecasts bands that are
too narrow away from its training data (TMY3 temperature, ``docs/uncertainty.md``: an 80 % band that holds 55-67 %
of the targets). Conformalised quantile regression (Romano et al. 2019) corrects such bands with held-out residuals;
here the correction is *multiplicative* on the band's own shape, so a window the network finds volatile keeps its
wider band:

* levels are calibrated outward from the median (which is never changed). Above it, level ``j`` becomes
  ``q'_j = q'_{j-1} + c_{h,j} (q_j - q_{j-1})``: the calibrated level below plus the network's gap times a factor
  ``c_{h,j} >= 0`` for lead ``h``; below it, ``q'_j = q'_{j+1} - c_{h,j} (q_{j+1} - q_j)``. With non-negative factors
  on non-negative gaps the levels cannot cross (the same cumulative form as the network's monotone head,
  :func:`urlk_forecast.models.quantiles.monotone_quantiles`). For the usual 0.1/0.5/0.9 the factor simply scales
  each quantile's distance from the median.
* ``c_{h,j}`` is the smallest factor with ``share(y <= q'_j) >= tau_j`` over the held-out targets of lead ``h``
  (the empirical ``tau_j``-quantile, ``inverted_cdf``, of ``(y - q'_{j-1}) / gap`` above the median; the mirrored
  order statistic below), clipped to ``[0, MAX_FACTOR]``. On exchangeable data the calibrated level is therefore
  ``tau_j`` up to the sampling error of ``n`` targets; correlated targets (neighbouring hours, one weather regime)
  and a change of season between the held-out and the forecast period are what it cannot see.

Pure functions on arrays (numpy to fit, torch to apply, so that the exported graph applies exactly the same
arithmetic as ``Forecaster.predict_quantiles``) and the :class:`QuantileCalibration` record (JSON round trip).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .metrics import central_intervals, crps_weights, level_label, pinball
from .models.quantiles import monotone_quantiles
from .utils import to_jsonable

__all__ = ["QuantileCalibration", "fit_factors", "apply_factors", "apply_factors_numpy", "calibration_scores",
           "fit_calibration", "CALIBRATION_FORMAT", "MAX_FACTOR", "MIN_TARGETS"]

CALIBRATION_FORMAT = "urlk-forecast-quantile-calibration"
CALIBRATION_VERSION = 1
#: the largest factor (a gap of the network's band widened at most this much; guards against a degenerate band)
MAX_FACTOR = 50.0
#: the fewest finite held-out targets per lead a factor is fitted from
MIN_TARGETS = 50


def _order_statistic(r: np.ndarray, level: float) -> float:
    """The smallest ``c`` with ``share(r <= c) >= level`` (``r`` may hold +-inf)."""
    k = max(math.ceil(level * r.size - 1e-9), 1) - 1
    return float(np.partition(r, k)[k])


def _ratio(num: np.ndarray, gap: np.ndarray) -> np.ndarray:
    """``num / gap`` where the gap is positive; where it is 0 the factor cannot move the level: -inf when the target
    is inside (``num <= 0``) for any factor, +inf when it is outside for any factor."""
    with np.errstate(divide="ignore", invalid="ignore"):
        r = num / gap
    return np.where(gap > 0, r, np.where(num <= 0, -np.inf, np.inf))


def _lead_factors(q: np.ndarray, y: np.ndarray, levels: Sequence[float], m: int) -> np.ndarray:
    """Factors ``(Q,)`` for one lead from quantiles ``q`` (n, Q) and targets ``y`` (n,), all finite, float64."""
    Q = len(levels)
    out = np.ones(Q)
    prev = q[:, m].copy()
    for j in range(m + 1, Q):  # above the median: share(y <= prev + c gap) >= tau  <=>  share(r <= c) >= tau
        gap = q[:, j] - q[:, j - 1]
        out[j] = np.clip(_order_statistic(_ratio(y - prev, gap), levels[j]), 0.0, MAX_FACTOR)
        prev = prev + out[j] * gap
    prev = q[:, m].copy()
    for j in range(m - 1, -1, -1):  # below: y <= prev - c gap  <=>  s >= c, s = (prev - y) / gap; the largest c with
        gap = q[:, j + 1] - q[:, j]  # share(s >= c) >= tau is minus the smallest c' with share(-s <= c') >= tau
        s = -_ratio(y - prev, gap)  # (gap 0: +inf where y <= prev, inside for any c; -inf where never inside)
        out[j] = np.clip(-_order_statistic(-s, levels[j]), 0.0, MAX_FACTOR)
        prev = prev - out[j] * gap
    return out


def fit_factors(q: np.ndarray, y: np.ndarray, levels: Sequence[float], *,
                min_targets: int = MIN_TARGETS) -> tuple[np.ndarray, np.ndarray]:
    """Calibration factors ``(P, Q)`` (the median's column 1) and the targets used per lead ``(P,)``.

    ``q``: quantile forecasts ``(N, P, ..., Q)`` at the sorted ``levels`` (the median among them), non-decreasing
    along Q; ``y``: the targets ``(N, P, ...)``, NaN where unobserved. Points where ``y`` or any level is not finite
    are left out. A ``ValueError`` names the lead when fewer than ``min_targets`` remain there.
    """
    levels = [float(v) for v in levels]
    if 0.5 not in levels:
        raise ValueError(f"quantile levels {levels} lack the median 0.5 (the calibration keeps it fixed)")
    q = np.asarray(q, np.float64)
    y = np.asarray(y, np.float64)
    if q.shape[:-1] != y.shape or q.shape[-1] != len(levels) or q.ndim < 3:
        raise ValueError(f"need quantiles (N, P, ..., Q={len(levels)}) and targets (N, P, ...); got {q.shape} "
                         f"and {y.shape}")
    P, m = q.shape[1], levels.index(0.5)
    qh = np.moveaxis(q, 1, 0).reshape(P, -1, len(levels))
    yh = np.moveaxis(y, 1, 0).reshape(P, -1)
    factors, counts = np.ones((P, len(levels))), np.zeros(P, np.int64)
    for h in range(P):
        ok = np.isfinite(yh[h]) & np.isfinite(qh[h]).all(axis=-1)
        counts[h] = int(ok.sum())
        if counts[h] < min_targets:
            raise ValueError(f"lead {h + 1}: {counts[h]} finite target(s), the calibration needs at least "
                             f"{min_targets} per lead")
        factors[h] = _lead_factors(qh[h][ok], yh[h][ok], levels, m)
    return factors, counts


def apply_factors(q: torch.Tensor, factors: torch.Tensor, median_index: int) -> torch.Tensor:
    """Calibrated quantiles of ``q`` ``(B, P, ..., Q)`` with ``factors`` ``(P, Q)``: the median kept, each gap toward
    it multiplied by its level's factor, levels rebuilt cumulatively (non-decreasing for non-negative factors; NaN
    stays NaN). Plain tensor arithmetic, so it traces into an exported graph."""
    m = int(median_index)
    f = factors.to(q.dtype).reshape(1, factors.shape[0], *([1] * (q.dim() - 3)), factors.shape[1])
    # gap j (between levels j and j + 1) takes level j's factor below the median, level j + 1's above it
    gap_factors = torch.cat([f[..., :m], f[..., m + 1:]], dim=-1)
    gaps = (q[..., 1:] - q[..., :-1]) * gap_factors
    return monotone_quantiles(q[..., m], gaps, m)


def apply_factors_numpy(q: np.ndarray, factors: np.ndarray, median_index: int) -> np.ndarray:
    """:func:`apply_factors` on a numpy array (float32 in, float32 out)."""
    out = apply_factors(torch.as_tensor(np.asarray(q, np.float32)), torch.as_tensor(np.asarray(factors, np.float32)),
                        median_index)
    return out.numpy()


def calibration_scores(q: np.ndarray, y: np.ndarray, levels: Sequence[float]) -> dict[str, Any]:
    """Share of the finite targets at or below each level (``level_share``), inside each central interval
    (``cover80`` ...), the mean pinball loss and the CRPS estimate (as the scorer weights it) of ``q`` against ``y``."""
    q = np.asarray(q, np.float64)
    y = np.asarray(y, np.float64)
    ok = np.isfinite(y) & np.isfinite(q).all(axis=-1)
    qo, yo = q[ok], y[ok]
    pin = pinball(qo, yo, levels).mean(axis=0) if yo.size else np.full(len(levels), np.nan)
    out: dict[str, Any] = {"targets": int(yo.size),
                           "level_share": {f"{v:g}": float((yo <= qo[:, j]).mean()) for j, v in enumerate(levels)},
                           "pinball": float(pin.mean()), "crps": float(2.0 * pin @ crps_weights(levels))}
    for lo, hi, c in central_intervals(levels):
        out[f"cover{level_label(c)}"] = float(((yo >= qo[:, lo]) & (yo <= qo[:, hi])).mean())
    return out


@dataclass
class QuantileCalibration:
    """Fitted factors ``(P, Q)`` for the levels ``levels`` (see the module docstring) and what they were fitted on:
    ``targets`` per lead, ``before``/``after`` (:func:`calibration_scores` on the held-out windows), ``source``."""

    levels: list[float]
    factors: np.ndarray
    targets: list[int] = field(default_factory=list)
    before: dict[str, Any] = field(default_factory=dict)
    after: dict[str, Any] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.levels = [float(v) for v in self.levels]
        self.factors = np.asarray(self.factors, np.float64)
        if self.factors.ndim != 2 or self.factors.shape[1] != len(self.levels) or 0.5 not in self.levels:
            raise ValueError(f"calibration factors must be (pred_len, {len(self.levels)}) for levels {self.levels} "
                             f"(the median among them), got {self.factors.shape}")
        if not (np.isfinite(self.factors).all() and (self.factors >= 0).all()):
            raise ValueError("calibration factors must be finite and non-negative")

    @property
    def median_index(self) -> int:
        return self.levels.index(0.5)

    def apply(self, q: np.ndarray) -> np.ndarray:
        """Calibrated quantiles of ``q`` ``(N, P, ..., Q)`` (float32)."""
        return apply_factors_numpy(q, self.factors, self.median_index)

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable({"format": CALIBRATION_FORMAT, "version": CALIBRATION_VERSION, "levels": self.levels,
                            "factors": self.factors.tolist(), "targets": list(self.targets), "before": self.before,
                            "after": self.after, "source": self.source})

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], source: str = "calibration") -> QuantileCalibration:
        """Read :meth:`to_dict`'s output; errors name ``source``."""
        fmt = raw.get("format") if isinstance(raw, Mapping) else None
        if fmt != CALIBRATION_FORMAT:
            raise ValueError(f"{source}: not a quantile calibration (format {fmt!r})")
        if int(raw.get("version", 0)) > CALIBRATION_VERSION:
            raise ValueError(f"{source}: calibration version {raw['version']} is newer than this urlk-forecast "
                             f"supports ({CALIBRATION_VERSION})")
        try:
            return cls(levels=raw["levels"], factors=np.asarray(raw["factors"], np.float64),
                       targets=list(raw.get("targets") or []), before=dict(raw.get("before") or {}),
                       after=dict(raw.get("after") or {}), source=dict(raw.get("source") or {}))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{source}: invalid quantile calibration ({e})") from None

    def summary(self) -> dict[str, Any]:
        """The record for ``run.json`` / ``train_info``: factors per level (mean, min, max over leads), the full
        table, and the held-out scores before and after."""
        per_level = {f"{v:g}": {"mean": float(self.factors[:, j].mean()), "min": float(self.factors[:, j].min()),
                                "max": float(self.factors[:, j].max())} for j, v in enumerate(self.levels)}
        return to_jsonable({"levels": self.levels, "factor_per_level": per_level, "factors": self.factors.tolist(),
                            "targets": int(sum(self.targets)), "before": self.before, "after": self.after,
                            **self.source})


def fit_calibration(q: np.ndarray, y: np.ndarray, levels: Sequence[float], *, min_targets: int = MIN_TARGETS,
                    source: Mapping[str, Any] | None = None) -> QuantileCalibration:
    """:func:`fit_factors` on held-out forecasts ``q`` and targets ``y``, with the scores before and after."""
    factors, counts = fit_factors(q, y, levels, min_targets=min_targets)
    m = list(levels).index(0.5)
    after = apply_factors_numpy(q, factors, m)
    return QuantileCalibration(levels=list(levels), factors=factors, targets=counts.tolist(),
                               before=calibration_scores(q, y, levels), after=calibration_scores(after, y, levels),
                               source=dict(source or {}))
