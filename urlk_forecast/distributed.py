"""Data-parallel training helpers on ``torch.distributed`` (DDP launched by ``torchrun``).

* :func:`init_from_env` joins the process group that ``torchrun`` describes in the environment
  (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``): nccl on CUDA, gloo on CPU.
* :func:`shard` splits a global batch of window indices across ranks (the DistributedSampler
  equivalent: every rank draws the same seeded permutation and takes its slice of each global batch).
* :func:`convert_sync_batchnorm` makes BatchNorm statistics those of the *global* batch, so that N
  processes follow the same loss trajectory as one process with the same global batch. torch's
  ``nn.SyncBatchNorm`` refuses CPU tensors, so on CPU we use :class:`GlobalBatchNorm`, a BatchNorm whose
  mean and variance are all-reduced with the differentiable ``torch.distributed.nn.functional.all_reduce``.
* :func:`torchrun_command` builds the ``python -m torch.distributed.run ...`` line that
  ``urlk-forecast train --devices N`` runs (single node ``--standalone``; multi-node rendezvous flags).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = [
    "DistContext",
    "init_from_env",
    "launched_by_torchrun",
    "context",
    "shard",
    "all_reduce_sum",
    "all_reduce_max",
    "barrier",
    "cleanup",
    "GlobalBatchNorm",
    "convert_sync_batchnorm",
    "revert_sync_batchnorm",
    "torchrun_command",
]


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: ``rank`` of ``world_size`` processes, ``local_rank`` on its node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        """True when more than one process takes part."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes checkpoints, logs and outputs."""
        return self.rank == 0


def launched_by_torchrun() -> bool:
    """True when the environment describes a multi-process job (``WORLD_SIZE`` > 1)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


def context() -> DistContext:
    """The current process group's context (a 1-process context when none is initialised)."""
    if dist.is_available() and dist.is_initialized():
        return DistContext(
            rank=dist.get_rank(),
            world_size=dist.get_world_size(),
            local_rank=int(os.environ.get("LOCAL_RANK", "0")),
            backend=str(dist.get_backend()),
        )
    return DistContext()


def init_from_env(use_cuda: bool, backend: str | None = None) -> DistContext:
    """Join the ``torchrun`` process group if the environment asks for one (idempotent).

    ``use_cuda`` selects nccl and pins the process to ``cuda:LOCAL_RANK``; otherwise gloo on CPU.
    Returns a 1-process context when ``WORLD_SIZE`` is absent or 1.
    """
    if dist.is_available() and dist.is_initialized():
        return context()
    if not launched_by_torchrun():
        return DistContext()
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed support")
    for var in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        if var not in os.environ:
            raise RuntimeError(
                f"WORLD_SIZE={os.environ['WORLD_SIZE']} but {var} is not set; launch with torchrun "
                "(python -m torch.distributed.run) or `urlk-forecast train --devices N`"
            )
    local_rank = int(os.environ["LOCAL_RANK"])
    if backend is None:
        backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend)
    return context()


#: seconds :func:`cleanup` releases the GIL before it destroys the process group (see there)
_RELEASE_S = 0.05


def cleanup() -> None:
    """Destroy the process group if one is initialised.

    First the GIL is released for a moment: a gloo worker thread that ran the last collective (the checkpoint's
    ``all_gather_object``) may still have to drop that work's tensors, whose Python owners it decrefs under the GIL.
    If the main thread keeps the GIL until the interpreter finalises, that thread exits inside the work's C++
    destructor and the process aborts ("terminate called without an active exception"; 1 run in ~20-35 of
    tests/test_ddp.py's worker, the core's stack: ``ProcessGroupGloo::runLoop`` -> ``~AsyncAllgatherWork`` ->
    ``take_gil`` -> ``PyThread_exit_thread`` while the main thread was in ``Py_FinalizeEx``). destroy_process_group
    does not join those threads. A barrier would also release the GIL, but a rank that is done early would wait in
    it for rank 0's evaluation, past the group's timeout on a large run."""
    if dist.is_available() and dist.is_initialized():
        time.sleep(_RELEASE_S)
        dist.destroy_process_group()


def shard(indices: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """This rank's contiguous slice of a global batch (sizes differ by at most one)."""
    if world_size <= 1:
        return indices
    return np.array_split(np.asarray(indices), world_size)[rank]


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """In-place sum over ranks (no-op without a process group); returns ``t``."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_max(t: torch.Tensor) -> torch.Tensor:
    """In-place max over ranks (no-op without a process group); returns ``t``."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def barrier() -> None:
    """Wait for every rank (no-op without a process group)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


class GlobalBatchNorm(_BatchNorm):
    """BatchNorm over the global batch of all ranks, on any device (the CPU stand-in for SyncBatchNorm).

    In training mode under a process group of several ranks the per-channel mean and (biased) variance
    are reduced over every rank's batch with a differentiable all-reduce, so forward *and* backward equal
    those of one BatchNorm over the concatenated batch; running statistics are updated as torch does
    (unbiased variance). Otherwise it is an ordinary BatchNorm.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2-D input (N, C, ...), got {input.dim()}-D")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(input)
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(input)
        from torch.distributed.nn.functional import all_reduce as diff_all_reduce

        x = input.float()
        c = x.shape[1]
        dims = [0, *range(2, x.dim())]
        shape = [1, c] + [1] * (x.dim() - 2)
        local_n = x.numel() // c
        s = torch.cat([x.sum(dims), x.new_full((1,), float(local_n))])
        s = diff_all_reduce(s)
        n = s[-1]
        mean = s[:-1] / n
        xc = x - mean.view(shape)
        var = diff_all_reduce((xc * xc).sum(dims)) / n
        y = xc * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)  # type: ignore[union-attr,operator]
                if self.momentum is None:
                    m = 1.0 / float(self.num_batches_tracked)  # type: ignore[arg-type]
                else:
                    m = self.momentum
                nv = float(n.item())
                unbiased = var.detach() * (nv / max(nv - 1.0, 1.0))
                self.running_mean.mul_(1 - m).add_(mean.detach().to(self.running_mean.dtype), alpha=m)
                self.running_var.mul_(1 - m).add_(unbiased.to(self.running_var.dtype), alpha=m)
        return y.to(input.dtype)


def convert_sync_batchnorm(module: nn.Module, use_cuda: bool) -> nn.Module:
    """Replace every BatchNorm in ``module`` by a synchronised one (in place for children; returns the root).

    CUDA: ``torch.nn.SyncBatchNorm``; CPU: :class:`GlobalBatchNorm`. Parameters and buffers are shared
    with the original layers (same ``Parameter`` objects), names are unchanged so state dicts stay
    compatible, and :func:`revert_sync_batchnorm` restores the original classes.
    """
    if isinstance(module, _BatchNorm) and not isinstance(module, (GlobalBatchNorm, nn.SyncBatchNorm)):
        cls = nn.SyncBatchNorm if use_cuda else GlobalBatchNorm
        new = cls(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
        _move_state(module, new)
        new._urlk_orig_cls = type(module)  # type: ignore[assignment]
        return new
    for name, child in list(module.named_children()):
        new_child = convert_sync_batchnorm(child, use_cuda)
        if new_child is not child:
            setattr(module, name, new_child)
    return module


def revert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Undo :func:`convert_sync_batchnorm` (in place for children; returns the root)."""
    orig = getattr(module, "_urlk_orig_cls", None)
    if orig is not None:
        new = orig(module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats)
        _move_state(module, new)
        return new
    for name, child in list(module.named_children()):
        new_child = revert_sync_batchnorm(child)
        if new_child is not child:
            setattr(module, name, new_child)
    return module


def _move_state(src: nn.Module, dst: nn.Module) -> None:
    """Share parameters / buffers of ``src`` with ``dst`` and copy its train/eval mode and device."""
    if src.affine:  # type: ignore[union-attr]
        dst.weight = src.weight  # type: ignore[assignment]
        dst.bias = src.bias  # type: ignore[assignment]
    if src.track_running_stats:  # type: ignore[union-attr]
        dst.running_mean = src.running_mean  # type: ignore[assignment]
        dst.running_var = src.running_var  # type: ignore[assignment]
        dst.num_batches_tracked = src.num_batches_tracked  # type: ignore[assignment]
    dst.train(src.training)
    if hasattr(src, "qconfig"):
        dst.qconfig = src.qconfig  # type: ignore[assignment]


def torchrun_command(
    nproc_per_node: int,
    args: Sequence[str],
    module: str = "urlk_forecast.cli",
    nnodes: int = 1,
    node_rank: int | None = None,
    master_addr: str | None = None,
    master_port: int | None = None,
    rdzv_endpoint: str | None = None,
    rdzv_id: str | None = None,
) -> list[str]:
    """The ``python -m torch.distributed.run`` command line that runs ``python -m module *args`` per process.

    One node: ``--standalone`` (torchrun picks a free local port). Several nodes: either the static
    ``--master-addr/--master-port/--node-rank`` form or the elastic ``--rdzv-endpoint host:port`` form
    (c10d rendezvous), exactly as with ``torchrun`` itself.
    """
    if nproc_per_node < 1:
        raise ValueError(f"nproc_per_node must be >= 1, got {nproc_per_node}")
    if nnodes < 1:
        raise ValueError(f"nnodes must be >= 1, got {nnodes}")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc_per_node)]
    if nnodes == 1 and rdzv_endpoint is None and master_addr is None:
        cmd.append("--standalone")
    else:
        cmd += ["--nnodes", str(nnodes)]
        if rdzv_endpoint is not None:
            cmd += ["--rdzv-backend", "c10d", "--rdzv-endpoint", rdzv_endpoint, "--rdzv-id", rdzv_id or "urlk"]
        else:
            if master_addr is None or node_rank is None:
                raise ValueError("multi-node runs need master_addr and node_rank (or an rdzv_endpoint)")
            cmd += ["--node-rank", str(node_rank), "--master-addr", master_addr]
            cmd += ["--master-port", str(master_port or 29500)]
    cmd += ["-m", module, *args]
    return cmd
