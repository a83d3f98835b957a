"""UniRepLKNet backbone (Zhang, Ding, Yue, arXiv 2410.08049, Fig. 3 and §3.2).

Module tree, parameter and buffer names follow the released implementation exactly, so released ``.pth`` files
load with ``strict=True`` in training form and in deploy (re-parameterized) form. The depthwise convolutions are
:class:`urlk_forecast.ops.DWConv2d` (own kernels). Beyond the released code: every odd kernel size >= 5 in the
Dilated Reparam Block (tables in :mod:`urlk_forecast.ops.reparam`), kernel sizes overridable per stage or per
block, input validation, a fused eval path of the Dilated Reparam Block, and gradient checkpointing that does not
update BatchNorm running statistics twice.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from urlk_forecast.models import fastpath
from urlk_forecast.models.checkpoint import load_pretrained
from urlk_forecast.models.dense_dwconv import (
    DENSE_MAX_PIXELS,
    FOLD_MIN_IMAGES,
    dense_branches_bn,
    dense_depthwise,
    foldable_bn,
)
from urlk_forecast.models.grn_function import grn_nhwc
from urlk_forecast.models.layers import (
    DropPath,
    LayerNorm,
    batch_norm_2d,
    checkpoint_once,
    fold_bn,
    init_trunc_normal,
    reparameterize_model,
    run_dwconv,
    set_weight_and_bias,
)
from urlk_forecast.models.linear_function import run_linear
from urlk_forecast.models.registry import VARIANTS, list_models, variant_config
from urlk_forecast.ops import DWConv2d, dwconv2d, get_backend
from urlk_forecast.ops.reparam import branch_table, fold_ffn_tail, fuse_bn, merge_dilated_branches

__all__ = [
    "UniRepLKNet",
    "UniRepLKNetBlock",
    "DilatedReparamBlock",
    "GRNwithNHWC",
    "SEBlock",
    "LayerNorm",
    "DropPath",
    "VARIANTS",
    "create_model",
    "list_models",
    "reparameterize_model",
    "default_kernel_sizes",
]

MIN_INPUT_SIZE = 32

#: ``kernel_sizes`` of :class:`UniRepLKNet`: one size everywhere, or one entry per stage (an int for the whole stage
#: or one int per block).
KernelSizes = int | Sequence[int | Sequence[int]]


# --------------------------------------------------------------------------------------------------- layers
class GRNwithNHWC(nn.Module):
    """Global Response Normalization on NHWC input: ``(gamma * Nx + 1) * x + beta``.

    ``Gx = ||x||_2`` over (H, W), ``Nx = Gx / (mean_c Gx + 1e-6)``. The norm is computed in float32 for half
    precision input so large maps cannot overflow it. ``use_bias=False`` is the deploy form (beta folded away).
    """

    def __init__(self, dim: int, use_bias: bool = True) -> None:
        super().__init__()
        self.use_bias = use_bias
        self.gamma = nn.Parameter(torch.zeros(1, 1, 1, dim))
        if use_bias:
            self.beta = nn.Parameter(torch.zeros(1, 1, 1, dim))
        else:
            self.register_parameter("beta", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and fastpath.enabled():
            return grn_nhwc(x, self.gamma, self.beta)  # same forward, two-pass closed-form backward
        xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        # sum of squares + sqrt is ~6x faster than linalg.vector_norm over (H, W) on CPU; the clamp keeps the
        # gradient finite (zero) for an all-zero channel, where d sqrt(s)/ds is infinite
        gx = xf.square().sum(dim=(1, 2), keepdim=True).clamp_min(torch.finfo(xf.dtype).tiny).sqrt()
        nx = (gx / (gx.mean(dim=-1, keepdim=True) + 1e-6)).to(x.dtype)
        scale = torch.addcmul(torch.ones((), dtype=x.dtype, device=x.device), self.gamma, nx)  # gamma * Nx + 1
        if self.beta is None:
            return x * scale
        return torch.addcmul(self.beta, x, scale)  # one pass over x: beta + x * (gamma * Nx + 1)

    def extra_repr(self) -> str:
        return f"{self.gamma.shape[-1]}, use_bias={self.use_bias}"


class NCHWtoNHWC(nn.Module):
    """Permute (N, C, H, W) -> (N, H, W, C): a view on the old path, a contiguous copy on the fast path.

    The copy is for the ``Linear`` that follows: on a permuted view whose strides do not fold into one matrix,
    ``matmul`` runs a batched product of (H or W) x C slices (``bmm`` of 6 x 160 by 160 x 640 matrices at 4x6 maps,
    3.8x slower than one ``addmm`` on the 2-core CPU); on a contiguous input it is one matrix product.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.permute(0, 2, 3, 1)
        return y.contiguous() if fastpath.enabled() else y


class NHWCtoNCHW(nn.Module):
    """Permute (N, H, W, C) -> (N, C, H, W) (a view)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.permute(0, 3, 1, 2)


class SEBlock(nn.Module):
    """Squeeze-and-Excitation: avg-pool, 1x1 conv C->C/4 + ReLU, 1x1 conv C/4->C + sigmoid, rescale."""

    def __init__(self, input_channels: int, internal_neurons: int) -> None:
        super().__init__()
        self.down = nn.Conv2d(input_channels, internal_neurons, kernel_size=1, bias=True)
        self.up = nn.Conv2d(internal_neurons, input_channels, kernel_size=1, bias=True)
        self.input_channels = input_channels

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if fastpath.enabled():  # the 1x1 convs on the pooled (B, C, 1, 1) as matrix products: ~20x less fixed cost
            s = F.relu(F.linear(inputs.mean(dim=(2, 3)), self.down.weight.flatten(1), self.down.bias))
            s = torch.sigmoid(F.linear(s, self.up.weight.flatten(1), self.up.bias))
            return inputs * s[:, :, None, None]
        s = inputs.mean(dim=(2, 3), keepdim=True)
        s = torch.sigmoid(self.up(F.relu(self.down(s))))
        return inputs * s


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels)


# ------------------------------------------------------------------------------------ Dilated Reparam Block
class DilatedReparamBlock(nn.Module):
    """K x K depthwise conv + BN in parallel with dilated depthwise convs + BN, outputs summed (§3.2.2).

    Names follow the released code: ``lk_origin``/``origin_bn`` and ``dil_conv_k{k}_{r}``/``dil_bn_k{k}_{r}``.
    In eval mode the branches are merged on the fly into one K x K kernel (same math as
    :meth:`merge_dilated_branches`, differentiable), so even an un-reparameterized model runs one conv per block.
    """

    #: merge the branches on the fly in eval mode (set False to run them one by one, e.g. as a test reference)
    fuse_in_eval: bool = True

    def __init__(self, channels: int, kernel_size: int, deploy: bool = False) -> None:
        super().__init__()
        self.channels = channels
        self.kernel_size = kernel_size
        self.kernel_sizes, self.dilates = branch_table(kernel_size)
        self.lk_origin = DWConv2d(channels, kernel_size, bias=deploy)
        if not deploy:
            self.origin_bn = _bn(channels)
            for k, r in zip(self.kernel_sizes, self.dilates):
                setattr(self, f"dil_conv_k{k}_{r}", DWConv2d(channels, k, dilation=r, bias=False))
                setattr(self, f"dil_bn_k{k}_{r}", _bn(channels))

    @property
    def merged(self) -> bool:
        """True once the branches are merged (deploy form)."""
        return not hasattr(self, "origin_bn")

    def _branches(self) -> Iterator[tuple[DWConv2d, nn.BatchNorm2d, int]]:
        for k, r in zip(self.kernel_sizes, self.dilates):
            yield getattr(self, f"dil_conv_k{k}_{r}"), getattr(self, f"dil_bn_k{k}_{r}"), r

    def _fused_kernel(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Differentiable merged kernel/bias using BN running stats (eval-mode equivalent)."""
        w, b = fuse_bn(self.lk_origin.weight, self.origin_bn, differentiable=True)
        branches = [(*fuse_bn(conv.weight, bn, differentiable=True), r) for conv, bn, r in self._branches()]
        return merge_dilated_branches(w, b, branches, differentiable=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return run_dwconv(self.lk_origin, x)
        if self.fuse_in_eval and not self.training:
            w, b = self._fused_kernel()
            return dwconv2d(x, w.to(x.dtype), b.to(x.dtype))
        if self.folds(x):
            return self.dense_bn(x)
        if self._dense(x):
            ys = dense_depthwise(x, *self._conv_args())
            out = self.origin_bn(ys[0])
            for (_, bn, _), y in zip(self._branches(), ys[1:]):
                out = out + bn(y)
            return out
        out = self.origin_bn(run_dwconv(self.lk_origin, x))
        for conv, bn, _ in self._branches():
            out = out + bn(run_dwconv(conv, x))
        return out

    def _dense(self, x: torch.Tensor) -> bool:
        """Whether the branches run as one dense product (:mod:`urlk_forecast.models.dense_dwconv`): the fast path,
        a CPU tensor of a map of at most ``DENSE_MAX_PIXELS`` pixels, symmetric zero padding, the op's ``auto``
        backend."""
        return (x.device.type == "cpu" and x.dim() == 4 and x.shape[-2] * x.shape[-1] <= DENSE_MAX_PIXELS
                and fastpath.enabled() and get_backend() == "auto"
                and all(isinstance(c.padding, tuple) and c.padding_mode == "zeros"
                        for c in (self.lk_origin, *(b[0] for b in self._branches()))))

    def folds(self, x: torch.Tensor, outer: nn.Module | None = None) -> bool:
        """Whether :meth:`dense_bn` computes this block (followed by ``outer``) on ``x``: the dense condition, and
        every BatchNorm (``outer``'s too, if given) a training one that :func:`dense_branches_bn` can fold."""
        return (x.shape[0] >= FOLD_MIN_IMAGES and not self.merged and self._dense(x)
                and all(foldable_bn(bn) for bn in (self.origin_bn, *(b for _, b, _ in self._branches()), outer)
                        if bn is not None))

    def dense_bn(self, x: torch.Tensor, outer: nn.BatchNorm2d | None = None) -> torch.Tensor:
        """Training forward (then ``outer``) as one dense map per channel with the BatchNorms folded in
        (:func:`~urlk_forecast.models.dense_dwconv.dense_branches_bn`); check :meth:`folds` first."""
        bns = [self.origin_bn, *(bn for _, bn, _ in self._branches())]
        return dense_branches_bn(x, *self._conv_args(), bns, outer)

    def _conv_args(self) -> tuple[list[torch.Tensor], list[Any], list[Any]]:
        """Weights, dilations and paddings of ``lk_origin`` and the dilated branches, in that order."""
        convs = [self.lk_origin, *(conv for conv, _, _ in self._branches())]
        return [c.weight for c in convs], [c.dilation for c in convs], [c.padding for c in convs]

    @torch.no_grad()
    def merge_dilated_branches(self) -> None:
        """Fold every BN into its conv, densify the dilated kernels (Eq. 1) and merge all into ``lk_origin``."""
        if self.merged:
            return
        w, b = fuse_bn(self.lk_origin.weight, self.origin_bn)
        branches = [(*fuse_bn(conv.weight, bn), r) for conv, bn, r in self._branches()]
        set_weight_and_bias(self.lk_origin, *merge_dilated_branches(w, b, branches))
        del self.origin_bn
        for k, r in zip(self.kernel_sizes, self.dilates):
            delattr(self, f"dil_conv_k{k}_{r}")
            delattr(self, f"dil_bn_k{k}_{r}")

    def reparameterize(self) -> None:
        """Inference form (see :func:`~urlk_forecast.models.layers.reparameterize_model`): merge the branches."""
        self.merge_dilated_branches()

    def extra_repr(self) -> str:
        if self.merged:
            return f"kernel_size={self.kernel_size}, merged"
        return f"kernel_size={self.kernel_size}, branches k={self.kernel_sizes} r={self.dilates}"


def _check_kernel_size(k: Any, where: str) -> int:
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"kernel size at {where} must be an int, got {k!r}")
    if k != 0 and (k < 3 or k % 2 == 0):
        raise ValueError(f"kernel size at {where} must be 0 (identity) or an odd int >= 3, got {k}")
    return k


# ------------------------------------------------------------------------------------------------- block
class UniRepLKNetBlock(nn.Module):
    """UniRepLKNet block: ``x + drop_path(gamma * FFN(SE(BN(DWConv(x)))))`` (paper Fig. 3).

    Depthwise part: Dilated Reparam Block for K >= 7, plain K x K depthwise conv for K = 3 or 5, identity for
    K = 0. FFN: Linear C->4C, GELU, GRN, Linear 4C->C (no bias), BN. ``deploy=True`` builds the
    re-parameterized form (what :meth:`reparameterize` turns a trained block into).
    """

    def __init__(
        self,
        dim: int,
        kernel_size: int,
        drop_path: float = 0.0,
        layer_scale_init_value: float | None = 1e-6,
        deploy: bool = False,
        with_cp: bool = False,
        ffn_factor: int = 4,
    ) -> None:
        super().__init__()
        _check_kernel_size(kernel_size, "block")
        self.dim = dim
        self.kernel_size = kernel_size
        self.with_cp = with_cp
        if kernel_size == 0:
            self.dwconv: nn.Module = nn.Identity()
        elif kernel_size >= 7:
            self.dwconv = DilatedReparamBlock(dim, kernel_size, deploy=deploy)
        else:
            self.dwconv = DWConv2d(dim, kernel_size, bias=deploy)
        self.norm: nn.Module = nn.Identity() if deploy or kernel_size == 0 else _bn(dim)
        self.se = SEBlock(dim, dim // 4)
        ffn_dim = int(ffn_factor * dim)
        self.pwconv1 = nn.Sequential(NCHWtoNHWC(), nn.Linear(dim, ffn_dim))
        self.act = nn.Sequential(nn.GELU(), GRNwithNHWC(ffn_dim, use_bias=not deploy))
        if deploy:
            self.pwconv2 = nn.Sequential(nn.Linear(ffn_dim, dim), NHWCtoNCHW())
        else:
            self.pwconv2 = nn.Sequential(nn.Linear(ffn_dim, dim, bias=False), NHWCtoNCHW(), _bn(dim))
        if not deploy and layer_scale_init_value is not None and layer_scale_init_value > 0:
            self.gamma = nn.Parameter(layer_scale_init_value * torch.ones(dim))
        else:
            self.register_parameter("gamma", None)
        self.drop_path: nn.Module = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def _f(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.dwconv, DilatedReparamBlock) and self.dwconv.folds(x, self.norm):
            y = self.dwconv.dense_bn(x, self.norm)  # tiny maps in training: branches and both BN levels folded
        else:
            y = batch_norm_2d(self.norm, run_dwconv(self.dwconv, x))
        # the Linears through run_linear: oneDNN's product on the fast path, the modules themselves on the old one
        z = self.act(run_linear(self.pwconv1[1], self.pwconv1[0](self.se(y))))
        z = self.pwconv2[1](run_linear(self.pwconv2[0], z))
        if len(self.pwconv2) == 3:  # training form: Linear, to NCHW, BatchNorm
            return batch_norm_2d(self.pwconv2[2], z)
        return z

    def compute_residual(self, x: torch.Tensor) -> torch.Tensor:
        """The residual branch ``drop_path(gamma * f(x))``."""
        y = self._f(x)
        if self.gamma is not None:
            y = y * self.gamma.view(1, -1, 1, 1)
        return self.drop_path(y)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.with_cp and x.requires_grad and torch.is_grad_enabled():
            return x + checkpoint_once(self, self.compute_residual, x)
        if self.gamma is not None and (not self.training or isinstance(self.drop_path, nn.Identity)):
            return torch.addcmul(x, self._f(x), self.gamma.view(1, -1, 1, 1))  # x + gamma * f(x), one pass
        return x + self.compute_residual(x)

    @torch.no_grad()
    def reparameterize(self) -> None:
        """In place: merge the DRB, fold the block BN into the DW conv and GRN beta, FFN BN, gamma into pwconv2."""
        if isinstance(self.dwconv, DilatedReparamBlock):
            self.dwconv.merge_dilated_branches()
        if isinstance(self.norm, nn.BatchNorm2d):
            fold_bn(self.dwconv.lk_origin if isinstance(self.dwconv, DilatedReparamBlock) else self.dwconv, self.norm)
            self.norm = nn.Identity()
        if len(self.pwconv2) == 3:
            linear, bn, grn = self.pwconv2[0], self.pwconv2[2], self.act[1]
            set_weight_and_bias(linear, *fold_ffn_tail(linear.weight, linear.bias, grn.beta, bn, self.gamma))
            self.pwconv2 = nn.Sequential(linear, self.pwconv2[1])
            grn.beta = None
            grn.use_bias = False
            self.gamma = None

    def extra_repr(self) -> str:
        return f"dim={self.dim}, kernel_size={self.kernel_size}"


# ------------------------------------------------------------------------------------------------ network
def default_kernel_sizes(depths: Sequence[int]) -> tuple[tuple[int, ...], ...]:
    """Released per-block kernel sizes for the given stage depths (paper Table 4).

    Stage 1 all 3; stages 2 and 4 all 13; stage 3 all 13, except ``(13, 3)`` x 9 for 18 blocks (T) and
    ``(13, 3, 3)`` x 9 for 27 blocks (S and larger). Other depths get 13 everywhere outside stage 1.
    """
    d0, d1, d2, d3 = depths
    if d2 == 18:
        third: tuple[int, ...] = (13, 3) * 9
    elif d2 == 27:
        third = (13, 3, 3) * 9
    else:
        third = (13,) * d2
    return (3,) * d0, (13,) * d1, third, (13,) * d3


def _resolve_kernel_sizes(kernel_sizes: KernelSizes | None, depths: Sequence[int]) -> tuple[tuple[int, ...], ...]:
    if kernel_sizes is None:
        return default_kernel_sizes(depths)
    if isinstance(kernel_sizes, int) and not isinstance(kernel_sizes, bool):
        k = _check_kernel_size(kernel_sizes, "kernel_sizes")
        return tuple((k,) * d for d in depths)
    if not isinstance(kernel_sizes, Sequence) or len(kernel_sizes) != len(depths):
        raise ValueError(
            f"kernel_sizes must be an int, or a sequence of {len(depths)} entries (one per stage, each an int or a "
            f"per-block sequence), got {kernel_sizes!r}"
        )
    out = []
    for i, (ks, d) in enumerate(zip(kernel_sizes, depths)):
        if isinstance(ks, int) and not isinstance(ks, bool):
            out.append((_check_kernel_size(ks, f"stage {i}"),) * d)
            continue
        ks = tuple(ks)
        if len(ks) != d:
            raise ValueError(f"kernel_sizes[{i}] has {len(ks)} entries but stage {i} has depth {d}")
        out.append(tuple(_check_kernel_size(k, f"stage {i} block {j}") for j, k in enumerate(ks)))
    return tuple(out)


def _stem(in_chans: int, dim: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_chans, dim // 2, kernel_size=3, stride=2, padding=1),
        LayerNorm(dim // 2, eps=1e-6, data_format="channels_first"),
        nn.GELU(),
        nn.Conv2d(dim // 2, dim, kernel_size=3, stride=2, padding=1),
        LayerNorm(dim, eps=1e-6, data_format="channels_first"),
    )


def _downsample(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel_size=3, stride=2, padding=1),
        LayerNorm(cout, eps=1e-6, data_format="channels_first"),
    )


class UniRepLKNet(nn.Module):
    """UniRepLKNet: a 4-stage large-kernel ConvNet (stem stride 4, then stride-2 downsampling, C-2C-4C-8C).

    Classification mode (``out_indices=None``): ``forward`` returns logits (global average pool -> LayerNorm
    ``norm`` -> Linear ``head``; ``num_classes=0`` gives the pooled features). Features mode (``out_indices``
    given, e.g. ``(0, 1, 2, 3)`` or ``(3,)``): no head; ``forward``/``forward_features`` return the selected stage
    outputs, each through its channels-first LayerNorm ``norm{i}`` (released naming), and stages after the last
    selected one are skipped.
    """

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 1000,
        depths: Sequence[int] = (3, 3, 27, 3),
        dims: Sequence[int] = (96, 192, 384, 768),
        kernel_sizes: KernelSizes | None = None,
        drop_path_rate: float = 0.0,
        layer_scale_init_value: float | None = 1e-6,
        head_init_scale: float = 1.0,
        deploy: bool = False,
        with_cp: bool = False,
        out_indices: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        depths, dims = tuple(int(d) for d in depths), tuple(int(d) for d in dims)
        if len(depths) != 4 or len(dims) != 4:
            raise ValueError(f"depths and dims need 4 entries (one per stage), got depths={depths}, dims={dims}")
        if min(depths) < 1 or min(dims) < 2:
            raise ValueError(f"every stage needs depth >= 1 and width >= 2, got depths={depths}, dims={dims}")
        if in_chans < 1:
            raise ValueError(f"in_chans must be >= 1, got {in_chans}")
        if num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {num_classes}")
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {drop_path_rate}")
        if out_indices is not None:
            out_indices = tuple(int(i) for i in out_indices)
            if not out_indices or len(set(out_indices)) != len(out_indices) or not set(out_indices) <= {0, 1, 2, 3}:
                raise ValueError(f"out_indices must be distinct stage indices from 0..3, got {out_indices}")
            out_indices = tuple(sorted(out_indices))
        #: constructor arguments (JSON-friendly), e.g. to rebuild the training form of a deploy model
        kernel_sizes = _resolve_kernel_sizes(kernel_sizes, depths)
        self.config: dict[str, Any] = {
            "in_chans": in_chans, "num_classes": num_classes, "depths": depths, "dims": dims,
            "kernel_sizes": kernel_sizes, "drop_path_rate": drop_path_rate,
            "layer_scale_init_value": layer_scale_init_value, "head_init_scale": head_init_scale, "deploy": deploy,
            "with_cp": with_cp, "out_indices": out_indices,
        }
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.depths, self.dims = depths, dims
        self.kernel_sizes = kernel_sizes
        self.out_indices = out_indices
        self.deploy = deploy
        self.num_features = dims[-1]
        self.feature_dims = tuple(dims[i] for i in out_indices) if out_indices else dims
        self.feature_strides = tuple((4, 8, 16, 32)[i] for i in out_indices) if out_indices else (4, 8, 16, 32)

        self.downsample_layers = nn.ModuleList([_stem(in_chans, dims[0])])
        self.downsample_layers.extend(_downsample(dims[i], dims[i + 1]) for i in range(3))
        rates = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        self.stages = nn.ModuleList()
        cur = 0
        for i in range(4):
            self.stages.append(
                nn.Sequential(
                    *[
                        UniRepLKNetBlock(dims[i], self.kernel_sizes[i][j], drop_path=rates[cur + j],
                                         layer_scale_init_value=layer_scale_init_value, deploy=deploy,
                                         with_cp=with_cp)
                        for j in range(depths[i])
                    ]
                )
            )
            cur += depths[i]
        if out_indices is None:
            self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
            self.head: nn.Module = nn.Linear(dims[-1], num_classes) if num_classes > 0 else nn.Identity()
        else:
            for i in out_indices:
                self.add_module(f"norm{i}", LayerNorm(dims[i], eps=1e-6, data_format="channels_first"))
        self.apply(init_trunc_normal)
        if isinstance(self.head if out_indices is None else None, nn.Linear):
            with torch.no_grad():
                self.head.weight.mul_(head_init_scale)
                self.head.bias.mul_(head_init_scale)

    @property
    def with_cp(self) -> bool:
        """Gradient checkpointing of every block (settable)."""
        return all(b.with_cp for b in self.blocks())

    @with_cp.setter
    def with_cp(self, value: bool) -> None:
        for b in self.blocks():
            b.with_cp = bool(value)

    def blocks(self) -> Iterator[UniRepLKNetBlock]:
        """All UniRepLKNet blocks, stage by stage."""
        for stage in self.stages:
            yield from stage  # type: ignore[misc]

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ValueError unless ``x`` is (N, in_chans, H, W) with H, W >= 32."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"UniRepLKNet expects a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 4:
            raise ValueError(
                f"UniRepLKNet expects a 4-D input (batch, {self.in_chans}, H, W), got shape {tuple(x.shape)}"
            )
        if x.shape[1] != self.in_chans:
            raise ValueError(
                f"UniRepLKNet expects {self.in_chans} input channel(s) (in_chans={self.in_chans}), got {x.shape[1]} "
                f"(input shape {tuple(x.shape)})"
            )
        h, w = x.shape[-2:]
        if h < MIN_INPUT_SIZE or w < MIN_INPUT_SIZE:
            raise ValueError(
                f"UniRepLKNet expects input height and width >= {MIN_INPUT_SIZE} (total stride 32), got {h}x{w}"
            )

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Stage outputs: the selected ones (increasing stage order) through ``norm{i}`` in features mode, or all
        four raw outputs in classification mode."""
        self.check_input(x)
        outs: list[torch.Tensor] = []
        last = self.out_indices[-1] if self.out_indices else 3
        for i in range(last + 1):
            x = self.stages[i](self.downsample_layers[i](x))
            if self.out_indices is None:
                outs.append(x)
            elif i in self.out_indices:
                outs.append(getattr(self, f"norm{i}")(x))
        return outs

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """Global average pool -> LayerNorm -> Linear (classification mode only)."""
        return self.head(self.norm(x.mean(dim=(-2, -1))))

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        feats = self.forward_features(x)
        if self.out_indices is not None:
            return feats
        return self.forward_head(feats[-1])

    def reparameterize(self) -> UniRepLKNet:
        """Re-parameterize every block in place (see :func:`reparameterize_model`); afterwards the module tree and
        state-dict keys are those of the model built with ``deploy=True``."""
        for block in self.blocks():
            block.reparameterize()
        self.deploy = True
        return self


# ------------------------------------------------------------------------------------------------ factory
def create_model(name: str, pretrained: str | os.PathLike[str] | None = None, **overrides: Any) -> UniRepLKNet:
    """Build a registered variant (``"unireplknet_a"`` or just ``"a"``) with any constructor argument overridden.

    ``pretrained`` optionally names a checkpoint loaded strictly with
    :func:`urlk_forecast.models.checkpoint.load_pretrained`.
    """
    model = UniRepLKNet(**{**variant_config(name), **overrides})
    if pretrained is not None:
        load_pretrained(model, pretrained)
    return model
