"""Structural re-parameterization: branch tables, Eq. (1) / Fig. 11, BN folding, block and whole-model equality.

References are independent of the code under test: explicit ``F.conv2d`` / ``F.batch_norm`` compositions in float64.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from urlk_forecast.models import DilatedReparamBlock, UniRepLKNet, UniRepLKNetBlock, create_model, reparameterize_model
from urlk_forecast.ops import DWConv2d
from urlk_forecast.ops.reparam import (
    RELEASED_BRANCH_TABLES,
    branch_table,
    dilated_to_dense,
    embed_dilated,
    fuse_bn,
    merge_dilated_branches,
    pad_kernel,
)

ODD_K = list(range(5, 32, 2))


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm())


@torch.no_grad()
def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights AND random BN running stats / affine, layer scale, GRN gamma/beta (nothing at defaults)."""
    g = torch.Generator().manual_seed(seed)

    def rnd(t: torch.Tensor) -> torch.Tensor:
        return torch.randn(t.shape, generator=g, dtype=torch.float64).to(t.dtype)

    def uni(t: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
        return (lo + (hi - lo) * torch.rand(t.shape, generator=g, dtype=torch.float64)).to(t.dtype)

    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.weight.copy_(uni(m.weight, 0.5, 1.5))
            m.bias.copy_(0.2 * rnd(m.bias))
            m.running_mean.copy_(0.2 * rnd(m.running_mean))
            m.running_var.copy_(uni(m.running_var, 0.5, 2.0))
        elif isinstance(m, (nn.Conv2d, nn.Linear)):
            fan_in = m.weight[0].numel()
            m.weight.copy_(rnd(m.weight) / fan_in**0.5)
            if m.bias is not None:
                m.bias.copy_(0.1 * rnd(m.bias))
        elif isinstance(m, UniRepLKNetBlock) and m.gamma is not None:
            m.gamma.copy_(uni(m.gamma, 0.2, 0.6))
        if type(m).__name__ == "GRNwithNHWC":
            m.gamma.copy_(0.3 * rnd(m.gamma))
            if m.beta is not None:
                m.beta.copy_(0.1 * rnd(m.beta))
    return model


def set_unfused(model: nn.Module) -> nn.Module:
    """Make every DRB run its branches one by one in eval mode (the reference computation)."""
    for m in model.modules():
        if isinstance(m, DilatedReparamBlock):
            m.fuse_in_eval = False
    return model


# ------------------------------------------------------------------------------------------ branch tables
def test_released_tables_exact() -> None:
    expected = {
        17: ((5, 9, 3, 3, 3), (1, 2, 4, 5, 7)),
        15: ((5, 7, 3, 3, 3), (1, 2, 3, 5, 7)),
        13: ((5, 7, 3, 3, 3), (1, 2, 3, 4, 5)),
        11: ((5, 5, 3, 3, 3), (1, 2, 3, 4, 5)),
        9: ((5, 5, 3, 3), (1, 2, 3, 4)),
        7: ((5, 3, 3), (1, 2, 3)),
        5: ((3, 3), (1, 2)),
    }
    assert RELEASED_BRANCH_TABLES == expected
    for k, table in expected.items():
        assert branch_table(k) == table


@pytest.mark.parametrize("K", list(range(5, 64, 2)))
def test_branch_rule_valid(K: int) -> None:
    ks, rs = branch_table(K)
    assert len(ks) == len(rs)
    assert all((k - 1) * r + 1 <= K for k, r in zip(ks, rs)), (K, ks, rs)
    assert len(set(zip(ks, rs))) == len(ks), "branch names dil_conv_k{k}_{r} must be unique"
    assert all(k % 2 == 1 and r >= 1 for k, r in zip(ks, rs))
    if K >= 19:  # the documented rule
        big = (K - 1) // 2
        assert ks[0] == 5 and rs[0] == 1
        assert rs[1] == 2 and ks[1] % 2 == 1 and (ks[1] - 1) * 2 + 1 <= K < (ks[1] + 1) * 2 + 1
        assert ks[2:] == (3, 3, 3) and rs[4] == big and rs[2] < rs[3] < rs[4]


def test_extra_tables_documented_values() -> None:
    assert branch_table(19) == ((5, 9, 3, 3, 3), (1, 2, 3, 6, 9))
    assert branch_table(25) == ((5, 13, 3, 3, 3), (1, 2, 4, 8, 12))
    assert branch_table(31) == ((5, 15, 3, 3, 3), (1, 2, 5, 10, 15))


@pytest.mark.parametrize("K", [0, 1, 2, 3, 4, 6, 18, -5])
def test_branch_table_rejects(K: int) -> None:
    with pytest.raises(ValueError, match="odd kernel_size >= 5"):
        branch_table(K)


# ------------------------------------------------------------------------------------- Eq. (1), Fig. 11
@pytest.mark.parametrize("k,r", [(3, 2), (3, 5), (5, 3), (7, 2), (9, 2), (3, 15)])
def test_fig11_dilated_equals_dense(k: int, r: int) -> None:
    """A k x k kernel with dilation r == the Eq. (1) dense kernel without dilation (float64, exact taps)."""
    C = 4
    w = torch.randn(C, 1, k, k, dtype=torch.float64)
    dense = dilated_to_dense(w, r)
    size = (k - 1) * r + 1
    assert dense.shape == (C, 1, size, size)
    # the dense kernel holds w at multiples of r and zeros elsewhere
    assert torch.equal(dense[:, :, ::r, ::r], w)
    mask = torch.ones_like(dense, dtype=torch.bool)
    mask[:, :, ::r, ::r] = False
    assert torch.count_nonzero(dense[mask]) == 0
    x = torch.randn(2, C, 23, 31, dtype=torch.float64)
    pad = r * (k - 1) // 2
    y_dil = F.conv2d(x, w, None, 1, pad, r, C)
    y_dense = F.conv2d(x, dense, None, 1, size // 2, 1, C)
    assert rel_err(y_dense, y_dil) < 1e-14
    assert torch.equal(dilated_to_dense(w, 1), w)


@pytest.mark.parametrize("k,r,size", [(3, 1, 3), (3, 2, 7), (5, 2, 13), (3, 7, 15), (9, 2, 17), (3, 15, 31)])
def test_embed_dilated_equals_eq1(k: int, r: int, size: int) -> None:
    w = torch.randn(5, 1, k, k, dtype=torch.float64, requires_grad=True)
    fast = embed_dilated(w, r, size)
    assert torch.equal(fast, pad_kernel(dilated_to_dense(w, r), size))
    g = torch.randn_like(fast)
    (fast * g).sum().backward()
    off = (size - (k - 1) * r - 1) // 2
    assert torch.equal(w.grad, g[:, :, off::r, off::r][:, :, :k, :k])
    with pytest.raises(ValueError):
        embed_dilated(w, r, size - 1)


def test_pad_kernel() -> None:
    w = torch.randn(3, 1, 5, 5)
    p = pad_kernel(w, 9)
    assert p.shape == (3, 1, 9, 9) and torch.equal(p[:, :, 2:7, 2:7], w) and p.abs().sum() == w.abs().sum()
    with pytest.raises(ValueError):
        pad_kernel(w, 6)
    with pytest.raises(ValueError):
        pad_kernel(w, 3)


def test_fuse_bn_conv_and_linear() -> None:
    bn = nn.BatchNorm2d(6).double().eval()
    randomize_(bn)
    w = torch.randn(6, 1, 3, 3, dtype=torch.float64)
    b0 = torch.randn(6, dtype=torch.float64)
    x = torch.randn(2, 6, 9, 7, dtype=torch.float64)
    fw, fb = fuse_bn(w, bn, b0)
    ref = bn(F.conv2d(x, w, b0, padding=1, groups=6))
    assert rel_err(F.conv2d(x, fw, fb, padding=1, groups=6), ref) < 1e-14
    lw = torch.randn(6, 10, dtype=torch.float64)
    z = torch.randn(5, 10, dtype=torch.float64)
    fw, fb = fuse_bn(lw, bn)  # BN over the linear output features
    ref = F.batch_norm(z @ lw.T, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
    assert rel_err(z @ fw.T + fb, ref) < 1e-14
    with pytest.raises(ValueError, match="running statistics"):
        fuse_bn(w, nn.BatchNorm2d(6, track_running_stats=False))


def test_merge_branches_float32_kept_accurate() -> None:
    w = torch.randn(4, 1, 7, 7)
    out_w, out_b = merge_dilated_branches(w, torch.zeros(4), [(torch.randn(4, 1, 3, 3), torch.ones(4), 3)])
    assert out_w.dtype == torch.float32 and out_w.shape == (4, 1, 7, 7) and torch.equal(out_b, torch.ones(4))


# -------------------------------------------------------------------------------------- block-level
def drb_reference(drb: DilatedReparamBlock, x: torch.Tensor) -> torch.Tensor:
    """Eval-mode DRB written with F.conv2d / F.batch_norm only."""
    C, K = drb.channels, drb.kernel_size

    def bn(y: torch.Tensor, m: nn.BatchNorm2d) -> torch.Tensor:
        return F.batch_norm(y, m.running_mean, m.running_var, m.weight, m.bias, False, 0.0, m.eps)

    out = bn(F.conv2d(x, drb.lk_origin.weight, None, 1, K // 2, 1, C), drb.origin_bn)
    for k, r in zip(*branch_table(K)):
        conv = getattr(drb, f"dil_conv_k{k}_{r}")
        out = out + bn(F.conv2d(x, conv.weight, None, 1, r * (k - 1) // 2, r, C), getattr(drb, f"dil_bn_k{k}_{r}"))
    return out


@pytest.mark.parametrize("K", ODD_K)
def test_drb_reparam_every_odd_k(K: int) -> None:
    C = 6
    for dtype, tol in ((torch.float64, 1e-6), (torch.float32, 1e-5)):
        drb = randomize_(DilatedReparamBlock(C, K), seed=K).to(dtype).eval()
        assert isinstance(drb.lk_origin, DWConv2d)
        xs = [torch.randn(1, C, 40, 72, dtype=dtype), torch.randn(3, C, 33, 21, dtype=dtype)]
        with torch.no_grad():
            ref64 = copy.deepcopy(drb).double()
            refs = [drb_reference(ref64, x.double()) for x in xs]
            set_unfused(drb)
            unfused = [drb(x) for x in xs]
            drb.fuse_in_eval = True
            fused_eval = [drb(x) for x in xs]
            drb.merge_dilated_branches()
            merged = [drb(x) for x in xs]
        assert drb.merged and list(dict(drb.named_children())) == ["lk_origin"]
        assert drb.lk_origin.bias is not None
        for ref, a, b, c in zip(refs, unfused, fused_eval, merged):
            assert rel_err(a, ref) <= tol
            assert rel_err(b, ref) <= tol, (K, dtype, rel_err(b, ref))
            assert rel_err(c, ref) <= tol, (K, dtype, rel_err(c, ref))
        deploy = DilatedReparamBlock(C, K, deploy=True).to(dtype)
        assert repr(deploy) == repr(drb)
        assert {k: v.shape for k, v in deploy.state_dict().items()} == {k: v.shape for k, v in drb.state_dict().items()}


@pytest.mark.parametrize("K", [0, 3, 5, 7, 13, 21, 31])
def test_block_reparam(K: int) -> None:
    dim = 8
    for dtype, tol in ((torch.float64, 1e-6), (torch.float32, 1e-5)):
        block = randomize_(UniRepLKNetBlock(dim, K), seed=100 + K).to(dtype).eval()
        set_unfused(block)
        x1, x3 = torch.randn(1, dim, 40, 72, dtype=dtype), torch.randn(3, dim, 35, 32, dtype=dtype)
        with torch.no_grad():
            refs = [(block(x), block.compute_residual(x)) for x in (x1, x3)]
            block.reparameterize()
            outs = [(block(x), block.compute_residual(x)) for x in (x1, x3)]
        for (ref, ref_res), (out, out_res) in zip(refs, outs):
            assert rel_err(out, ref) <= tol
            assert rel_err(out_res, ref_res) <= tol  # the residual branch alone, not diluted by the skip
        deploy = UniRepLKNetBlock(dim, K, deploy=True).to(dtype)
        assert repr(deploy) == repr(block)
        assert [(k, v.shape) for k, v in deploy.state_dict().items()] == [
            (k, v.shape) for k, v in block.state_dict().items()
        ]
        block.reparameterize()  # idempotent
        assert repr(deploy) == repr(block)


def test_block_reparam_residual_branch_exact() -> None:
    """The residual branch alone (not diluted by the skip connection) matches in float64."""
    block = randomize_(UniRepLKNetBlock(8, 13), seed=3).double().eval()
    set_unfused(block)
    x = torch.randn(3, 8, 40, 72, dtype=torch.float64)
    with torch.no_grad():
        ref = block.compute_residual(x)
        block.reparameterize()
        out = block.compute_residual(x)
    assert rel_err(out, ref) <= 1e-12


# -------------------------------------------------------------------------------------- model-level
def _state_signature(m: nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    return [(k, tuple(v.shape)) for k, v in m.state_dict().items()]


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-6), (torch.float32, 1e-5)])
def test_model_a_reparam_equal(dtype: torch.dtype, tol: float) -> None:
    model = randomize_(create_model("unireplknet_a"), seed=7).to(dtype).eval()
    set_unfused(model)
    x = torch.randn(3, 3, 32, 64, dtype=dtype)
    x1 = torch.randn(1, 3, 40, 72, dtype=dtype)
    with torch.no_grad():
        ref, ref1 = model(x), model(x1)
        reparameterize_model(model)
        out, out1 = model(x), model(x1)
    assert rel_err(out, ref) <= tol and rel_err(out1, ref1) <= tol
    deploy = create_model("unireplknet_a", deploy=True)
    assert repr(deploy) == repr(model)
    assert _state_signature(deploy) == _state_signature(model)
    assert model.deploy


def test_model_custom_kernels_reparam_equal() -> None:
    """A small net mixing K = 0, 3, 5, 7, 19, 31 per block, features mode, float64 and float32."""
    ks = ((3, 0), (5, 19), (31, 7, 3), (27,))
    for dtype, tol in ((torch.float64, 1e-6), (torch.float32, 1e-5)):
        kw = dict(in_chans=2, depths=(2, 2, 3, 1), dims=(8, 16, 24, 32), kernel_sizes=ks, out_indices=(0, 1, 2, 3))
        model = randomize_(UniRepLKNet(**kw), seed=11).to(dtype).eval()
        set_unfused(model)
        x = torch.randn(3, 2, 40, 72, dtype=dtype)
        with torch.no_grad():
            ref = model(x)
            reparameterize_model(model)
            out = model(x)
        for a, b in zip(out, ref):
            assert rel_err(a, b) <= tol
        deploy = UniRepLKNet(**kw, deploy=True)
        assert repr(deploy) == repr(model) and _state_signature(deploy) == _state_signature(model)


def test_reparam_inside_wrapper_module() -> None:
    """reparameterize_model works on any module containing a backbone (e.g. a forecasting network)."""

    class Wrapper(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = UniRepLKNet(in_chans=1, depths=(1, 1, 1, 1), dims=(8, 16, 16, 16), out_indices=(3,))
            self.proj = nn.Linear(16, 2)

        def reparameterize(self) -> None:
            reparameterize_model(self.encoder)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.proj(self.encoder(x)[0].mean((-2, -1)))

    w = randomize_(Wrapper(), seed=5).eval()
    set_unfused(w)
    x = torch.randn(2, 1, 32, 64)
    with torch.no_grad():
        ref = w(x)
        reparameterize_model(w)
        out = w(x)
    assert rel_err(out, ref) <= 1e-5
    assert not any(isinstance(m, nn.BatchNorm2d) for m in w.modules())


def test_fused_eval_path_has_gradients() -> None:
    """The on-the-fly merged eval path is differentiable w.r.t. every branch parameter (frozen-BN fine-tuning)."""
    drb = randomize_(DilatedReparamBlock(4, 9)).double().eval()
    x = torch.randn(2, 4, 20, 24, dtype=torch.float64)
    drb(x).pow(2).sum().backward()
    grads_fused = {n: p.grad.clone() for n, p in drb.named_parameters()}
    drb.zero_grad()
    set_unfused(drb)
    drb(x).pow(2).sum().backward()
    for n, p in drb.named_parameters():
        assert p.grad is not None and rel_err(grads_fused[n], p.grad) < 1e-10, n
