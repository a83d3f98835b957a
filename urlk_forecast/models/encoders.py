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
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import DWConv2d
from ..utils import normalize_name
from .corrformer import CorrformerEncoder
from .layers import (
    DropPath,
    LayerNorm2d,
    checkpoint_once,
    fold_bn,
    init_trunc_normal,
    reparameterize_children,
    run_dwconv,
)
from .linear_function import run_linear
from .registry import variant_config
from .unireplknet import create_model, default_kernel_sizes

__all__ = [
    "ENCODER_STRIDE",
    "eq2_image_shape",
    "ImageEncoder",
    "ConvNeXtLike",
    "ResNetLike",
    "build_encoder",
    "list_encoders",
    "encoder_options",
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
    k = int(kernel_size)
    if k < 3 or k % 2 == 0:
        raise ValueError(f"kernel_size must be an odd integer >= 3, got {kernel_size}")
    depths = variant_config(variant)["depths"]
    return [[k if ks >= 5 else ks for ks in stage] for stage in default_kernel_sizes(depths)]


def _variant_arch(variant: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    cfg = variant_config(variant)
    return tuple(cfg["depths"]), tuple(cfg["dims"])


def resnet_depths(variant_depths: Sequence[int]) -> tuple[int, int, int, int]:
    """ResNet-18 layout for shallow variants (stage-3 depth <= 8), ResNet-34 layout for deeper ones."""
    return (2, 2, 2, 2) if variant_depths[2] <= 8 else (3, 4, 6, 3)


# ---------------------------------------------------------------------------------------------- helpers
def _maybe_checkpoint(module: nn.Module, x: torch.Tensor, enabled: bool) -> torch.Tensor:
    """Run ``module(x)``, checkpointed when enabled in training; BN stats are updated once only."""
    if not (enabled and module.training and torch.is_grad_enabled()):
        return module(x)
    return checkpoint_once(module, module, x)


class _StagedBackbone(nn.Module):
    """What the comparison backbones share: 4 stages of blocks (depths/dims checked), ``in_chans``,
    ``num_features`` and optional gradient checkpointing of every block (``with_cp``)."""

    def __init__(self, in_chans: int, depths: Sequence[int], dims: Sequence[int], with_cp: bool) -> None:
        super().__init__()
        if len(depths) != 4 or len(dims) != 4:
            raise ValueError(f"depths and dims need 4 entries, got {depths}, {dims}")
        self.in_chans = in_chans
        self.num_features = int(dims[-1])
        self.with_cp = with_cp

    def _run_stage(self, stage: nn.Module, x: torch.Tensor) -> torch.Tensor:
        for block in stage:
            x = _maybe_checkpoint(block, x, self.with_cp)
        return x


# ------------------------------------------------------------------------------------------- ConvNeXt
class _ConvNeXtBlock(nn.Module):
    def __init__(self, dim: int, kernel_size: int, drop_path: float, layer_scale_init_value: float) -> None:
        super().__init__()
        self.dwconv = DWConv2d(dim, kernel_size, bias=True)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), layer_scale_init_value)) if layer_scale_init_value > 0 else None
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = run_dwconv(self.dwconv, x).permute(0, 2, 3, 1)
        y = self.pwconv2(F.gelu(self.pwconv1(self.norm(y))))
        if self.gamma is not None:
            y = y * self.gamma
        return x + self.drop_path(y.permute(0, 3, 1, 2))


class ConvNeXtLike(_StagedBackbone):
    """ConvNeXt-style 4-stage network (patchify stem 4×4/4, 2×2/2 downsampling) exposing ``forward_features``."""

    def __init__(self, in_chans: int = 1, depths: Sequence[int] = (2, 2, 6, 2),
                 dims: Sequence[int] = (40, 80, 160, 320), kernel_size: int = 7, drop_path_rate: float = 0.0,
                 layer_scale_init_value: float = 1e-6,
                 with_cp: bool = False) -> None:
        super().__init__(in_chans, depths, dims, with_cp)
        self.downsample_layers = nn.ModuleList(
            [nn.Sequential(nn.Conv2d(in_chans, dims[0], 4, stride=4), LayerNorm2d(dims[0]))]
            + [nn.Sequential(LayerNorm2d(dims[i]), nn.Conv2d(dims[i], dims[i + 1], 2, stride=2)) for i in range(3)]
        )
        rates = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        cur = 0
        self.stages = nn.ModuleList()
        for i in range(4):
            self.stages.append(nn.Sequential(*[
                _ConvNeXtBlock(dims[i], kernel_size, rates[cur + j], layer_scale_init_value) for j in range(depths[i])
            ]))
            cur += depths[i]
        self.norm3 = LayerNorm2d(dims[-1])
        self.apply(init_trunc_normal)

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        for down, stage in zip(self.downsample_layers, self.stages):
            x = self._run_stage(stage, down(x))
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

    def reparameterize(self) -> None:
        """Fold each BatchNorm into the conv before it (inference form, identical outputs in eval mode)."""
        if isinstance(self.bn1, nn.BatchNorm2d):
            fold_bn(self.conv1, self.bn1)
            self.bn1 = nn.Identity()
        if isinstance(self.bn2, nn.BatchNorm2d):
            fold_bn(self.conv2, self.bn2)
            self.bn2 = nn.Identity()
        if isinstance(self.shortcut, nn.Sequential):
            fold_bn(self.shortcut[0], self.shortcut[1])
            self.shortcut = self.shortcut[0]


class ResNetLike(_StagedBackbone):
    """ResNet-style network of basic blocks (K×K convs, default 3), total stride 32, ``forward_features``."""

    def __init__(self, in_chans: int = 1, depths: Sequence[int] = (2, 2, 2, 2),
                 dims: Sequence[int] = (40, 80, 160, 320), kernel_size: int = 3, with_cp: bool = False) -> None:
        super().__init__(in_chans, depths, dims, with_cp)
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
            x = self._run_stage(stage, x)
        return [x]

    def reparameterize(self) -> None:
        """Fold every BatchNorm into the preceding conv (inference form, identical outputs in eval mode)."""
        reparameterize_children(self)
        if isinstance(self.stem[1], nn.BatchNorm2d):
            fold_bn(self.stem[0], self.stem[1])
            self.stem[1] = nn.Identity()


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
        return run_linear(self.projection, feat.flatten(2).transpose(1, 2))

    def reparameterize(self) -> None:
        """Inference form of the backbone, whatever it is (identical outputs in eval mode)."""
        reparameterize_children(self)


# ------------------------------------------------------------------------------------------ registry
_IMAGE_KW = {"image_shape", "allow_pad"}
_UNIREPLKNET_KW = {"depths", "dims", "kernel_sizes", "drop_path_rate", "layer_scale_init_value", "deploy"}
_CONVNEXT_KW = {"depths", "dims", "drop_path_rate", "layer_scale_init_value"}
_RESNET_KW = {"depths", "dims"}
_CORRFORMER_KW = {"e_layers", "node_list", "factor_temporal", "factor_spatial", "tcn_layers", "spatial", "activation"}


@dataclass(frozen=True)
class _Common:
    """The arguments of :func:`build_encoder` every encoder receives (each builder reads those it needs)."""

    d_model: int
    seq_len: int
    n_nodes: int
    variant: str
    kernel_size: int | None
    n_heads: int
    d_ff: int | None
    moving_avg: int
    dropout: float
    with_cp: bool


def _check_kw(name: str, kw: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(kw) - allowed)
    if unknown:
        raise TypeError(f"encoder {name!r} got unexpected option(s) {unknown}; accepted: {sorted(allowed)}")


def _image_encoder(name: str, c: _Common, kw: dict[str, Any], allowed: set[str],
                   backbone: Callable[[dict[str, Any]], nn.Module]) -> ImageEncoder:
    """Check ``kw`` for encoder ``name``, build ``backbone(backbone_kw)`` and wrap it in an :class:`ImageEncoder`."""
    _check_kw(name, kw, allowed | _IMAGE_KW)
    image_kw = {k: kw.pop(k) for k in list(kw) if k in _IMAGE_KW}
    return ImageEncoder(backbone(kw), c.d_model, c.seq_len, **image_kw)


def _build_unireplknet(c: _Common, kw: dict[str, Any]) -> nn.Module:
    def backbone(kw: dict[str, Any]) -> nn.Module:
        if c.kernel_size is not None and "kernel_sizes" not in kw:
            kw["kernel_sizes"] = variant_kernel_sizes(c.variant, c.kernel_size)
        return create_model(c.variant, in_chans=1, out_indices=(3,), with_cp=c.with_cp, **kw)

    return _image_encoder("unireplknet", c, kw, _UNIREPLKNET_KW, backbone)


def _build_convnext(c: _Common, kw: dict[str, Any]) -> nn.Module:
    def backbone(kw: dict[str, Any]) -> nn.Module:
        depths, dims = _variant_arch(c.variant)
        kw = {"depths": depths, "dims": dims, **kw}
        return ConvNeXtLike(1, kernel_size=c.kernel_size or 7, with_cp=c.with_cp, **kw)

    return _image_encoder("convnext", c, kw, _CONVNEXT_KW, backbone)


def _build_resnet(c: _Common, kw: dict[str, Any]) -> nn.Module:
    def backbone(kw: dict[str, Any]) -> nn.Module:
        depths, dims = _variant_arch(c.variant)
        kw = {"depths": resnet_depths(depths), "dims": dims, **kw}
        return ResNetLike(1, kernel_size=c.kernel_size or 3, with_cp=c.with_cp, **kw)

    return _image_encoder("resnet", c, kw, _RESNET_KW, backbone)


def _build_corrformer(c: _Common, kw: dict[str, Any]) -> nn.Module:
    _check_kw("corrformer", kw, _CORRFORMER_KW)
    return CorrformerEncoder(c.d_model, c.seq_len, c.n_nodes, n_heads=c.n_heads, d_ff=c.d_ff,
                             moving_avg=c.moving_avg, dropout=c.dropout, with_cp=c.with_cp, **kw)


#: one builder per name of :data:`urlk_forecast.models.registry.ENCODERS`, in that order (a test checks it)
_BUILDERS: dict[str, Callable[[_Common, dict[str, Any]], nn.Module]] = {
    "unireplknet": _build_unireplknet,
    "convnext": _build_convnext,
    "resnet": _build_resnet,
    "corrformer": _build_corrformer,
}


def list_encoders() -> list[str]:
    """Names accepted by :func:`build_encoder` / ``ForecastNet(encoder=...)``."""
    return list(_BUILDERS)


def encoder_options(name: str) -> frozenset[str]:
    """The extra options (``**kw`` of :func:`build_encoder`) encoder ``name`` accepts."""
    options = {"unireplknet": _UNIREPLKNET_KW | _IMAGE_KW, "convnext": _CONVNEXT_KW | _IMAGE_KW,
               "resnet": _RESNET_KW | _IMAGE_KW, "corrformer": _CORRFORMER_KW}
    key = normalize_name(name)
    if key not in options:
        raise ValueError(f"unknown encoder {name!r}; available: {', '.join(list_encoders())}")
    return frozenset(options[key])


def build_encoder(name: str, *, d_model: int, seq_len: int, n_nodes: int, variant: str = "unireplknet_a",
                  kernel_size: int | None = None, n_heads: int = 8, d_ff: int | None = None, moving_avg: int = 25,
                  dropout: float = 0.05, with_cp: bool = False, **kw: Any) -> nn.Module:
    """Build encoder ``name`` mapping ``(B·n, seq_len, d_model)`` to tokens ``(B·n, T, d_model)``.

    The module has ``token_kind`` (``"spatial"`` image tokens or ``"temporal"`` time-step tokens) and
    ``out_tokens`` (T). Extra options are validated per encoder (a TypeError lists the accepted ones).
    """
    key = normalize_name(name)
    if key not in _BUILDERS:
        raise ValueError(f"unknown encoder {name!r}; available: {', '.join(list_encoders())}")
    common = _Common(d_model, seq_len, n_nodes, variant, kernel_size, n_heads, d_ff, moving_avg, dropout, with_cp)
    return _BUILDERS[key](common, dict(kw))
