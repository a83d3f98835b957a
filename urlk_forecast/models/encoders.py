"""Swappable encoders behind the forecaster's embedding and decoder (paper Tables 11/12 comparisons).

Every encoder maps the embedded node series ``(B·n, L, d_model)`` to encoder tokens ``(B·n, T, d_model)``:

* ``unireplknet`` — paper §3.3: Eq. 2 reshape of each node's ``L × d_model`` embedding to a one-channel
  image ``(B·n, 1, H, W)``, a UniRepLKNet (any variant, any kernel size K via ``kernel_size``), its last-stage
  features ``(B·n, C4, H/32, W/32)`` flattened into ``H·W/1024`` tokens and projected by a Linear to d_model.
* ``convnext`` — the same image path with a ConvNeXt-style network (7×7 depthwise conv, LayerNorm, 4× MLP,
  layer scale; patchify stem and 2×2 downsampling) with the *same* stage depths and widths as the chosen
  UniRepLKNet variant: the "K=7, no structural re-parameterisation, no dilated branches" comparison point.
* ``resnet`` — the same image path with a ResNet-style network of 3×3 basic blocks (conv-BN-ReLU), the
  variant's widths, ResNet-18 stage depths (2, 2, 2, 2) for the shallow variants (a f p n) and ResNet-34 depths
  (3, 4, 6, 3) for the deep ones, which keeps the parameter count close to the UniRepLKNet variant.
* ``corrformer`` — the multi-correlation transformer encoder of Corrformer (no image; tokens = time steps).

Eq. 2 shape rule (:func:`eq2_image_shape`): ``H·W = L·d_model`` with H, W multiples of the encoder stride 32,
the factorisation closest to square (``H <= W``), e.g. 48·768 → 192×192 (the paper), 48·256 → 96×128,
48·384 → 96×192. When no such exact factorisation exists the flattened embedding is zero-padded at the end to
the smallest ``H·W >= L·d_model`` with H, W multiples of 32 (closest to square among the smallest areas),
unless ``allow_pad=False``, which raises. An explicit ``image_shape=(H, W)`` is validated the same way.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..ops import DWConv2d, dwconv2d
from .corrformer import CorrformerEncoder

__all__ = [
    "ENCODER_STRIDE",
    "eq2_image_shape",
    "ImageEncoder",
    "ConvNeXtLike",
    "ResNetLike",
    "build_encoder",
    "list_encoders",
    "variant_kernel_sizes",
    "resnet_depths",
]

ENCODER_STRIDE = 32


def eq2_image_shape(seq_len: int, d_model: int, multiple: int = ENCODER_STRIDE, allow_pad: bool = True,
                    image_shape: Sequence[int] | None = None) -> tuple[int, int, int]:
    """``(H, W, pad)`` for the Eq. 2 reshape of ``seq_len × d_model`` values (see the module docstring)."""
    n = int(seq_len) * int(d_model)
    if n <= 0:
        raise ValueError(f"seq_len and d_model must be positive, got {seq_len}, {d_model}")
    if image_shape is not None:
        H, W = (int(v) for v in image_shape)
        if H % multiple or W % multiple or H < multiple or W < multiple:
            raise ValueError(f"image_shape {H}x{W}: H and W must be positive multiples of the encoder stride "
                             f"{multiple}")
        if H * W < n or (H * W != n and not allow_pad):
            raise ValueError(f"image_shape {H}x{W} holds {H * W} values but seq_len·d_model = {seq_len}·{d_model} "
                             f"= {n}" + ("" if allow_pad else " (allow_pad=False needs H·W == seq_len·d_model)"))
        return H, W, H * W - n
    best = None
    for h in range(multiple, math.isqrt(n) + 1, multiple):
        if n % h == 0 and (n // h) % multiple == 0:
            best = (h, n // h)  # the largest h <= sqrt(n) is the closest to square
    if best is not None:
        return best[0], best[1], 0
    if not allow_pad:
        raise ValueError(
            f"seq_len·d_model = {seq_len}·{d_model} = {n} has no factorisation H·W with H and W multiples of "
            f"{multiple}; choose d_model so that seq_len·d_model is a multiple of {multiple * multiple} "
            f"(e.g. d_model a multiple of {multiple * multiple // math.gcd(multiple * multiple, seq_len)}) "
            "or allow padding")
    cands = []
    hmax = max(multiple, math.ceil(math.sqrt(n) / multiple) * multiple)
    for h in range(multiple, hmax + 1, multiple):
        w = max(multiple, math.ceil(n / h / multiple) * multiple)
        cands.append((h * w, abs(w - h), min(h, w), max(h, w)))
    area, _, H, W = min(cands)
    return H, W, area - n


def variant_kernel_sizes(variant: str, kernel_size: int | None) -> Any:
    """Per-block kernel sizes of ``variant`` with every large kernel (>= 5) replaced by ``kernel_size``.

    ``None`` keeps the released defaults; the 3×3 blocks stay 3×3 (so "UniRepLKNet with K" changes only the
    large-kernel blocks, as in the paper's kernel-size ablations).
    """
    if kernel_size is None:
        return None
    from .unireplknet import VARIANTS, _canonical_name, default_kernel_sizes

    k = int(kernel_size)
    if k < 3 or k % 2 == 0:
        raise ValueError(f"kernel_size must be an odd integer >= 3, got {kernel_size}")
    depths = VARIANTS[_canonical_name(variant)]["depths"]
    return [[k if ks >= 5 else ks for ks in stage] for stage in default_kernel_sizes(depths)]


def _variant_arch(variant: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    from .unireplknet import VARIANTS, _canonical_name

    cfg = VARIANTS[_canonical_name(variant)]
    return tuple(cfg["depths"]), tuple(cfg["dims"])


def resnet_depths(variant_depths: Sequence[int]) -> tuple[int, int, int, int]:
    """ResNet-18 layout for shallow variants (stage-3 depth <= 8), ResNet-34 layout for deeper ones."""
    return (2, 2, 2, 2) if variant_depths[2] <= 8 else (3, 4, 6, 3)


# ---------------------------------------------------------------------------------------------- helpers
class _LayerNorm2d(nn.Module):
    """LayerNorm over the channel dim of an NCHW tensor."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, x.shape[-1:], self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class _DropPath(nn.Module):
    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(1.0 - self.p)
        return x * keep / (1.0 - self.p)


class _FreezeBN:
    """Context: BatchNorm layers inside do not update running stats (used when checkpointing recomputes)."""

    def __init__(self, module: nn.Module) -> None:
        self.bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    def __enter__(self) -> None:
        self.saved = [(m.momentum, m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None)
                      for m in self.bns]
        for m in self.bns:
            m.momentum = 0.0

    def __exit__(self, *exc: object) -> None:
        for m, (mom, nbt) in zip(self.bns, self.saved):
            m.momentum = mom
            if nbt is not None:
                m.num_batches_tracked.copy_(nbt)


def _maybe_checkpoint(module: nn.Module, x: torch.Tensor, enabled: bool) -> torch.Tensor:
    """Run ``module(x)``, checkpointed when enabled in training; BN stats are updated once only."""
    if not (enabled and module.training and torch.is_grad_enabled()):
        return module(x)
    calls = [0]

    def run(inp: torch.Tensor) -> torch.Tensor:
        calls[0] += 1
        if calls[0] == 1:
            return module(inp)
        with _FreezeBN(module):
            return module(inp)

    return checkpoint(run, x, use_reentrant=False)


# ------------------------------------------------------------------------------------------- ConvNeXt
class _ConvNeXtBlock(nn.Module):
    def __init__(self, dim: int, kernel_size: int, drop_path: float, layer_scale_init_value: float) -> None:
        super().__init__()
        self.dwconv = DWConv2d(dim, kernel_size, bias=True)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), layer_scale_init_value)) if layer_scale_init_value > 0 else None
        self.drop_path = _DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv = self.dwconv
        if x.dtype != conv.weight.dtype:  # autocast (bf16/fp16): run the depthwise conv in the activation dtype
            bias = conv.bias.to(x.dtype) if conv.bias is not None else None
            y = dwconv2d(x, conv.weight.to(x.dtype), bias, conv.padding, conv.dilation)
        else:
            y = conv(x)
        y = y.permute(0, 2, 3, 1)
        y = self.pwconv2(F.gelu(self.pwconv1(self.norm(y))))
        if self.gamma is not None:
            y = y * self.gamma
        return x + self.drop_path(y.permute(0, 3, 1, 2))


class ConvNeXtLike(nn.Module):
    """ConvNeXt-style 4-stage network (patchify stem 4×4/4, 2×2/2 downsampling) exposing ``forward_features``."""

    def __init__(self, in_chans: int = 1, depths: Sequence[int] = (2, 2, 6, 2),
                 dims: Sequence[int] = (40, 80, 160, 320), kernel_size: int = 7, drop_path_rate: float = 0.0,
                 layer_scale_init_value: float = 1e-6,
                 with_cp: bool = False) -> None:
        super().__init__()
        if len(depths) != 4 or len(dims) != 4:
            raise ValueError(f"depths and dims need 4 entries, got {depths}, {dims}")
        self.in_chans = in_chans
        self.num_features = int(dims[-1])
        self.with_cp = with_cp
        self.downsample_layers = nn.ModuleList(
            [nn.Sequential(nn.Conv2d(in_chans, dims[0], 4, stride=4), _LayerNorm2d(dims[0]))]
            + [nn.Sequential(_LayerNorm2d(dims[i]), nn.Conv2d(dims[i], dims[i + 1], 2, stride=2)) for i in range(3)]
        )
        rates = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        cur = 0
        self.stages = nn.ModuleList()
        for i in range(4):
            self.stages.append(nn.Sequential(*[
                _ConvNeXtBlock(dims[i], kernel_size, rates[cur + j], layer_scale_init_value) for j in range(depths[i])
            ]))
            cur += depths[i]
        self.norm3 = _LayerNorm2d(dims[-1])
        self.apply(_trunc_normal_init)

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        for down, stage in zip(self.downsample_layers, self.stages):
            x = down(x)
            for block in stage:
                x = _maybe_checkpoint(block, x, self.with_cp)
        return [self.norm3(x)]


# --------------------------------------------------------------------------------------------- ResNet
class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, kernel_size: int, stride: int) -> None:
        super().__init__()
        p = kernel_size // 2
        self.conv1 = nn.Conv2d(cin, cout, kernel_size, stride, p, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, kernel_size, 1, p, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        nn.init.zeros_(self.bn2.weight)  # zero-init the last BN of each residual branch (standard practice)
        self.shortcut = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                         if stride != 1 or cin != cout else nn.Identity())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + self.shortcut(x))


class ResNetLike(nn.Module):
    """ResNet-style network of basic blocks (K×K convs, default 3), total stride 32, ``forward_features``."""

    def __init__(self, in_chans: int = 1, depths: Sequence[int] = (2, 2, 2, 2),
                 dims: Sequence[int] = (40, 80, 160, 320), kernel_size: int = 3, with_cp: bool = False) -> None:
        super().__init__()
        if len(depths) != 4 or len(dims) != 4:
            raise ValueError(f"depths and dims need 4 entries, got {depths}, {dims}")
        self.in_chans = in_chans
        self.num_features = int(dims[-1])
        self.with_cp = with_cp
        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, dims[0], 7, 2, 3, bias=False), nn.BatchNorm2d(dims[0]), nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, 1),
        )
        self.stages = nn.ModuleList()
        cin = dims[0]
        for i in range(4):
            blocks = [_BasicBlock(cin if j == 0 else dims[i], dims[i], kernel_size, 2 if (j == 0 and i > 0) else 1)
                      for j in range(depths[i])]
            self.stages.append(nn.Sequential(*blocks))
            cin = dims[i]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        for stage in self.stages:
            for block in stage:
                x = _maybe_checkpoint(block, x, self.with_cp)
        return [x]


def _trunc_normal_init(m: nn.Module) -> None:
    if isinstance(m, (nn.Conv2d, nn.Linear)):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


# ------------------------------------------------------------------------------------ image encoder
class ImageEncoder(nn.Module):
    """Eq. 2 reshape → 2-D backbone → last-stage tokens → Linear to d_model."""

    token_kind = "spatial"

    def __init__(self, backbone: nn.Module, d_model: int, seq_len: int, image_shape: Sequence[int] | None = None,
                 allow_pad: bool = True) -> None:
        super().__init__()
        self.backbone = backbone
        self.d_model = d_model
        self.seq_len = seq_len
        self.H, self.W, self.pad = eq2_image_shape(seq_len, d_model, ENCODER_STRIDE, allow_pad, image_shape)
        self.out_tokens = math.ceil(self.H / ENCODER_STRIDE) * math.ceil(self.W / ENCODER_STRIDE)
        self.projection = nn.Linear(int(backbone.num_features), d_model)

    def to_image(self, x: torch.Tensor) -> torch.Tensor:
        """``(B', L, d_model) → (B', 1, H, W)``: row-major flattening, zero tail padding if the shape needs it."""
        Bp, L, D = x.shape
        if L != self.seq_len or D != self.d_model:
            raise ValueError(f"encoder expects (batch, {self.seq_len}, {self.d_model}) input, got {tuple(x.shape)}")
        flat = x.reshape(Bp, L * D)
        if self.pad:
            flat = F.pad(flat, (0, self.pad))
        return flat.reshape(Bp, 1, self.H, self.W)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat = self.backbone.forward_features(self.to_image(x))[-1]  # (B', C4, H/32, W/32)
        return self.projection(feat.flatten(2).transpose(1, 2))

    def reparameterize(self) -> None:
        """Structural re-parameterisation of the backbone (UniRepLKNet blocks; BN folding for ResNet)."""
        from .unireplknet import reparameterize_model

        reparameterize_model(self.backbone)
        if isinstance(self.backbone, ResNetLike):
            _fold_resnet_bn(self.backbone)


def _fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    std = torch.sqrt(bn.running_var + bn.eps)
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                      conv.dilation, conv.groups, bias=True).to(conv.weight.device, conv.weight.dtype)
    with torch.no_grad():
        fused.weight.copy_(conv.weight * (bn.weight / std).reshape(-1, 1, 1, 1))
        bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        fused.bias.copy_(bn.bias + (bias - bn.running_mean) * bn.weight / std)
    return fused


def _fold_resnet_bn(net: ResNetLike) -> None:
    """Fold every BatchNorm into the preceding conv (inference form, identical outputs in eval mode)."""
    net.stem[0] = _fold_conv_bn(net.stem[0], net.stem[1])
    net.stem[1] = nn.Identity()
    for stage in net.stages:
        for b in stage:
            b.conv1, b.bn1 = _fold_conv_bn(b.conv1, b.bn1), nn.Identity()
            b.conv2, b.bn2 = _fold_conv_bn(b.conv2, b.bn2), nn.Identity()
            if isinstance(b.shortcut, nn.Sequential):
                b.shortcut = _fold_conv_bn(b.shortcut[0], b.shortcut[1])


# ------------------------------------------------------------------------------------------ registry
_IMAGE_KW = {"image_shape", "allow_pad"}
_UNIREPLKNET_KW = {"depths", "dims", "kernel_sizes", "drop_path_rate", "layer_scale_init_value", "deploy"}
_CONVNEXT_KW = {"depths", "dims", "drop_path_rate", "layer_scale_init_value"}
_RESNET_KW = {"depths", "dims"}
_CORRFORMER_KW = {"e_layers", "node_list", "factor_temporal", "factor_spatial", "tcn_layers", "spatial", "activation"}


def _check_kw(name: str, kw: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(kw) - allowed)
    if unknown:
        raise TypeError(f"encoder {name!r} got unexpected option(s) {unknown}; accepted: {sorted(allowed)}")


def _build_unireplknet(d_model: int, seq_len: int, variant: str, kernel_size: int | None, with_cp: bool,
                       **kw: Any) -> nn.Module:
    from .unireplknet import create_model

    _check_kw("unireplknet", kw, _UNIREPLKNET_KW | _IMAGE_KW)
    image_kw = {k: kw.pop(k) for k in list(kw) if k in _IMAGE_KW}
    if kernel_size is not None and "kernel_sizes" not in kw:
        kw["kernel_sizes"] = variant_kernel_sizes(variant, kernel_size)
    backbone = create_model(variant, in_chans=1, out_indices=(3,), with_cp=with_cp, **kw)
    return ImageEncoder(backbone, d_model, seq_len, **image_kw)


def _build_convnext(d_model: int, seq_len: int, variant: str, kernel_size: int | None, with_cp: bool,
                    **kw: Any) -> nn.Module:
    _check_kw("convnext", kw, _CONVNEXT_KW | _IMAGE_KW)
    image_kw = {k: kw.pop(k) for k in list(kw) if k in _IMAGE_KW}
    depths, dims = _variant_arch(variant)
    kw.setdefault("depths", depths)
    kw.setdefault("dims", dims)
    backbone = ConvNeXtLike(1, kernel_size=kernel_size or 7, with_cp=with_cp, **kw)
    return ImageEncoder(backbone, d_model, seq_len, **image_kw)


def _build_resnet(d_model: int, seq_len: int, variant: str, kernel_size: int | None, with_cp: bool,
                  **kw: Any) -> nn.Module:
    _check_kw("resnet", kw, _RESNET_KW | _IMAGE_KW)
    image_kw = {k: kw.pop(k) for k in list(kw) if k in _IMAGE_KW}
    depths, dims = _variant_arch(variant)
    kw.setdefault("depths", resnet_depths(depths))
    kw.setdefault("dims", dims)
    backbone = ResNetLike(1, kernel_size=kernel_size or 3, with_cp=with_cp, **kw)
    return ImageEncoder(backbone, d_model, seq_len, **image_kw)


_BUILDERS: dict[str, Callable[..., nn.Module]] = {
    "unireplknet": _build_unireplknet,
    "convnext": _build_convnext,
    "resnet": _build_resnet,
}


def list_encoders() -> list[str]:
    """Names accepted by :func:`build_encoder` / ``ForecastNet(encoder=...)``."""
    return [*_BUILDERS, "corrformer"]


def build_encoder(name: str, *, d_model: int, seq_len: int, n_nodes: int, variant: str = "unireplknet_a",
                  kernel_size: int | None = None, n_heads: int = 8, d_ff: int | None = None, moving_avg: int = 25,
                  dropout: float = 0.05, with_cp: bool = False, **kw: Any) -> nn.Module:
    """Build encoder ``name`` mapping ``(B·n, seq_len, d_model)`` to tokens ``(B·n, T, d_model)``.

    The module has ``token_kind`` (``"spatial"`` image tokens or ``"temporal"`` time-step tokens) and
    ``out_tokens`` (T). Extra options are validated per encoder (a TypeError lists the accepted ones).
    """
    key = str(name).strip().lower()
    if key == "corrformer":
        _check_kw("corrformer", kw, _CORRFORMER_KW)
        enc = CorrformerEncoder(d_model, seq_len, n_nodes, n_heads=n_heads, d_ff=d_ff, moving_avg=moving_avg,
                                dropout=dropout, with_cp=with_cp, **kw)
        return enc
    if key not in _BUILDERS:
        raise ValueError(f"unknown encoder {name!r}; available: {', '.join(list_encoders())}")
    return _BUILDERS[key](d_model, seq_len, variant, kernel_size, with_cp, **kw)
