"""SYNTHETIC global station weather: the embedded default dataset (not real observations).

``synthetic_global`` builds a dataset in the package schema that looks like the Corrformer/UniRepLKNet global
station benchmark (3850 stations, hourly, 2019-2020) so every command and test runs offline. Every value is made up:

* stations over land-like areas (a union of analytic "continent" ellipses, denser over North America, Europe and
  East Asia as in the NCEI archive), elevations from analytic mountain ranges;
* temperature = climatology (latitude, 6.5 K/km lapse rate, day of year with a hemisphere-dependent seasonal
  cycle) + a diurnal cycle by LOCAL SOLAR time (``lon/15`` h offset) + synoptic anomalies + AR(1) station noise;
* the synoptic anomalies are one spatially correlated field made of latitude-band zonal waves whose complex
  amplitudes drift as Ornstein-Uhlenbeck processes (finite lifetime of ~2-5 days) and whose phases move east at
  ~10 m/s, so upstream (western) neighbours carry information about a station's next day;
* wind speed (>= 0, calm = 0) grows with the magnitude of that field's horizontal gradient (a geostrophic-wind
  proxy), has an afternoon maximum by local solar time, a station exposure factor and AR(1) noise;
* missing values like real archives: isolated dropouts, gaps of several hours, and a few stations with outages of
  weeks to months.

The field is low rank (bands x zonal wavenumbers), so it is evaluated as one matrix product per time chunk;
3850 stations x 17544 hours take a few seconds. Values are rounded to 0.1 like NCEI's integer tenths.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
import pandas as pd
import xarray as xr

from .schema import make_dataset

__all__ = ["synthetic_global", "CONTINENTS", "is_land_like"]

EARTH_RADIUS_KM = 6371.0
LAPSE_RATE_K_PER_KM = 6.5
STEERING_SPEED_M_S = 10.0
NOISE_STD = (0.8, 0.7)  # station noise std (K, m/s): local effects no neighbour shares
NOISE_TAU_H = (5.0, 3.0)  # its AR(1) e-folding time (hours)
GENERATOR_VERSION = "1"
_COARSE_HOURS = 3  # the smooth synoptic field is evaluated every 3 h and interpolated linearly in time

# name, centre lon, centre lat, half-width lon (deg), half-width lat (deg), station density weight, continentality
# (seasonal-cycle amplitude factor: maritime < 1 < continental interiors)
CONTINENTS: tuple[tuple[str, float, float, float, float, float, float], ...] = (
    ("North America", -98.0, 40.0, 24.0, 11.0, 0.20, 1.0),
    ("Canada", -100.0, 56.0, 30.0, 7.0, 0.035, 1.3),
    ("Alaska", -152.0, 63.0, 11.0, 5.0, 0.015, 1.2),
    ("Central America", -94.0, 19.0, 10.0, 5.0, 0.02, 0.5),
    ("Caribbean", -75.0, 19.0, 8.0, 2.5, 0.008, 0.4),
    ("South America north", -60.0, -8.0, 16.0, 12.0, 0.04, 0.5),
    ("South America south", -66.0, -33.0, 7.0, 14.0, 0.025, 0.6),
    ("Europe", 12.0, 49.0, 17.0, 8.0, 0.17, 0.75),
    ("Scandinavia", 18.0, 63.0, 9.0, 6.0, 0.03, 0.85),
    ("British Isles", -3.0, 54.0, 4.0, 4.0, 0.025, 0.45),
    ("Iberia", -4.0, 40.0, 5.0, 3.5, 0.015, 0.6),
    ("North Africa", 10.0, 24.0, 24.0, 9.0, 0.02, 0.8),
    ("West Africa", 0.0, 10.0, 14.0, 5.0, 0.012, 0.6),
    ("Central Africa", 22.0, 3.0, 12.0, 9.0, 0.008, 0.5),
    ("Southern Africa", 25.0, -22.0, 10.0, 11.0, 0.02, 0.7),
    ("Middle East", 45.0, 29.0, 12.0, 8.0, 0.03, 1.0),
    ("Central Asia", 68.0, 46.0, 18.0, 7.0, 0.02, 1.3),
    ("Siberia", 105.0, 60.0, 40.0, 9.0, 0.04, 1.45),
    ("China", 112.0, 32.0, 13.0, 10.0, 0.07, 1.1),
    ("India", 78.0, 21.0, 8.0, 10.0, 0.035, 0.7),
    ("Southeast Asia", 102.0, 15.0, 6.0, 7.0, 0.015, 0.5),
    ("Indonesia", 113.0, -3.0, 15.0, 4.0, 0.01, 0.3),
    ("Japan and Korea", 134.0, 37.0, 6.0, 6.0, 0.04, 0.9),
    ("Australia", 134.0, -26.0, 16.0, 10.0, 0.035, 0.8),
    ("New Zealand", 173.0, -41.0, 3.0, 5.0, 0.006, 0.45),
)

# centre lon, centre lat, sigma lon, sigma lat, height (m)
_MOUNTAINS: tuple[tuple[float, float, float, float, float], ...] = (
    (-110.0, 42.0, 6.0, 10.0, 1900.0),  # Rocky Mountains
    (-102.0, 23.0, 4.0, 5.0, 1800.0),  # Mexican plateau
    (-69.0, -20.0, 3.0, 16.0, 3200.0),  # Andes
    (10.0, 46.0, 3.0, 1.5, 1300.0),  # Alps
    (39.0, 9.0, 4.0, 4.0, 2100.0),  # Ethiopian highlands
    (35.0, -3.0, 5.0, 8.0, 1300.0),  # East African plateau
    (25.0, -26.0, 8.0, 6.0, 1200.0),  # Southern African plateau
    (55.0, 32.0, 10.0, 5.0, 1300.0),  # Iranian plateau
    (88.0, 33.0, 12.0, 5.0, 4300.0),  # Tibetan plateau
    (100.0, 47.0, 12.0, 4.0, 1400.0),  # Mongolia
    (77.0, 17.0, 5.0, 5.0, 500.0),  # Deccan
)


def _ellipse_r2(lat: np.ndarray, lon: np.ndarray, c: tuple) -> np.ndarray:
    dlon = (lon - c[1] + 180.0) % 360.0 - 180.0
    return (dlon / c[3]) ** 2 + ((lat - c[2]) / c[4]) ** 2


def is_land_like(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    """True where ``(lat, lon)`` lies inside one of the analytic continents of the synthetic world."""
    lat, lon = np.asarray(lat, np.float64), np.asarray(lon, np.float64)
    inside = np.zeros(np.broadcast(lat, lon).shape, bool)
    for c in CONTINENTS:
        inside |= _ellipse_r2(lat, lon, c) <= 1.0
    return inside


def _terrain(lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    h = np.zeros_like(lat, dtype=np.float64)
    for clon, clat, slon, slat, height in _MOUNTAINS:
        dlon = (lon - clon + 180.0) % 360.0 - 180.0
        h += height * np.exp(-0.5 * ((dlon / slon) ** 2 + ((lat - clat) / slat) ** 2))
    return h


def _stations(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Station positions inside the continents (uniform in area), elevations and per-station traits."""
    w = np.array([c[5] for c in CONTINENTS])
    which = rng.choice(len(CONTINENTS), size=n, p=w / w.sum())
    lat = np.empty(n)
    lon = np.empty(n)
    for k in np.unique(which):
        idx = np.flatnonzero(which == k)
        c = CONTINENTS[k]
        got = np.empty((0, 2))
        while len(got) < idx.size:  # rejection sampling: uniform on the sphere within the ellipse
            m = 4 * idx.size + 16
            la = rng.uniform(max(c[2] - c[4], -89.0), min(c[2] + c[4], 89.0), m)
            lo = rng.uniform(c[1] - c[3], c[1] + c[3], m)
            keep = (_ellipse_r2(la, lo, c) <= 1.0) & (rng.random(m) < np.cos(np.radians(la)))
            got = np.concatenate([got, np.c_[la[keep], lo[keep]]])
        lat[idx], lon[idx] = got[: idx.size, 0], (got[: idx.size, 1] + 180.0) % 360.0 - 180.0
    terrain = _terrain(lat, lon)
    # stations sit in valleys and on slopes: a fraction of the local terrain plus a small random height
    elevation = np.maximum(terrain * rng.uniform(0.35, 1.05, n) + rng.exponential(180.0, n), 0.0)
    names = np.array([f"SYNTHETIC {CONTINENTS[k][0]} {i + 1:04d}" for i, k in enumerate(which)], dtype=object)
    return {
        "lat": lat,
        "lon": lon,
        "elevation": np.round(elevation),
        "name": names,
        "continentality": np.array([CONTINENTS[k][6] for k in which]) * rng.uniform(0.85, 1.15, n),
        "aridity": rng.uniform(0.6, 1.5, n),  # diurnal-range factor
        "exposure": rng.lognormal(0.0, 0.35, n),  # wind factor (coast, hill tops)
        "offset": rng.normal(0.0, 1.2, n),  # local climate offset (K)
    }


def _modes(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Latitude bands x zonal wavenumbers of the synoptic field."""
    band_lat = np.arange(-70.0, 81.0, 10.0)
    wavenumbers = np.arange(1, 15)
    bl, m = np.meshgrid(band_lat, wavenumbers, indexing="ij")
    bl, m = bl.ravel(), m.ravel().astype(np.float64)
    k = bl.size
    # amplitude spectrum peaking at synoptic scales (m ~ 5-8 at mid-latitudes)
    amp = m / (1.0 + (m / 6.0) ** 2.5)
    amp /= np.sqrt((amp**2).mean())
    # eastward steering ~10 m/s at the band's latitude (slower for planetary waves), as angular speed (rad/h)
    speed = STEERING_SPEED_M_S * np.where(m <= 3, 0.35, 1.0) * rng.uniform(0.75, 1.25, k)
    omega = speed * 3.6 / (EARTH_RADIUS_KM * np.cos(np.radians(np.clip(bl, -75, 75))))
    # coherence time (hours): long waves live longer
    tau = np.clip(110.0 * np.sqrt(6.0 / m), 48.0, 240.0) * rng.uniform(0.8, 1.2, k)
    return {"band_lat": bl, "m": m, "amp": amp, "omega": omega, "tau": tau, "phase": rng.uniform(0, 2 * np.pi, k)}


_BAND_WIDTH_DEG = 8.0


def _basis(lat: np.ndarray, lon: np.ndarray, modes: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Station basis (2K, 3S) for [field | d/dx | d/dy] (per 1000 km) and each station's field variance."""
    la, lo = np.radians(lat)[None, :], np.radians(lon)[None, :]
    m = modes["m"][:, None]
    dphi = (lat[None, :] - modes["band_lat"][:, None]) / _BAND_WIDTH_DEG
    g = modes["amp"][:, None] * np.exp(-0.5 * dphi**2)
    dg = g * (-dphi / np.radians(_BAND_WIDTH_DEG))  # d g / d lat (per radian)
    cos, sin = np.cos(m * lo), np.sin(m * lo)
    to_x = 1000.0 / (EARTH_RADIUS_KM * np.maximum(np.cos(la), 0.05))
    to_y = 1000.0 / EARTH_RADIUS_KM
    # field = sum_k Re(c_k) g cos(m lon) - Im(c_k) g sin(m lon)
    f_re, f_im = g * cos, -g * sin
    x_re, x_im = -m * g * sin * to_x, -m * g * cos * to_x
    y_re, y_im = dg * cos * to_y, -dg * sin * to_y
    basis = np.concatenate(
        [np.concatenate([f_re, x_re, y_re], axis=1), np.concatenate([f_im, x_im, y_im], axis=1)], axis=0
    )
    variance = (g**2).sum(axis=0)  # E|c_k|^2 = 2 and cos^2 + sin^2 averages to 1/2 per component
    return basis.astype(np.float32), variance


def _mode_coefficients(modes: dict[str, np.ndarray], hours: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(Tc, 2K) real/imaginary parts of the advected complex amplitudes at ``hours`` (equally spaced).

    Each amplitude is a unit-variance complex Ornstein-Uhlenbeck process (exact discretisation), multiplied by the
    phase factor ``exp(-i m omega t)`` that moves its zonal wave east.
    """
    k = modes["m"].size
    step = float(hours[1] - hours[0]) if hours.size > 1 else 1.0
    rho = np.exp(-step / modes["tau"])
    innov = np.sqrt(1.0 - rho**2)
    noise = rng.standard_normal((hours.size, 2, k)) * np.sqrt(0.5)
    a = np.empty((hours.size, k), np.complex128)
    state = noise[0, 0] + 1j * noise[0, 1]
    for t in range(hours.size):  # K-vector recursion; Tc steps of tiny numpy ops
        if t:
            state = rho * state + innov * (noise[t, 0] + 1j * noise[t, 1])
        a[t] = state
    c = a * np.exp(-1j * (modes["m"][None, :] * modes["omega"][None, :] * hours[:, None] - modes["phase"]))
    return np.concatenate([c.real, c.imag], axis=1).astype(np.float32)


def _coarse_fields(coef: np.ndarray, basis: np.ndarray, scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Normalised field and its gradient magnitude (per 1000 km) at the coarse times, ``(Tc, S)`` each."""
    S = scale.size
    field = np.empty((coef.shape[0], S), np.float32)
    grad = np.empty((coef.shape[0], S), np.float32)
    for r0 in range(0, coef.shape[0], 1024):
        prod = coef[r0 : r0 + 1024] @ basis  # (rows, 3S): field | d/dx | d/dy
        field[r0 : r0 + 1024] = prod[:, :S] * scale
        grad[r0 : r0 + 1024] = np.hypot(prod[:, S : 2 * S], prod[:, 2 * S :]) * scale
    return field, grad


@numba.njit(inline="always")
def _mix64(x: np.uint64) -> np.uint64:
    """SplitMix64 finaliser: a counter-based hash, so noise does not depend on threads or chunking."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


@numba.njit(inline="always")
def _approx_normal(key: np.uint64) -> float:
    """Standard-normal-like draw (Irwin-Hall sum of four 16-bit uniforms, rescaled) from one hash."""
    h = _mix64(key)
    m = np.uint64(0xFFFF)
    u = np.float64(h & m) + np.float64((h >> np.uint64(16)) & m)
    u += np.float64((h >> np.uint64(32)) & m) + np.float64(h >> np.uint64(48))
    return (u / 65536.0 - 2.0 + 2.0 / 65536.0) * 1.7320508075688772


@numba.njit(inline="always")
def _uniform(key: np.uint64) -> float:
    return (np.float64(_mix64(key) >> np.uint64(11)) + 0.5) / 9007199254740992.0


@numba.njit(cache=True, fastmath=True, nogil=True)
def _weather_kernel(
    field_c, grad_c, coarse, hour_utc, doy, st_params, seed, p_drop, out_t, out_w, s_begin, s_end
):  # pragma: no cover - compiled
    """Fused per-(hour, station) weather: climatology + diurnal + synoptic + AR(1) noise, dropouts, rounding.

    Fills stations ``s_begin:s_end`` (callers run disjoint ranges in threads; the GIL is released).
    ``st_params`` rows: t_mean, t_seas, diurnal, syn_sigma, solar_offset, hemisphere, wind_base, wind_gain,
    wind_diurnal. ``out_t``/``out_w`` may have zero rows to skip a variable. Random numbers come from a hash of
    (seed, hour, station, stream), so the result does not depend on threads or block sizes.
    """
    T = hour_utc.size
    do_t = out_t.shape[0] == T
    do_w = out_w.shape[0] == T
    rho_t, rho_w = np.exp(-1.0 / NOISE_TAU_H[0]), np.exp(-1.0 / NOISE_TAU_H[1])
    in_t, in_w = NOISE_STD[0] * np.sqrt(1.0 - rho_t * rho_t), NOISE_STD[1] * np.sqrt(1.0 - rho_w * rho_w)
    two_pi = 2.0 * np.pi
    cap = 40.0
    # diurnal harmonics by local solar time: angle = a(t) + b(s) with a = 2 pi (utc - 15) / 24, b = 2 pi lon/15 / 24
    ca, sa = np.cos(two_pi * (hour_utc - 15.0) / 24.0), np.sin(two_pi * (hour_utc - 15.0) / 24.0)
    cb, sb = np.cos(two_pi * st_params[4] / 24.0), np.sin(two_pi * st_params[4] / 24.0)
    angle2 = 2.0 * two_pi * (hour_utc - 15.0) / 24.0 + 0.6
    c2a, s2a = np.cos(angle2), np.sin(angle2)
    c2b, s2b = np.cos(2.0 * two_pi * st_params[4] / 24.0), np.sin(2.0 * two_pi * st_params[4] / 24.0)
    cw, sw = np.cos(two_pi / 24.0), np.sin(two_pi / 24.0)  # wind peaks an hour earlier (~14 local)
    season0 = -np.cos(two_pi * (doy - 20.0) / 365.25)  # coldest ~20 Jan in the north
    block = 256
    base_key = np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15) + np.uint64(0x632BE59BD9B4E019)
    t_mean, t_seas, d_amp, syn = st_params[0], st_params[1], st_params[2], st_params[3]
    hemi, w_base, w_gain, w_diu = st_params[5], st_params[6], st_params[7], st_params[8]
    for s0 in range(s_begin, s_end, block):
        n = min(s_end, s0 + block) - s0
        # per-block buffers; every inner loop below touches few arrays so LLVM vectorises it
        nt, nw = np.zeros(n), np.zeros(n)
        a, b, c = np.empty(n), np.empty(n), np.empty(n)
        for t in range(T):
            k = t // coarse
            w = (t - k * coarse) / coarse
            rt, it = (rho_t, in_t) if t else (0.0, NOISE_STD[0])  # t = 0: each AR(1) starts from its stationary law
            rw, iw = (rho_w, in_w) if t else (0.0, NOISE_STD[1])
            key0 = (base_key + np.uint64(t) * np.uint64(0x100000001B3)) * np.uint64(4) + np.uint64(4 * s0)
            if do_t:
                for j in range(n):
                    nt[j] = rt * nt[j] + it * _approx_normal(key0 + np.uint64(4 * j))
                for j in range(n):
                    a[j] = (1.0 - w) * field_c[k, s0 + j] + w * field_c[k + 1, s0 + j]  # synoptic field
                for j in range(n):  # diurnal shape by local solar time (angle addition, no trig per element)
                    b[j] = ca[t] * cb[s0 + j] - sa[t] * sb[s0 + j] + 0.2 * (c2a[t] * c2b[s0 + j] - s2a[t] * s2b[s0 + j])
                for j in range(n):
                    season = season0[t] * hemi[s0 + j]
                    clear = 1.0 - 0.25 * a[j] / np.sqrt(1.0 + a[j] * a[j])  # cloudier in warm, stormy anomalies
                    diurnal = d_amp[s0 + j] * (0.75 + 0.25 * season) * clear * b[j]  # larger in summer
                    c[j] = t_mean[s0 + j] + t_seas[s0 + j] * season + diurnal
                for j in range(n):
                    season = season0[t] * hemi[s0 + j]
                    v = c[j] + syn[s0 + j] * (1.0 - 0.25 * season) * a[j] + nt[j]  # stormier in winter
                    v = np.floor(v * 10.0 + 0.5) / 10.0
                    out_t[t, s0 + j] = np.nan if _uniform(key0 + np.uint64(4 * j + 2)) < p_drop else v
            if do_w:
                for j in range(n):
                    nw[j] = rw * nw[j] + iw * _approx_normal(key0 + np.uint64(4 * j + 1))
                for j in range(n):
                    a[j] = (1.0 - w) * grad_c[k, s0 + j] + w * grad_c[k + 1, s0 + j]  # field gradient
                for j in range(n):  # cos(angle + 1 h): gustiest ~14 local
                    cos1 = ca[t] * cb[s0 + j] - sa[t] * sb[s0 + j]
                    sin1 = sa[t] * cb[s0 + j] + ca[t] * sb[s0 + j]
                    b[j] = cos1 * cw - sin1 * sw
                for j in range(n):
                    winter = 0.5 * (1.0 - season0[t] * hemi[s0 + j])
                    v = w_base[s0 + j] + w_gain[s0 + j] * a[j] * (0.7 + 0.6 * winter) + w_diu[s0 + j] * b[j] + nw[j]
                    v = max(v, 0.0)
                    c[j] = v / np.sqrt(1.0 + (v / cap) ** 2)  # calm = 0; gentle saturation of storm peaks
                for j in range(n):
                    v = np.floor(c[j] * 10.0 + 0.5) / 10.0
                    out_w[t, s0 + j] = np.nan if _uniform(key0 + np.uint64(4 * j + 3)) < p_drop else v


def _gaps(T: int, S: int, missing: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of multi-hour gaps and long station outages, shared by all variables."""
    rows, cols = [], []

    def runs(n: int, length: np.ndarray) -> None:
        start = rng.integers(0, max(T, 1), n)
        st = rng.integers(0, S, n)
        r = np.repeat(start, length) + (np.arange(length.sum()) - np.repeat(np.cumsum(length) - length, length))
        ok = r < T
        rows.append(r[ok])
        cols.append(np.repeat(st, length)[ok])

    n_gaps = int(round(0.45 * missing * T * S / 8.0))  # ~45 % of the budget: gaps of several hours (mean ~8 h)
    if n_gaps:
        runs(n_gaps, np.minimum(rng.geometric(1 / 7.0, n_gaps) + 1, 72))
    mean_out = min(T / 3.0, 24.0 * 60.0)  # ~30 %: a few stations out for weeks to months
    n_out = int(round(0.3 * missing * T * S / max(mean_out, 1.0)))
    if n_out:
        lo = min(24 * 7, max(T // 6, 1))
        runs(n_out, rng.integers(lo, max(int(2 * mean_out) - lo, lo + 1), n_out))
    if not rows:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    return np.concatenate(rows), np.concatenate(cols)


def _check_arguments(stations: int, hours: int, seed: int, missing: float,
                     variables: tuple[str, ...]) -> tuple[str, ...]:
    """Raise ValueError naming the first invalid argument of :func:`synthetic_global`; the variables as a tuple."""
    if int(stations) < 1 or int(hours) < 1:
        raise ValueError(f"stations and hours must be >= 1, got stations={stations}, hours={hours}")
    if not 0.0 <= float(missing) < 0.5:
        raise ValueError(f"missing must be in [0, 0.5), got {missing}")
    variables = tuple(variables)
    unknown = [v for v in variables if v not in ("temperature", "wind_speed")]
    if unknown or not variables:
        raise ValueError(f"variables must be a non-empty subset of ('temperature', 'wind_speed'), got {variables}")
    if not 0 <= int(seed) < 2**63:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    return variables


def synthetic_global(
    stations: int = 3850,
    start: str | pd.Timestamp = "2019-01-01",
    hours: int = 17544,
    seed: int = 0,
    missing: float = 0.03,
    variables: tuple[str, ...] = ("temperature", "wind_speed"),
) -> xr.Dataset:
    """SYNTHETIC hourly temperature (degC) and wind speed (m s-1) at ``stations`` land-like stations.

    Deterministic per ``seed``. ``missing`` is the target fraction of missing values (isolated dropouts ~25 %,
    multi-hour gaps ~45 %, long station outages ~30 % of it; 0 gives complete data). The result follows the package
    schema and its attrs say ``synthetic: "true"`` with a description: this is not real weather.
    """
    variables = _check_arguments(stations, hours, seed, missing, variables)
    S, T, seed = int(stations), int(hours), int(seed)
    times = pd.date_range(pd.Timestamp(start), periods=T, freq="h")
    st = _stations(S, np.random.default_rng([seed, 0]))
    modes = _modes(np.random.default_rng([seed, 1]))
    basis, variance = _basis(st["lat"], st["lon"], modes)
    coarse_hours = np.arange(T // _COARSE_HOURS + 2, dtype=np.float64) * _COARSE_HOURS
    coef = _mode_coefficients(modes, coarse_hours, np.random.default_rng([seed, 2]))
    field_c, grad_c = _coarse_fields(coef, basis, (1.0 / np.sqrt(np.maximum(variance, 1e-12))).astype(np.float32))

    lat, lon = st["lat"], st["lon"]
    slat = np.sin(np.radians(lat))
    params = np.stack(
        [
            27.0 - 32.0 * slat**2 - LAPSE_RATE_K_PER_KM * st["elevation"] / 1000.0 + st["offset"],  # annual mean
            1.0 + 14.0 * np.abs(slat) ** 1.5 * st["continentality"],  # seasonal half-range
            2.2 + 3.0 * st["aridity"] * (1.0 - 0.4 * np.abs(slat)),  # diurnal half-range
            0.7 + 3.6 * np.abs(slat) ** 1.3,  # synoptic anomaly std
            lon / 15.0,  # local solar time = UTC + lon/15 h
            np.where(lat >= 0, 1.0, -1.0),  # hemisphere: seasons flip
            1.3 * st["exposure"] * (1.0 + st["elevation"] / 3000.0),  # wind base
            1.6 * st["exposure"],  # wind per unit field gradient
            0.5 + 0.7 * st["aridity"],  # wind diurnal half-range
        ]
    ).astype(np.float64)
    hour_utc = (times.hour.to_numpy() + times.minute.to_numpy() / 60.0).astype(np.float64)
    doy = (times.day_of_year.to_numpy() - 1 + hour_utc / 24.0).astype(np.float64)
    out_t = np.empty((T if "temperature" in variables else 0, S), np.float32)
    out_w = np.empty((T if "wind_speed" in variables else 0, S), np.float32)
    args = (field_c, grad_c, _COARSE_HOURS, hour_utc, doy, params, seed, 0.25 * missing, out_t, out_w)
    n_threads = max(1, min(os.cpu_count() or 1, 16, S // 256))
    bounds = np.linspace(0, S, n_threads + 1).astype(int)
    if n_threads == 1:
        _weather_kernel(*args, 0, S)
    else:  # the kernel releases the GIL: plain threads give parallelism without numba's slow parallel compile
        with ThreadPoolExecutor(n_threads) as pool:
            list(pool.map(lambda i: _weather_kernel(*args, bounds[i], bounds[i + 1]), range(n_threads)))
    del field_c, grad_c
    if missing > 0:
        r, c = _gaps(T, S, float(missing), np.random.default_rng([seed, 3]))
        for arr in (out_t, out_w):
            if arr.shape[0]:
                arr[r, c] = np.nan
    data = {name: arr for name, arr in (("temperature", out_t), ("wind_speed", out_w)) if arr.shape[0]}
    ids = [f"SYN{i + 1:05d}" for i in range(S)]
    attrs = {
        "title": "SYNTHETIC global hourly station weather (urlk-forecast embedded default)",
        "synthetic": "true",
        "description": (
            "SYNTHETIC data, not observations: generated by urlk_forecast.data.synthetic.synthetic_global "
            f"(seed={seed}, stations={S}, hours={T}, missing={missing}). Climatology (latitude, 6.5 K/km lapse "
            "rate, seasonal cycle) + diurnal cycle by local solar time + an eastward-moving (~10 m/s) spatially "
            "correlated synoptic field + noise; wind from the field's gradient plus a diurnal cycle."
        ),
        "source": f"urlk_forecast synthetic generator v{GENERATOR_VERSION}",
        "seed": seed,
    }
    return make_dataset(times, ids, lat, lon, st["elevation"], st["name"], attrs=attrs, **data)
