"""Modality adapters (paper §3.3, Eqs. 3–5): turn audio, video, point clouds and images into C'×H×W maps.

Each adapter is an ``nn.Module`` with ``out_channels`` (C') that maps a batch of one modality to
``(B, C', H, W)`` for a :class:`~urlk_forecast.models.unireplknet.UniRepLKNet` with ``in_chans=C'``:

* :class:`AudioAdapter` — waveform (B, N) → log-mel spectrogram (B, 1, T, F) (Eq. 3): by default the Kaldi
  filterbank of AST/UniRepLKNet (:func:`kaldi_mel_filterbank`, 128 mels, 25 ms frames padded to 512 points at
  16 kHz), or a centred ``torch.stft`` with :func:`mel_filterbank` (HTK or Slaney mel scale);
* :class:`VideoAdapter` — frames (B, N_F, 3, h, w) → one image (B, 3, H, W) with the frames laid out on a grid,
  ``HW / hw = N_F`` (Eq. 5; :func:`frames_to_grid`, an exact reshape);
* :class:`PointCloudAdapter` — points (B, P, 3) → three orthographic views (xy, yz, xz) of occupancy and depth,
  turned by learnable conv layers into (B, 3, R, R) (Eq. 4; R = 224 by default);
* :class:`ImageAdapter` — images as they are (optionally resized).

:func:`create_classifier` builds adapter + backbone as one :class:`ModalityClassifier`. Every adapter checks
its input and raises a ValueError naming the expected and the received shape.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..utils import normalize_name
from .layers import reparameterize_children
from .unireplknet import create_model

__all__ = [
    "hz_to_mel",
    "mel_to_hz",
    "mel_frequencies",
    "mel_filterbank",
    "kaldi_mel_filterbank",
    "kaldi_window",
    "KALDI_WINDOWS",
    "KALDI_EPS",
    "AudioAdapter",
    "frames_to_grid",
    "grid_to_frames",
    "grid_shape",
    "VideoAdapter",
    "project_points",
    "PointCloudAdapter",
    "ImageAdapter",
    "ModalityClassifier",
    "create_classifier",
    "MODALITIES",
]

MIN_SIZE = 32  # the backbone's total stride: H and W must be at least this


# ----------------------------------------------------------------------------------------------- audio
_SLANEY_F_SP = 200.0 / 3  # Hz per mel below 1 kHz (linear part of the Slaney scale)
_SLANEY_MIN_LOG_HZ = 1000.0
_SLANEY_MIN_LOG_MEL = _SLANEY_MIN_LOG_HZ / _SLANEY_F_SP  # = 15
_SLANEY_LOGSTEP = math.log(6.4) / 27.0  # 27 mels per factor 6.4 in frequency above 1 kHz


def hz_to_mel(f: Any, scale: str = "htk") -> np.ndarray:
    """Frequency in Hz → mel. ``htk``: ``2595·log10(1 + f/700)``; ``kaldi``: ``1127·ln(1 + f/700)`` (the HTK scale
    up to a factor 1.00002, which cancels in equally spaced bands); ``slaney``: linear below 1 kHz, log above."""
    f = np.asarray(f, dtype=np.float64)
    if scale == "htk":
        return 2595.0 * np.log10(1.0 + f / 700.0)
    if scale == "kaldi":
        return 1127.0 * np.log1p(f / 700.0)
    if scale == "slaney":
        lin = f / _SLANEY_F_SP
        log = _SLANEY_MIN_LOG_MEL + np.log(np.maximum(f, _SLANEY_MIN_LOG_HZ) / _SLANEY_MIN_LOG_HZ) / _SLANEY_LOGSTEP
        return np.where(f >= _SLANEY_MIN_LOG_HZ, log, lin)
    raise ValueError(f"mel scale must be 'htk', 'kaldi' or 'slaney', got {scale!r}")


def mel_to_hz(m: Any, scale: str = "htk") -> np.ndarray:
    """Inverse of :func:`hz_to_mel`."""
    m = np.asarray(m, dtype=np.float64)
    if scale == "htk":
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)
    if scale == "kaldi":
        return 700.0 * np.expm1(m / 1127.0)
    if scale == "slaney":
        lin = _SLANEY_F_SP * m
        log = _SLANEY_MIN_LOG_HZ * np.exp(_SLANEY_LOGSTEP * (np.maximum(m, _SLANEY_MIN_LOG_MEL) - _SLANEY_MIN_LOG_MEL))
        return np.where(m >= _SLANEY_MIN_LOG_MEL, log, lin)
    raise ValueError(f"mel scale must be 'htk', 'kaldi' or 'slaney', got {scale!r}")


def mel_frequencies(n_mels: int, f_min: float, f_max: float, scale: str = "htk") -> np.ndarray:
    """``n_mels + 2`` band edges in Hz, equally spaced on the mel scale (filter m: edges m, m+1 (centre), m+2)."""
    mels = np.linspace(hz_to_mel(f_min, scale), hz_to_mel(f_max, scale), n_mels + 2)
    return mel_to_hz(mels, scale)


def _check_band(n_freqs: int, n_mels: int, sample_rate: float, f_min: float, f_max: float) -> None:
    if n_freqs < 2 or n_mels < 1:
        raise ValueError(f"need n_freqs >= 2 and n_mels >= 1, got n_freqs={n_freqs}, n_mels={n_mels}")
    if not 0 <= f_min < f_max <= sample_rate / 2:
        raise ValueError(f"need 0 <= f_min < f_max <= sample_rate/2 = {sample_rate / 2}, got f_min={f_min}, "
                         f"f_max={f_max}")


def mel_filterbank(n_freqs: int, n_mels: int, sample_rate: float, f_min: float = 0.0, f_max: float | None = None,
                   scale: str = "htk", norm: str | None = None) -> torch.Tensor:
    """Triangular mel filters ``(n_freqs, n_mels)`` (float64) for an rFFT with ``n_freqs = n_fft // 2 + 1`` bins.

    Filter m rises linearly (in Hz) from 0 at edge m to 1 at its centre (edge m+1) and falls to 0 at edge m+2, so
    without normalisation neighbouring filters sum to 1 between the first and last centre (the HTK/librosa form;
    :func:`kaldi_mel_filterbank` is linear in mel instead). ``norm="slaney"`` scales filter m by
    ``2 / (edge[m+2] − edge[m])`` (constant energy per band). A filter that falls between two FFT bins (all zero)
    is an error.
    """
    f_max = sample_rate / 2 if f_max is None else f_max
    _check_band(n_freqs, n_mels, sample_rate, f_min, f_max)
    if norm not in (None, "slaney"):
        raise ValueError(f"norm must be None or 'slaney', got {norm!r}")
    fft_freqs = np.linspace(0.0, sample_rate / 2, n_freqs)
    edges = mel_frequencies(n_mels, f_min, f_max, scale)
    width = np.diff(edges)  # (n_mels + 1,)
    rel = edges[:, None] - fft_freqs[None, :]  # (n_mels + 2, n_freqs)
    rising = -rel[:-2] / width[:-1, None]
    falling = rel[2:] / width[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling))  # (n_mels, n_freqs)
    if norm == "slaney":
        weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]
    empty = np.flatnonzero(weights.max(axis=1) <= 0)
    if empty.size:
        raise ValueError(f"mel filters {empty.tolist()} fall between FFT bins (all zero): use fewer mels "
                         f"(n_mels={n_mels}) or a larger n_fft (n_freqs={n_freqs})")
    return torch.from_numpy(weights.T.copy())


def kaldi_mel_filterbank(n_fft: int, n_mels: int, sample_rate: float, f_min: float = 20.0,
                         f_max: float | None = None) -> torch.Tensor:
    """Kaldi's mel filterbank ``(n_fft // 2 + 1, n_mels)`` (float64), as ``torchaudio.compliance.kaldi`` builds it.

    With ``Δ = (mel(f_max) − mel(f_min)) / (n_mels + 1)`` on the mel scale ``1127·ln(1 + f/700)``, filter m is the
    triangle *linear in mel* rising from ``mel(f_min) + m·Δ`` to 1 at ``+ (m+1)·Δ`` and falling to ``+ (m+2)·Δ``,
    evaluated at the FFT bins ``k·sr/n_fft`` for ``k < n_fft/2`` (the Nyquist bin gets no weight, as in Kaldi).
    A filter narrower than the bin spacing can be all zero: Kaldi keeps it (its log energy is the floor), and so
    do we — at 16 kHz, ``n_fft=512``, 128 mels from 20 Hz that is filter 3 (97–141 mel lies between bins 2 and 3).
    """
    f_max = sample_rate / 2 if f_max is None else f_max
    if n_fft < 2 or n_fft % 2:
        raise ValueError(f"n_fft must be even and >= 2 for the Kaldi filterbank, got {n_fft}")
    _check_band(n_fft // 2 + 1, n_mels, sample_rate, f_min, f_max)
    n_bins = n_fft // 2
    bin_mel = hz_to_mel(np.arange(n_bins) * (sample_rate / n_fft), "kaldi")
    lo, hi = float(hz_to_mel(f_min, "kaldi")), float(hz_to_mel(f_max, "kaldi"))
    delta = (hi - lo) / (n_mels + 1)
    left = lo + delta * np.arange(n_mels)[:, None]  # (n_mels, 1)
    up = (bin_mel - left) / delta
    down = (left + 2 * delta - bin_mel) / delta
    weights = np.zeros((n_bins + 1, n_mels))
    weights[:n_bins] = np.maximum(0.0, np.minimum(up, down)).T
    return torch.from_numpy(weights)


#: Kaldi's analysis windows (symmetric over the frame; ``hanning`` is what AST/UniRepLKNet use, ``povey`` is
#: Kaldi's own default)
KALDI_WINDOWS = ("hanning", "povey", "hamming", "rectangular")


def kaldi_window(name: str, length: int) -> torch.Tensor:
    """Kaldi window of ``length`` samples (float64): ``hanning`` ``0.5 − 0.5·cos(2πn/(N−1))``, ``povey`` its 0.85th
    power, ``hamming`` ``0.54 − 0.46·cos(2πn/(N−1))``, ``rectangular`` ones."""
    if name not in KALDI_WINDOWS:
        raise ValueError(f"window must be one of {', '.join(KALDI_WINDOWS)} for the Kaldi frontend, got {name!r}")
    if length < 2:
        raise ValueError(f"window length must be >= 2, got {length}")
    cos = np.cos(2 * np.pi * np.arange(length) / (length - 1))
    if name == "rectangular":
        w = np.ones(length)
    elif name == "hamming":
        w = 0.54 - 0.46 * cos
    else:
        w = (0.5 - 0.5 * cos) ** (0.85 if name == "povey" else 1.0)
    return torch.from_numpy(w)


_FRONTENDS = ("kaldi", "stft")
_STFT_WINDOWS = {"hann": torch.hann_window, "hamming": torch.hamming_window}
#: Kaldi's log floor: float32 machine epsilon (torchaudio uses it whatever the dtype)
KALDI_EPS = float(np.finfo(np.float32).eps)


class AudioAdapter(nn.Module):
    """Waveform (B, N) or (B, 1, N) → log-mel image ``(B, 1, T, F)`` (Eq. 3: time × frequency).

    ``frontend="kaldi"`` (default) is the Kaldi filterbank that AST, and UniRepLKNet after it, feed the network
    (``torchaudio.compliance.kaldi.fbank(wave, window_type="hanning", num_mel_bins=128, dither=0.0, ...)``): frames
    of ``win_length`` samples (default 25 ms) every ``hop_length`` (10 ms), whole frames only
    (``T = 1 + (N − win) // hop``); per frame remove the mean (``remove_dc``), pre-emphasis (0.97), window (one of
    :data:`KALDI_WINDOWS`, default ``hanning``), zero-pad to ``n_fft`` (default: the next power of two, 512 at
    16 kHz), power spectrum, :func:`kaldi_mel_filterbank` (128 filters from ``f_min=20`` Hz to ``f_max`` = Nyquist)
    and ``log(max(·, eps))`` with ``eps`` = :data:`KALDI_EPS`.

    ``frontend="stft"``: centred ``torch.stft`` (reflect padding, ``T = 1 + N // hop``) with a periodic ``hann`` or
    ``hamming`` window over ``n_fft`` samples (default 25 ms), :func:`mel_filterbank` (``mel_scale`` htk or slaney,
    ``mel_norm``, ``f_min`` 0) and ``log(· + eps)``, eps 1e-6; no DC removal or pre-emphasis.

    Both: optional standardisation by dataset ``mean``/``std``; ``n_frames`` crops or pads (with the log floor,
    i.e. silence) to a fixed length. T and F must both reach 32 (the backbone stride). Arguments left at None take
    the frontend's default. Computed in the module's dtype (float32 unless converted).
    """

    out_channels = 1

    def __init__(self, sample_rate: int = 16000, n_fft: int | None = None, hop_length: int | None = None,
                 win_length: int | None = None, n_mels: int = 128, f_min: float | None = None,
                 f_max: float | None = None, mel_scale: str = "htk", mel_norm: str | None = None,
                 window: str | None = None, eps: float | None = None, mean: float | None = None,
                 std: float | None = None, n_frames: int | None = None, frontend: str = "kaldi",
                 preemphasis: float | None = None, remove_dc: bool | None = None) -> None:
        super().__init__()
        if frontend not in _FRONTENDS:
            raise ValueError(f"frontend must be one of {', '.join(_FRONTENDS)}, got {frontend!r}")
        self.frontend, self.sample_rate, self.n_mels = frontend, sample_rate, n_mels
        self.mean, self.std, self.n_frames = mean, std, n_frames
        self.hop_length = int(sample_rate * 10 / 1000) if hop_length is None else int(hop_length)
        if frontend == "kaldi":
            if mel_norm is not None or mel_scale == "slaney":
                raise ValueError("mel_scale='slaney' and mel_norm belong to frontend='stft' (Kaldi's filters are "
                                 "triangles on the 1127·ln(1 + f/700) mel scale)")
            self.win_length = int(sample_rate * 25 / 1000) if win_length is None else int(win_length)
            self.n_fft = 1 << max(1, self.win_length - 1).bit_length() if n_fft is None else int(n_fft)
            self.preemphasis = 0.97 if preemphasis is None else float(preemphasis)
            self.remove_dc = True if remove_dc is None else bool(remove_dc)
            self.eps = KALDI_EPS if eps is None else float(eps)
            self._check_lengths()
            win = kaldi_window(window or "hanning", self.win_length)
            fb = kaldi_mel_filterbank(self.n_fft, n_mels, sample_rate, 20.0 if f_min is None else f_min, f_max)
        else:
            if preemphasis or remove_dc:
                raise ValueError("preemphasis and remove_dc belong to frontend='kaldi'")
            self.preemphasis, self.remove_dc = 0.0, False
            self.n_fft = int(sample_rate * 25 / 1000) if n_fft is None else int(n_fft)
            self.win_length = self.n_fft if win_length is None else int(win_length)
            self.eps = 1e-6 if eps is None else float(eps)
            self._check_lengths()
            window = window or "hann"
            if window not in _STFT_WINDOWS:
                raise ValueError(f"window must be one of {sorted(_STFT_WINDOWS)} for frontend='stft', got {window!r}")
            win = _STFT_WINDOWS[window](self.win_length, periodic=True, dtype=torch.float64)
            fb = mel_filterbank(self.n_fft // 2 + 1, n_mels, sample_rate, 0.0 if f_min is None else f_min, f_max,
                                mel_scale, mel_norm)
        self.register_buffer("window", win.float(), persistent=False)
        self.register_buffer("mel_fb", fb.float(), persistent=False)

    def _check_lengths(self) -> None:
        if not 0 < self.win_length <= self.n_fft or self.hop_length < 1:
            raise ValueError(f"need 0 < win_length <= n_fft and hop_length >= 1, got win_length={self.win_length}, "
                             f"n_fft={self.n_fft}, hop_length={self.hop_length}")

    def num_frames(self, n_samples: int) -> int:
        """Frames produced for a waveform of ``n_samples`` (before ``n_frames`` cropping/padding)."""
        if self.frontend == "kaldi":
            return 1 + (n_samples - self.win_length) // self.hop_length if n_samples >= self.win_length else 0
        return 1 + n_samples // self.hop_length

    def _check_input(self, wave: torch.Tensor) -> torch.Tensor:
        """(B, N) waveforms long enough for the frames and a backbone-sized image."""
        if wave.dim() == 3 and wave.shape[1] == 1:
            wave = wave[:, 0]
        if wave.dim() != 2:
            raise ValueError(f"audio input must be a waveform batch (batch, samples) or (batch, 1, samples), "
                             f"got shape {tuple(wave.shape)}")
        n = wave.shape[-1]
        if self.frontend == "kaldi" and n < self.win_length:
            raise ValueError(f"audio input has {n} samples; one frame needs win_length = {self.win_length}")
        if self.frontend == "stft" and n <= self.n_fft // 2:
            raise ValueError(f"audio input has {n} samples; the centred STFT needs more than n_fft/2 = "
                             f"{self.n_fft // 2}")
        frames = self.n_frames or self.num_frames(n)
        if frames < MIN_SIZE or self.n_mels < MIN_SIZE:
            raise ValueError(f"log-mel image would be {frames}x{self.n_mels} (frames x mels) for {n} samples; "
                             f"the backbone needs both >= {MIN_SIZE} (longer audio, smaller hop or more mels)")
        return wave

    def _power(self, x: torch.Tensor) -> torch.Tensor:
        """Power spectra (B, T, n_fft // 2 + 1) of the frames."""
        if self.frontend == "stft":
            spec = torch.stft(x, self.n_fft, self.hop_length, self.win_length, self.window, center=True,
                              pad_mode="reflect", return_complex=True).transpose(1, 2)
        else:
            frames = x.unfold(-1, self.win_length, self.hop_length)  # (B, T, win), a view
            if self.remove_dc:
                frames = frames - frames.mean(dim=-1, keepdim=True)
            if self.preemphasis:  # Kaldi: x[i] -= p·x[i-1], and x[0] -= p·x[0]
                prev = torch.cat([frames[..., :1], frames[..., :-1]], dim=-1)
                frames = frames - self.preemphasis * prev
            spec = torch.fft.rfft(frames * self.window, n=self.n_fft)  # zero-padded to n_fft
        return spec.real.square() + spec.imag.square()

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        wave = self._check_input(wave)
        mel = torch.matmul(self._power(wave.to(self.mel_fb.dtype)), self.mel_fb)  # (B, T, F)
        out = torch.log(mel.clamp_min(self.eps) if self.frontend == "kaldi" else mel + self.eps)
        if self.n_frames is not None:
            T = out.shape[1]
            if T > self.n_frames:
                out = out[:, : self.n_frames]
            elif T < self.n_frames:
                out = F.pad(out, (0, 0, 0, self.n_frames - T), value=math.log(self.eps))
        if self.mean is not None:
            out = out - self.mean
        if self.std is not None:
            out = out / self.std
        return out.unsqueeze(1).to(wave.dtype if wave.is_floating_point() else torch.float32)


# ----------------------------------------------------------------------------------------------- video
def grid_shape(n_frames: int) -> tuple[int, int]:
    """(rows, cols) with rows·cols = n_frames, closest to square (rows <= cols); e.g. 16 → (4, 4), 8 → (2, 4)."""
    if n_frames < 1:
        raise ValueError(f"need at least one frame, got {n_frames}")
    rows = max(r for r in range(1, math.isqrt(n_frames) + 1) if n_frames % r == 0)
    return rows, n_frames // rows


def frames_to_grid(video: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
    """``(B, N_F, C, h, w) → (B, C, rows·h, cols·w)``: frame n at grid cell (n // cols, n % cols) (Eq. 5)."""
    if video.dim() != 5:
        raise ValueError(f"video input must be (batch, frames, channels, height, width), got {tuple(video.shape)}")
    B, N, C, h, w = video.shape
    rows, cols = grid_shape(N) if grid is None else (int(grid[0]), int(grid[1]))
    if rows * cols != N:
        raise ValueError(f"grid {rows}x{cols} holds {rows * cols} frames, the video has {N}")
    return video.reshape(B, rows, cols, C, h, w).permute(0, 3, 1, 4, 2, 5).reshape(B, C, rows * h, cols * w)


def grid_to_frames(image: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`frames_to_grid`: ``(B, C, rows·h, cols·w) → (B, rows·cols, C, h, w)``."""
    B, C, H, W = image.shape
    rows, cols = grid
    if H % rows or W % cols:
        raise ValueError(f"image {H}x{W} does not split into a {rows}x{cols} grid")
    h, w = H // rows, W // cols
    return image.reshape(B, C, rows, h, cols, w).permute(0, 2, 4, 1, 3, 5).reshape(B, rows * cols, C, h, w)


class VideoAdapter(nn.Module):
    """Video ``(B, N_F, C, h, w)`` → ``(B, C, H, W)`` with ``HW / hw = N_F`` (Eq. 5), frames on a grid."""

    def __init__(self, n_frames: int = 16, channels: int = 3, grid: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.n_frames, self.channels = int(n_frames), int(channels)
        self.grid = grid_shape(self.n_frames) if grid is None else (int(grid[0]), int(grid[1]))
        if self.grid[0] * self.grid[1] != self.n_frames:
            raise ValueError(f"grid {self.grid} does not hold n_frames={self.n_frames}")
        self.out_channels = self.channels

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        if video.dim() != 5 or video.shape[1] != self.n_frames or video.shape[2] != self.channels:
            raise ValueError(f"video input must be (batch, {self.n_frames} frames, {self.channels} channels, h, w), "
                             f"got shape {tuple(video.shape)}")
        h, w = video.shape[-2:]
        H, W = self.grid[0] * h, self.grid[1] * w
        if H < MIN_SIZE or W < MIN_SIZE:
            raise ValueError(f"frames of {h}x{w} on a {self.grid[0]}x{self.grid[1]} grid give {H}x{W}; the backbone "
                             f"needs >= {MIN_SIZE}x{MIN_SIZE}")
        return frames_to_grid(video, self.grid)


# ----------------------------------------------------------------------------------------- point cloud
#: coordinate pairs (u along width, v along height) and the depth axis of each view
VIEWS: tuple[tuple[int, int, int], ...] = ((0, 1, 2), (1, 2, 0), (0, 2, 1))  # xy, yz, xz


def project_points(points: torch.Tensor, resolution: int = 224, normalize: bool = True) -> torch.Tensor:
    """Scatter ``(B, P, 3)`` points onto three orthographic views → ``(B, 3, 2, R, R)`` (occupancy, depth).

    With ``normalize`` each cloud is centred at its mean and scaled into the unit ball. Pixel (v, u) of view
    (a, b | d) collects the points whose (a, b) coordinates in [-1, 1] fall into it; occupancy =
    ``log1p(count)``, depth = max over those points of ``(1 + coord_d) / 2`` (0 for empty pixels, so depth
    is in (0, 1] where a point exists). Points outside [-1, 1] are dropped. NaN points are an error.
    """
    if points.dim() != 3 or points.shape[-1] != 3:
        raise ValueError(f"point cloud input must be (batch, points, 3), got shape {tuple(points.shape)}")
    if not torch.isfinite(points).all():
        raise ValueError("point cloud input contains NaN/inf coordinates")
    B, P, _ = points.shape
    R = int(resolution)
    pts = points.float()
    if normalize:
        pts = pts - pts.mean(dim=1, keepdim=True)
        scale = pts.norm(dim=-1).amax(dim=1).clamp_min(1e-12)
        pts = pts / scale.view(B, 1, 1)
    maps = pts.new_zeros(B, 3, 2, R * R)
    for v, (a, b, d) in enumerate(VIEWS):
        u_idx = torch.floor((pts[..., a] + 1) / 2 * R).long()
        v_idx = torch.floor((1 - pts[..., b]) / 2 * R).long()  # image row 0 at the top (+b)
        inside = (u_idx >= 0) & (u_idx < R) & (v_idx >= 0) & (v_idx < R)
        u_idx, v_idx = u_idx.clamp(0, R - 1), v_idx.clamp(0, R - 1)
        flat = v_idx * R + u_idx  # (B, P)
        ones = inside.to(pts.dtype)
        maps[:, v, 0].scatter_add_(1, flat, ones)
        depth = ((1 + pts[..., d]) / 2).clamp(0, 1) * ones
        maps[:, v, 1].scatter_reduce_(1, flat, depth, reduce="amax", include_self=True)
    maps[:, :, 0] = torch.log1p(maps[:, :, 0])
    return maps.view(B, 3, 2, R, R).to(points.dtype)


class PointCloudAdapter(nn.Module):
    """Points ``(B, P, 3)`` → ``(B, 3, R, R)`` (Eq. 4): three-view projections through learnable conv layers.

    The views (xy, yz, xz; 2 channels each: occupancy and depth, :func:`project_points`) share a small conv
    net (3×3 conv → BN → GELU → 3×3 conv → BN → GELU → 1×1 conv to one channel) that densifies the sparse point
    splats; output channel v is view v, like the RGB planes of an image.
    """

    out_channels = 3

    def __init__(self, resolution: int = 224, hidden: int = 16, normalize: bool = True) -> None:
        super().__init__()
        if resolution < MIN_SIZE:
            raise ValueError(f"resolution must be >= {MIN_SIZE}, got {resolution}")
        self.resolution, self.normalize = int(resolution), normalize
        self.conv = nn.Sequential(
            nn.Conv2d(2, hidden, 3, padding=1, bias=False), nn.BatchNorm2d(hidden), nn.GELU(),
            nn.Conv2d(hidden, hidden, 3, padding=1, bias=False), nn.BatchNorm2d(hidden), nn.GELU(),
            nn.Conv2d(hidden, 1, 1),
        )

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        maps = project_points(points, self.resolution, self.normalize)  # (B, 3, 2, R, R)
        B, R = maps.shape[0], self.resolution
        maps = maps.to(self.conv[0].weight.dtype)
        return self.conv(maps.reshape(B * 3, 2, R, R)).reshape(B, 3, R, R)


# ----------------------------------------------------------------------------------------------- image
class ImageAdapter(nn.Module):
    """Images ``(B, C, H, W)`` as they are; ``size`` optionally resizes (bilinear) e.g. 8×8 digits to 32×32."""

    def __init__(self, channels: int = 3, size: int | Sequence[int] | None = None) -> None:
        super().__init__()
        self.out_channels = int(channels)
        self.size = None if size is None else ((int(size),) * 2 if isinstance(size, int) else tuple(size))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if image.dim() != 4 or image.shape[1] != self.out_channels:
            raise ValueError(f"image input must be (batch, {self.out_channels} channels, H, W), "
                             f"got shape {tuple(image.shape)}")
        if self.size is not None and tuple(image.shape[-2:]) != self.size:
            image = F.interpolate(image, size=self.size, mode="bilinear", align_corners=False)
        if min(image.shape[-2:]) < MIN_SIZE:
            raise ValueError(f"image of {image.shape[-2]}x{image.shape[-1]} is smaller than the backbone's "
                             f"{MIN_SIZE}x{MIN_SIZE} minimum (pass size= to upsample)")
        return image


# ------------------------------------------------------------------------------------------ classifier
MODALITIES: dict[str, type[nn.Module]] = {
    "image": ImageAdapter,
    "audio": AudioAdapter,
    "video": VideoAdapter,
    "point_cloud": PointCloudAdapter,
}
_ALIASES = {"pointcloud": "point_cloud", "points": "point_cloud", "images": "image"}


class ModalityClassifier(nn.Module):
    """Adapter → UniRepLKNet classifier; ``forward(raw input) → logits (B, num_classes)``."""

    def __init__(self, modality: str, adapter: nn.Module, backbone: nn.Module) -> None:
        super().__init__()
        self.modality = modality
        self.adapter = adapter
        self.backbone = backbone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.adapter(x))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled, normalised features before the classification head."""
        feats = self.backbone.forward_features(self.adapter(x))[-1]
        return self.backbone.norm(feats.mean(dim=(-2, -1)))

    def reparameterize(self) -> ModalityClassifier:
        """Re-parameterize in place, the backbone blocks among others (identical outputs in eval mode)."""
        reparameterize_children(self)
        return self


def create_classifier(modality: str, variant: str = "unireplknet_a", num_classes: int = 1000,
                      **kw: Any) -> ModalityClassifier:
    """Adapter for ``modality`` (image, audio, video, point_cloud) + ``create_model(variant, in_chans=C')``.

    Keyword arguments are routed by name: those of the adapter's constructor (e.g. ``n_mels``, ``n_frames``,
    ``resolution``, ``size``, ``channels``) go to the adapter, the rest to
    :func:`~urlk_forecast.models.unireplknet.create_model` (e.g. ``dims``, ``depths``, ``kernel_sizes``,
    ``drop_path_rate``, ``pretrained``).
    """
    key = normalize_name(modality)
    key = _ALIASES.get(key, key)
    if key not in MODALITIES:
        raise ValueError(f"unknown modality {modality!r}; available: {', '.join(MODALITIES)}")
    cls = MODALITIES[key]
    names = set(inspect.signature(cls.__init__).parameters) - {"self"}
    adapter_kw = {k: kw.pop(k) for k in list(kw) if k in names}
    if "in_chans" in kw:
        raise ValueError("in_chans is set by the adapter (its out_channels); do not pass it to create_classifier")
    adapter = cls(**adapter_kw)
    backbone = create_model(variant, in_chans=adapter.out_channels, num_classes=num_classes, **kw)
    return ModalityClassifier(key, adapter, backbone)
