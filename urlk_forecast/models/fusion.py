"""Asymmetric large-kernel fusion (paper §3.4): one feature map is the convolution kernel over another.

The operation, for a sequence ``X`` and a kernel map ``Y`` with ``K`` taps and ``J`` output channels, is

    Z[i, j] = Σ_k X[i + k − 1] · Y[k, j]            (1-based, as in the paper; 0-based: X[i + k − p])

i.e. every column of ``Y`` is a 1-D kernel slid over ``X`` (a cross-correlation, like ``F.conv1d``). It is
*asymmetric*: the two inputs play different roles (data vs. kernel), and the kernel is as large as the
feature map that provides it, so a single layer mixes information over the kernel's whole extent.
:func:`large_kernel_fusion` is the batched, differentiable, N-channel form (1-D or 2-D; each sample has its own
kernel): ``x`` (B, C, *S) and ``kernel`` (B, J, C/groups, *K) give

    Z[b, j, i] = Σ_c Σ_k x[b, g·C/groups + c, i + k − p] · kernel[b, j, c, k]       (g = j // (J/groups))

with the paper's form as the case C = 1 (``kernel[b, j, 0, k] = Y[k, j]``) and the depthwise form as
``groups = C = J`` (channel c of ``x`` convolved with kernel row c). It runs either as one grouped convolution
(batch folded into the groups) or, for large kernels, through the FFT (same numbers up to rounding).

:class:`LargeKernelFusion` wraps it as a layer: a second feature map ``y`` (B, C_y, *S_y) is projected pointwise
to C channels, resampled to the kernel size and used as a depthwise kernel over ``x``; the result is
normalised, projected and added to ``x`` through a small learnable gate (so the layer starts near identity).

:class:`ForecastFusion` plugs it into :class:`~urlk_forecast.models.forecast_net.ForecastNet` through its
``fusion=`` hook: ``ForecastNet(..., fusion={"channels": 1, "length": 72})`` builds one via
:func:`build_forecast_fusion`; the batch then carries ``batch["aux"]`` (see :class:`ForecastFusion`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from numpy.typing import ArrayLike
from torch import nn

__all__ = ["large_kernel_fusion", "LargeKernelFusion", "ForecastFusion", "build_forecast_fusion"]

_CONV = {1: F.conv1d, 2: F.conv2d}


def _pad_amounts(ksize: Sequence[int], padding: str | int | Sequence[int]) -> list[tuple[int, int]]:
    """(left, right) zero padding per spatial dim; ``"same"`` puts the extra tap of an even kernel on the right."""
    if padding == "same":
        return [((k - 1) // 2, k // 2) for k in ksize]
    if padding == "valid":
        return [(0, 0) for _ in ksize]
    if isinstance(padding, int) and not isinstance(padding, bool):
        return [(padding, padding) for _ in ksize]
    if isinstance(padding, Sequence) and len(padding) == len(ksize):
        return [(int(p), int(p)) for p in padding]
    raise ValueError(f"padding must be 'same', 'valid', an int or {len(ksize)} ints, got {padding!r}")


def _check_fusion_args(x: torch.Tensor, kernel: torch.Tensor, groups: int) -> int:
    if not isinstance(x, torch.Tensor) or not isinstance(kernel, torch.Tensor):
        raise TypeError("large_kernel_fusion expects torch tensors for x and kernel")
    nd = x.dim() - 2
    if nd not in _CONV:
        raise ValueError(f"x must be (batch, channels, L) or (batch, channels, H, W), got shape {tuple(x.shape)}")
    if kernel.dim() != nd + 3:
        raise ValueError(f"kernel must be (batch, out_channels, channels/groups, {'K' if nd == 1 else 'Kh, Kw'}) "
                         f"for x of shape {tuple(x.shape)}, got shape {tuple(kernel.shape)}")
    B, C = x.shape[:2]
    if kernel.shape[0] != B:
        raise ValueError(f"kernel batch {kernel.shape[0]} does not match x batch {B} (one kernel per sample)")
    if groups < 1 or C % groups or kernel.shape[1] % groups:
        raise ValueError(f"groups={groups} must divide x channels ({C}) and kernel out_channels ({kernel.shape[1]})")
    if kernel.shape[2] != C // groups:
        raise ValueError(f"kernel dim 2 must be channels/groups = {C // groups}, got {kernel.shape[2]}")
    if kernel.dtype != x.dtype or kernel.device != x.device:
        raise ValueError(f"x and kernel must share dtype/device, got {x.dtype}/{x.device} and "
                         f"{kernel.dtype}/{kernel.device}")
    return nd


def large_kernel_fusion(
    x: torch.Tensor,
    kernel: torch.Tensor,
    groups: int = 1,
    padding: str | int | Sequence[int] = "same",
    method: str = "auto",
) -> torch.Tensor:
    """Per-sample convolution of ``x`` (B, C, *S) with ``kernel`` (B, J, C/groups, *K) → (B, J, *S_out).

    ``padding``: ``"same"`` (output size = input size), ``"valid"``, an int or per-dim ints (zeros). ``method``:
    ``"direct"`` (one grouped conv), ``"fft"`` (frequency domain; cheaper once the kernel has more than ~30 taps
    per dim) or ``"auto"``. Differentiable w.r.t. both inputs.
    """
    nd = _check_fusion_args(x, kernel, groups)
    ksize = tuple(kernel.shape[3:])
    pads = _pad_amounts(ksize, padding)
    flat_pad = [p for lr in reversed(pads) for p in lr]
    xp = F.pad(x, flat_pad) if any(flat_pad) else x
    for d, k in enumerate(ksize):
        if xp.shape[2 + d] < k:
            raise ValueError(f"kernel size {ksize} exceeds the padded input {tuple(xp.shape[2:])}")
    if method == "auto":
        method = "fft" if math.prod(ksize) >= (32 if nd == 1 else 24 * 24) else "direct"
    if method == "direct":
        return _direct(xp, kernel, groups, nd)
    if method == "fft":
        return _fft(xp, kernel, groups, nd)
    raise ValueError(f"method must be 'auto', 'direct' or 'fft', got {method!r}")


def _direct(xp: torch.Tensor, kernel: torch.Tensor, groups: int, nd: int) -> torch.Tensor:
    B, C = xp.shape[:2]
    J = kernel.shape[1]
    out = _CONV[nd](xp.reshape(1, B * C, *xp.shape[2:]), kernel.reshape(B * J, *kernel.shape[2:]),
                    groups=B * groups)
    return out.reshape(B, J, *out.shape[2:])


def _fft(xp: torch.Tensor, kernel: torch.Tensor, groups: int, nd: int) -> torch.Tensor:
    """Valid cross-correlation via real FFTs: conj(K̂)·X̂ summed over the input channels of each group."""
    B, C = xp.shape[:2]
    J = kernel.shape[1]
    S, K = tuple(xp.shape[2:]), tuple(kernel.shape[3:])
    dims = tuple(range(-nd, 0))
    work = xp.float() if xp.dtype in (torch.float16, torch.bfloat16) else xp
    ker = kernel.to(work.dtype)
    xf = torch.fft.rfftn(work, s=S, dim=dims)  # (B, C, *F)
    kf = torch.fft.rfftn(ker, s=S, dim=dims)  # (B, J, C/g, *F)
    Cg, Jg = C // groups, J // groups
    xf = xf.reshape(B, groups, 1, Cg, *xf.shape[2:])
    kf = kf.reshape(B, groups, Jg, Cg, *kf.shape[3:])
    zf = (xf * kf.conj()).sum(dim=3).reshape(B, J, *xf.shape[4:])
    z = torch.fft.irfftn(zf, s=S, dim=dims)
    out_size = [s - k + 1 for s, k in zip(S, K)]
    z = z[(Ellipsis, *[slice(0, n) for n in out_size])]
    return z.to(xp.dtype)


class LargeKernelFusion(nn.Module):
    """Fuse ``y`` (B, C_y, *S_y) into ``x`` (B, C, *S): ``x + gate · proj(norm(x ⊛ kernel(y)))``.

    ``kernel(y)``: pointwise projection C_y → C, resampled (area/linear) to ``kernel_size`` taps per spatial dim
    (``None`` keeps y's own size: the whole feature map is the kernel), scaled by 1/taps; it is applied depthwise
    (channel c of x with kernel channel c, :func:`large_kernel_fusion` with ``groups = C``) with "same" padding.
    ``gate`` is a per-channel layer scale initialised at ``init_scale``.
    """

    def __init__(self, channels: int, aux_channels: int, kernel_size: int | Sequence[int] | None = None,
                 ndim: int = 1, init_scale: float = 0.1, method: str = "auto") -> None:
        super().__init__()
        if ndim not in _CONV:
            raise ValueError(f"ndim must be 1 or 2, got {ndim}")
        if channels < 1 or aux_channels < 1:
            raise ValueError(f"channels and aux_channels must be >= 1, got {channels}, {aux_channels}")
        if kernel_size is not None:
            ks = (kernel_size,) * ndim if isinstance(kernel_size, int) else tuple(int(k) for k in kernel_size)
            if len(ks) != ndim or min(ks) < 1:
                raise ValueError(f"kernel_size must be a positive int or {ndim} positive ints, got {kernel_size!r}")
            kernel_size = ks
        self.channels, self.aux_channels, self.ndim = int(channels), int(aux_channels), ndim
        self.kernel_size = kernel_size
        self.method = method
        self.kernel_proj = nn.Linear(aux_channels, channels)
        self.norm = nn.GroupNorm(1, channels)
        self.out_proj = nn.Linear(channels, channels)
        self.gate = nn.Parameter(torch.full((channels,), float(init_scale)))

    def make_kernel(self, y: torch.Tensor) -> torch.Tensor:
        """``y`` (B, C_y, *S_y) → depthwise kernel (B, C, 1, *K), normalised by the number of taps."""
        if y.dim() != self.ndim + 2 or y.shape[1] != self.aux_channels:
            raise ValueError(f"aux feature map must be (batch, {self.aux_channels}, "
                             f"{'L' if self.ndim == 1 else 'H, W'}), got {tuple(y.shape)}")
        k = self.kernel_proj(y.movedim(1, -1)).movedim(-1, 1)
        if self.kernel_size is not None and tuple(k.shape[2:]) != self.kernel_size:
            mode = "linear" if self.ndim == 1 else "bilinear"
            k = F.interpolate(k, size=self.kernel_size, mode=mode, align_corners=True)
        taps = math.prod(k.shape[2:])
        return (k / taps).unsqueeze(2)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.dim() != self.ndim + 2 or x.shape[1] != self.channels:
            raise ValueError(f"x must be (batch, {self.channels}, {'L' if self.ndim == 1 else 'H, W'}), "
                             f"got {tuple(x.shape)}")
        if y.shape[0] != x.shape[0]:
            raise ValueError(f"x and y batch sizes differ: {x.shape[0]} vs {y.shape[0]}")
        z = large_kernel_fusion(x, self.make_kernel(y.to(x.dtype)), groups=self.channels, method=self.method)
        z = self.out_proj(self.norm(z).movedim(1, -1)).movedim(-1, 1)
        return x + self.gate.view(1, -1, *([1] * self.ndim)) * z


class ForecastFusion(nn.Module):
    """ForecastNet hook: fuse an auxiliary input (second variable, NWP forecast, gridded field) into the tokens.

    ``batch[key]`` (default ``"aux"``) is one of

    * station series ``(B, length, S)`` or ``(B, length, S, channels)`` in model station order, e.g. a second
      variable or a numerical forecast interpolated to the stations over ``seq_len + pred_len`` steps;
    * a gridded field ``(B, channels, H, W)`` or ``(B, length, channels, H, W)``, sampled bilinearly at
      ``grid_points`` (S, 2): station (x, y) positions in the grid's [-1, 1] coordinates (x along W).

    NaN (missing) aux values are not zero-filled silently: the value is set to 0 and an extra "observed" channel
    (1/0) is appended, so the network sees where data is missing. Per node (the net's ``node_size`` stations),
    the series becomes an aux feature map ``A`` (B·n, d_model, length) (Linear over stations × channels +
    learned position embedding). The encoder tokens ``(B·n, T, d_model)`` are the large kernel: each token
    channel is a depthwise kernel with ``T`` taps (resampled to ``kernel_size`` if given), slid over ``A``
    (:func:`large_kernel_fusion`, Eq. of §3.4). The fused sequence (B·n, length, d_model) is, with
    ``merge="append"`` (default), appended to the tokens (the decoder's cross attention can then read
    time-aligned aux information, including future steps of an NWP forecast), or with ``merge="add"`` pooled to
    the T tokens and added through a gate initialised at ``init_scale``.
    """

    def __init__(self, d_model: int, n_stations: int, node_size: int, n_nodes: int, channels: int = 1,
                 length: int = 48, kernel_size: int | None = None, merge: str = "append",
                 grid_points: torch.Tensor | ArrayLike | None = None, key: str = "aux", init_scale: float = 0.1,
                 method: str = "auto") -> None:
        super().__init__()
        if merge not in ("append", "add"):
            raise ValueError(f"fusion merge must be 'append' or 'add', got {merge!r}")
        if channels < 1 or length < 1:
            raise ValueError(f"fusion channels and length must be >= 1, got channels={channels}, length={length}")
        if kernel_size is not None and int(kernel_size) < 1:
            raise ValueError(f"fusion kernel_size must be >= 1, got {kernel_size}")
        self.d_model, self.n_stations, self.node_size, self.n_nodes = d_model, n_stations, node_size, n_nodes
        self.channels, self.length, self.merge, self.key = int(channels), int(length), merge, key
        self.kernel_size = None if kernel_size is None else int(kernel_size)
        self.method = method
        if grid_points is not None:
            gp = torch.as_tensor(grid_points, dtype=torch.float32)
            if gp.shape != (n_stations, 2) or not torch.isfinite(gp).all():
                raise ValueError(f"fusion grid_points must be finite (n_stations, 2) = ({n_stations}, 2) positions "
                                 f"in [-1, 1], got shape {tuple(gp.shape)}")
            self.register_buffer("grid_points", gp)
        else:
            self.grid_points = None
        index = torch.arange(n_nodes * node_size).clamp(max=n_stations - 1)
        self.register_buffer("station_index", index, persistent=False)
        self.in_proj = nn.Linear(node_size * 2 * self.channels, d_model)
        self.pos = nn.Parameter(torch.zeros(self.length, d_model))
        nn.init.trunc_normal_(self.pos, std=0.02)
        self.kernel_proj = nn.Linear(d_model, d_model)
        self.norm = nn.LayerNorm(d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        self.gate = nn.Parameter(torch.full((d_model,), float(init_scale))) if merge == "add" else None

    # -------------------------------------------------------------------------------------------- input
    def _station_series(self, aux: torch.Tensor) -> torch.Tensor:
        """Any accepted aux layout → (B, length, S, channels)."""
        S, C, L = self.n_stations, self.channels, self.length
        got = tuple(aux.shape)
        if self.grid_points is not None:
            if aux.dim() == 4:
                aux = aux.unsqueeze(1).expand(-1, L, -1, -1, -1)
            if aux.dim() != 5 or aux.shape[1] != L or aux.shape[2] != C:
                raise ValueError(f"batch[{self.key!r}] must be a gridded field (batch, {C}, H, W) or (batch, "
                                 f"{L}, {C}, H, W) (length={L}, channels={C}), got {got}")
            B, _, _, H, W = aux.shape
            grid = self.grid_points.to(aux.dtype).view(1, 1, S, 2).expand(B * L, 1, S, 2)
            vals = F.grid_sample(aux.reshape(B * L, C, H, W), grid, mode="bilinear", align_corners=True)
            return vals.reshape(B, L, C, S).transpose(2, 3)
        if aux.dim() == 3:
            aux = aux.unsqueeze(-1)
        if aux.dim() != 4 or aux.shape[1:] != (L, S, C):
            raise ValueError(f"batch[{self.key!r}] must be station series (batch, length={L}, stations={S}) or "
                             f"(batch, {L}, {S}, channels={C}), got {got}")
        return aux

    def aux_features(self, aux: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Aux input → per-node feature map ``A`` (B·n, length, d_model)."""
        series = self._station_series(aux.to(dtype))
        observed = torch.isfinite(series)
        series = torch.where(observed, series, torch.zeros((), dtype=dtype, device=series.device))
        feats = torch.cat([series, observed.to(dtype)], dim=-1)  # (B, L, S, 2C)
        feats = feats.index_select(2, self.station_index)  # pad to n·D' stations (repeat the last one)
        B, L = feats.shape[:2]
        feats = feats.reshape(B, L, self.n_nodes, self.node_size * 2 * self.channels).transpose(1, 2)
        return self.in_proj(feats.reshape(B * self.n_nodes, L, -1)) + self.pos

    # ------------------------------------------------------------------------------------------ forward
    def forward(self, tokens: torch.Tensor, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        if self.key not in batch:
            raise ValueError(f"the forecaster was built with fusion, so each batch needs batch[{self.key!r}] "
                             f"(station series (batch, {self.length}, {self.n_stations}"
                             f"{'' if self.channels == 1 else f', {self.channels}'}) or a gridded field)")
        BN, T, D = tokens.shape
        a = self.aux_features(batch[self.key], tokens.dtype)
        if a.shape[0] != BN:
            raise ValueError(f"batch[{self.key!r}] has batch size {a.shape[0] // self.n_nodes}, the tokens "
                             f"{BN // self.n_nodes}")
        kernel = self.kernel_proj(tokens).transpose(1, 2)  # (B·n, D, T): the tokens are the kernel
        if self.kernel_size is not None and self.kernel_size != T:
            kernel = F.interpolate(kernel, size=self.kernel_size, mode="linear", align_corners=True)
        kernel = (kernel / kernel.shape[-1]).unsqueeze(2)
        z = large_kernel_fusion(a.transpose(1, 2), kernel, groups=D, method=self.method)  # (B·n, D, L)
        z = self.out_proj(self.norm(z.transpose(1, 2) + a))  # (B·n, L, D)
        if self.merge == "append":
            return torch.cat([tokens, z], dim=1)
        pooled = F.adaptive_avg_pool1d(z.transpose(1, 2), T).transpose(1, 2)
        return tokens + self.gate * pooled

    def extra_repr(self) -> str:
        grid = ", gridded" if self.grid_points is not None else ""
        return (f"key={self.key!r}, channels={self.channels}, length={self.length}, merge={self.merge}, "
                f"kernel_size={self.kernel_size or 'T'}{grid}")


def build_forecast_fusion(*, d_model: int, seq_len: int, n_nodes: int, node_size: int, n_stations: int,
                          channels: int = 1, length: int | None = None, kernel_size: int | None = None,
                          merge: str = "append", grid_points: torch.Tensor | ArrayLike | None = None,
                          key: str = "aux",
                          init_scale: float = 0.1, method: str = "auto") -> ForecastFusion:
    """Builder called by ``ForecastNet(fusion={...})``; ``length`` defaults to ``seq_len`` aux steps."""
    return ForecastFusion(d_model, n_stations, node_size, n_nodes, channels=channels,
                          length=seq_len if length is None else length, kernel_size=kernel_size, merge=merge,
                          grid_points=grid_points, key=key, init_scale=init_scale, method=method)
