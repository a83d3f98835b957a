"""The training loop: the paper's or a warm-up + cosine schedule, masked loss, AMP, checkpoint/resume, DDP.

:class:`Trainer` optimises any ``nn.Module`` whose ``forward(batch)`` maps a window batch (the dict of
:meth:`urlk_forecast.data.windows.WindowDataset.batch`) to ``(B, pred_len, S)`` forecasts in physical
units: ``Trainer(cfg).fit(model, train_ws, val_ws)``. Design points (see docs/training.md):

* **Loss.** Masked MSE against ``batch["y"][:, -pred_len:]`` over the entries where ``y_mask`` is True
  (missing targets never count). With ``loss_norm="station"`` (default) each station's error is divided
  by that station's standard deviation over the training windows: the MSE in standardised units that
  Corrformer (and the paper) report, while the network keeps predicting physical units. The per-window
  statistics are the network's own business (RevIN inside it). A network with a ``quantiles`` attribute (sorted
  levels, e.g. ``(0.1, 0.5, 0.9)``) forecasts ``(B, pred_len, S, Q)`` and is trained -- and validated, early
  stopping included -- with the masked pinball loss averaged over the levels (:func:`masked_pinball_loss`).
* **Data order.** Epoch ``e`` visits the windows in ``default_rng([seed, e]).permutation(n)``; global
  batch ``k`` is the slice ``[k*B, (k+1)*B)``, split contiguously across DDP ranks. A checkpoint stores
  ``(epoch, step)``, so a resumed run replays exactly the same batches, and with the RNG states restored
  it reaches the same weights as an uninterrupted run.
* **Schedule.** ``lr_schedule="epoch"`` multiplies the LR by ``lr_decay`` after every epoch (the paper's);
  ``"cosine"`` sets it per optimiser step from :func:`cosine_lr_factor` over a planned number of steps. The plan
  is ``plan_steps``, or the step budget (``epochs`` x steps per epoch, ``max_steps``), and under ``max_time``
  also what fits in the time left at the step and validation times measured on the first steps; it is fixed
  once, kept in the checkpointed state, so a resumed run follows the same schedule.
* **Validation** runs after every epoch and, every ``val_every`` steps into an epoch (or as ``val_per_plan``
  spreads them over the plan), mid-epoch too; the best validation's weights are restored at the end and early
  stopping counts validations without improvement.
* **Checkpoints** (``out_dir/checkpoint.pt``) are written atomically at the end of every epoch, at every
  validation, every ``checkpoint_every`` steps and when a limit stops the run; they hold model, optimiser,
  scheduler, AMP scaler, every rank's RNG states, position, plan, early-stopping state, best weights and history.
* **DDP.** Under ``torchrun`` the process group is joined automatically; BatchNorm becomes a
  synchronised BatchNorm (``sync_batchnorm``), and each rank's loss is scaled by the *global* count of
  observed targets, so N processes follow the single-process trajectory with the same global batch.
  Only rank 0 writes files and shows progress.

The run's checkpointed bookkeeping is one dataclass (:class:`TrainState`, saved as ``checkpoint["state"]``);
what one :meth:`Trainer.fit` call builds around it (device, wrapped network, optimiser, ...) is another
(:class:`_Run`). :mod:`urlk_forecast.training` re-exports the public names and keeps ``train()``.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import random
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import distributed as D
from . import ops
from .config import ConfigError, TrainConfig
from .data.windows import WindowSource
from .ema import WeightEMA
from .models import fastpath
from .utils import atomic_torch_save, atomic_write_text, evenly_spaced

__all__ = [
    "Trainer",
    "Callback",
    "cosine_lr_factor",
    "TrainResult",
    "TrainState",
    "seed_everything",
    "epoch_permutation",
    "station_scale",
    "masked_sq_error",
    "masked_pinball_loss",
    "masked_loss",
    "output_quantiles",
    "evaluate_loss",
    "resolve_device",
    "resolve_amp",
    "set_grad_checkpointing",
    "load_checkpoint",
    "CHECKPOINT_NAME",
]

# the historical name: CLI logging configuration and tests address the training logger by it
logger = logging.getLogger("urlk_forecast.training")

CHECKPOINT_NAME = "checkpoint.pt"
BEST_NAME = "best.pt"
HISTORY_NAME = "history.json"
CONFIG_NAME = "train_config.json"
_CKPT_FORMAT = "urlk-forecast/train-checkpoint"
_CKPT_VERSION = 1

Callback = Callable[[dict[str, Any]], None]

#: a time-bounded plan is fixed after this global step, from the median time from one step's end to the next's (batch
#: wait and logging included; steps after the first of the process, which may compile kernels; the median ignores a
#: few steps slowed by another process on a shared CPU): at the same step in a resumed run, so a plan that the step
#: budget decides is the same whether or not the run was interrupted. Until then a provisional plan from the fastest
#: step so far shapes the warm-up.
PLAN_AT_STEP = 8
#: steps without the depthwise op's one-time work (compiling kernels, measuring its table:
#: :func:`urlk_forecast.ops.one_time_seconds`) the plan needs; on a machine's first run the plan waits for them, up to
#: ``PLAN_AT_STEP * PLAN_DEFER_MAX`` steps (then every step after the first counts)
PLAN_MIN_CLEAN = 4
PLAN_DEFER_MAX = 4
#: fraction of the time left kept free when sizing a time-bounded plan (step-time noise)
PLAN_MARGIN = 0.05


@dataclass
class TrainResult:
    """What :meth:`Trainer.fit` returns; ``history`` has one dict per (possibly partial) epoch."""

    history: list[dict[str, Any]] = field(default_factory=list)
    step_losses: list[float] = field(default_factory=list)
    best_val_loss: float | None = None
    best_epoch: int | None = None
    best_step: int | None = None  # global step of the best validation
    epochs_completed: int = 0
    steps: int = 0
    stopped: str = "epochs"  # why the run ended: epochs | early_stopping | max_steps | max_time
    elapsed_s: float = 0.0
    windows_per_s: float = 0.0
    out_dir: str | None = None
    resumed_from: dict[str, int] | None = None
    #: the step plan of the LR schedule and validations: steps, val_every, by (config | steps | time), step_s, val_s
    plan: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable copy."""
        return asdict(self)


@dataclass
class TrainState:
    """The position and bookkeeping of a run: exactly what ``checkpoint["state"]`` holds (as a dict)."""

    epoch: int = 0  # current (0-based) epoch
    step_in_epoch: int = 0  # optimiser steps already done in the current epoch
    global_step: int = 0
    best_val: float = math.inf
    best_epoch: int | None = None
    best_step: int | None = None
    bad_epochs: int = 0  # validations (at epoch ends, and mid-epoch with val_every) without a lower loss
    elapsed: float = 0.0  # seconds of training, summed over resumes
    windows_seen: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    step_losses: list[float] = field(default_factory=list)
    epoch_loss_sum: float = 0.0  # running sums of the current epoch (for the mean train loss)
    epoch_loss_steps: int = 0
    stopped: str | None = None
    plan_steps: int | None = None  # the fixed plan (None until fixed)
    val_every: int | None = None  # the mid-epoch validation interval in use (None = epoch ends only)
    plan: dict[str, Any] = field(default_factory=dict)  # how the plan was chosen (for the record)


# --------------------------------------------------------------------------------------------- helpers


def cosine_lr_factor(step: int, plan: int, warmup: float, min_ratio: float) -> float:
    """The LR multiplier of optimiser step ``step`` (0-based) in a ``plan``-step warm-up + cosine schedule.

    ``w = max(1, round(warmup * plan))`` warm-up steps ramp linearly ``1/w, 2/w, ..., 1``; from the peak at step
    ``w - 1`` a half cosine falls to ``min_ratio`` at step ``plan - 1``, where it stays. ``warmup=0`` starts at
    the peak's first decayed value (no warm-up).
    """
    plan = max(int(plan), 1)
    w = max(1, round(warmup * plan)) if warmup > 0 else 0
    if step < w:
        return (step + 1) / w
    if step >= plan - 1:
        return float(min_ratio)
    progress = (step - (w - 1)) / (plan - w)
    return float(min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress)))


def val_interval(plan: int, steps_per_epoch: int, per_plan: int | None) -> int | None:
    """Steps between mid-epoch validations that spread about ``per_plan`` validations over ``plan`` steps, counting
    the validation at every epoch end; None when the epoch ends alone give that many (or ``per_plan`` is None)."""
    if per_plan is None:
        return None
    if plan <= steps_per_epoch:
        iv = max(1, math.ceil(plan / per_plan))
        return iv if iv < steps_per_epoch else None
    per_epoch = round(per_plan * steps_per_epoch / plan)  # validations per epoch, its end included
    return math.ceil(steps_per_epoch / per_epoch) if per_epoch > 1 else None


def count_validations(upto: int, steps_per_epoch: int, every: int | None) -> int:
    """Validations done in global steps ``1..upto``: at every epoch end and at steps ``every, 2*every, ...`` into an
    epoch (mid-epoch)."""
    full, rest = divmod(int(upto), steps_per_epoch)
    if not every:
        return full
    return full * ((steps_per_epoch - 1) // every + 1) + rest // every


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed python ``random``, numpy's global RNG and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        if torch.backends.cudnn.is_available():
            torch.backends.cudnn.benchmark = False
            torch.backends.cudnn.deterministic = True


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """The visiting order of ``n`` windows in ``epoch`` (a pure function of ``seed`` and ``epoch``)."""
    return np.random.default_rng([int(seed), int(epoch)]).permutation(n)


def resolve_device(device: str | torch.device, ctx: D.DistContext | None = None) -> torch.device:
    """``"auto"`` → cuda if available else cpu; under DDP on CUDA the local rank's GPU."""
    name = str(device)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(name)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r} requested but CUDA is not available (torch {torch.__version__})")
        if ctx is not None and ctx.enabled:
            dev = torch.device("cuda", ctx.local_rank)
        elif dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
    return dev


def resolve_amp(amp: bool | str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``amp`` on ``device`` (None = full precision)."""
    if amp in (False, None, "none"):
        return None
    if amp in (True, "auto"):
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16
    if amp == "bf16":
        return torch.bfloat16
    if amp == "fp16":
        if device.type != "cuda":
            raise ConfigError(f"amp='fp16' needs a CUDA device (got {device}); use amp='bf16' on CPU")
        return torch.float16
    raise ConfigError(f"amp={amp!r}: choose False, True, 'auto', 'bf16' or 'fp16'")


def set_grad_checkpointing(model: nn.Module, enabled: bool = True) -> int:
    """Set ``with_cp`` on every sub-module that has that flag; returns how many were set.

    Raises ``ValueError`` when ``enabled`` and the model has no such module (it cannot checkpoint).
    """
    n = 0
    for m in model.modules():
        if isinstance(getattr(m, "with_cp", None), bool):
            m.with_cp = enabled  # type: ignore[assignment]
            n += 1
    if enabled and n == 0:
        raise ValueError(
            f"{type(model).__name__} has no sub-module with a `with_cp` flag: gradient checkpointing unsupported"
        )
    return n


def masked_sq_error(
    pred: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, scale: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sum of squared (scaled) errors over observed entries, number of observed entries)``.

    ``pred``, ``y`` and ``mask`` are ``(B, P, S)``; ``y`` may hold NaN where ``mask`` is False (they never
    reach the sum or the gradient); ``scale`` is ``(S,)``, errors are divided by it.
    """
    if pred.shape != y.shape:
        raise ValueError(f"model output has shape {tuple(pred.shape)} but the targets have {tuple(y.shape)}")
    err = pred.float() - y.float()
    if scale is not None:
        err = err / scale
    err = torch.where(mask, err, torch.zeros((), dtype=err.dtype, device=err.device))
    return (err * err).sum(), mask.sum().to(torch.float64)


def masked_pinball_loss(
    pred: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, levels: Sequence[float],
    scale: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sum over observed entries of the pinball loss averaged over the levels, number of observed entries)``.

    ``pred`` is ``(B, P, S, Q)`` (quantile ``levels[k]`` in ``pred[..., k]``), ``y`` and ``mask`` ``(B, P, S)``;
    the pinball loss of level ``q`` at error ``e = y - pred`` is ``max(q e, (q - 1) e)`` (its expectation is
    minimised by the true ``q``-quantile). ``scale`` ``(S,)`` divides the errors, as in :func:`masked_sq_error`.
    """
    if pred.shape[:-1] != y.shape or pred.shape[-1] != len(levels):
        raise ValueError(f"model output has shape {tuple(pred.shape)} but the targets have {tuple(y.shape)} and "
                         f"there are {len(levels)} quantile levels (expected targets + ({len(levels)},))")
    err = y.float().unsqueeze(-1) - pred.float()
    if scale is not None:
        err = err / scale.unsqueeze(-1)
    q = torch.as_tensor(list(levels), dtype=err.dtype, device=err.device)
    loss = torch.maximum(q * err, (q - 1.0) * err).mean(dim=-1)
    loss = torch.where(mask, loss, torch.zeros((), dtype=loss.dtype, device=loss.device))
    return loss.sum(), mask.sum().to(torch.float64)


def output_quantiles(model: nn.Module) -> tuple[float, ...] | None:
    """The quantile levels ``model`` forecasts (its ``quantiles`` attribute, through a DDP wrapper); None: point."""
    levels = getattr(getattr(model, "module", model), "quantiles", None)
    return tuple(float(v) for v in levels) if levels is not None else None


def masked_loss(
    pred: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, scale: torch.Tensor | None = None,
    quantiles: Sequence[float] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The training loss as ``(sum, count)``: :func:`masked_sq_error` for point forecasts, the pinball loss
    (:func:`masked_pinball_loss`) at ``quantiles`` for quantile forecasts."""
    if quantiles is None:
        return masked_sq_error(pred, y, mask, scale)
    return masked_pinball_loss(pred, y, mask, quantiles, scale)


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    non_blocking = device.type == "cuda"
    out = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            if non_blocking and v.device.type == "cpu":
                v = v.pin_memory()
            out[k] = v.to(device, non_blocking=non_blocking)
        else:
            out[k] = v
    return out


def _targets(batch: dict[str, Any], pred_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    y = batch["y"][:, -pred_len:]
    mask = batch.get("y_mask")
    mask = torch.isfinite(y) if mask is None else mask[:, -pred_len:].bool() & torch.isfinite(y)
    return y, mask


class _Moments:
    """Per-station running sums (count, sum, sum of squares) of the observed entries of ``(..., S)`` arrays."""

    def __init__(self) -> None:
        self.s1: torch.Tensor | None = None
        self.s2: torch.Tensor | None = None
        self.cnt: torch.Tensor | None = None

    def add(self, x: torch.Tensor, m: torch.Tensor) -> None:
        m = m & torch.isfinite(x)
        x = torch.where(m, x, torch.zeros((), dtype=x.dtype))
        dims = tuple(range(x.dim() - 1))
        a1, a2, c = x.sum(dims), (x * x).sum(dims), m.sum(dims).double()
        if self.s1 is None or self.s2 is None or self.cnt is None:
            self.s1, self.s2, self.cnt = a1, a2, c
        else:
            self.s1, self.s2, self.cnt = self.s1 + a1, self.s2 + a2, self.cnt + c


def station_scale(ws: WindowSource, batch_windows: int = 16, floor: float = 1e-3) -> torch.Tensor:
    """Per-station standard deviation (ddof 1) of the observed training values of ``ws`` (float32, ``(S,)``).

    Uses the dataset's raw observations (``ws.values`` where ``ws.observed``, interpolated and missing
    entries excluded) when the window dataset exposes them; otherwise scans windows ``0, seq_len,
    2*seq_len, ...`` through ``ws.batch`` (entries with ``x_mask`` True). Stations with fewer than two
    observations get the median std; every std is floored at ``floor``.
    """
    n = len(ws)
    if n == 0:
        raise ValueError("the training windows are empty: no data to fit the loss scale")
    acc = _Moments()
    values, observed = getattr(ws, "values", None), getattr(ws, "observed", None)
    if isinstance(values, np.ndarray) and isinstance(observed, np.ndarray) and values.shape == observed.shape:
        for lo in range(0, values.shape[0], 4096):
            acc.add(torch.from_numpy(values[lo : lo + 4096].astype(np.float64)),
                    torch.from_numpy(observed[lo : lo + 4096]))
    else:
        seq_len = int(ws.batch(np.array([0]))["x"].shape[1])
        starts = np.arange(0, n, seq_len)
        for i in range(0, len(starts), batch_windows):
            b = ws.batch(starts[i : i + batch_windows])
            x = b["x"].double()
            acc.add(x, b["x_mask"].bool() if "x_mask" in b else torch.isfinite(x))
    s1, s2, cnt = acc.s1, acc.s2, acc.cnt
    assert s1 is not None and s2 is not None and cnt is not None
    mean = s1 / cnt.clamp(min=1)
    var = (s2 / cnt.clamp(min=1) - mean * mean).clamp(min=0) * cnt / (cnt - 1).clamp(min=1)
    std = var.sqrt()
    ok = cnt >= 2
    if not bool(ok.any()):
        raise ValueError("no station has two observed values in the training windows: cannot scale the loss")
    std = torch.where(ok, std, std[ok].median())
    return std.clamp(min=floor).float()


@torch.no_grad()
def evaluate_loss(
    model: nn.Module,
    ws: WindowSource,
    indices: Sequence[int] | np.ndarray,
    batch_size: int,
    device: torch.device,
    scale: torch.Tensor | None = None,
    amp_dtype: torch.dtype | None = None,
    ctx: D.DistContext | None = None,
) -> float:
    """Masked (scaled) MSE pooled over the observed targets of the windows ``indices`` (eval mode); the mean
    pinball loss (:func:`masked_loss`) for a model that forecasts quantiles (:func:`output_quantiles`).

    Under DDP each rank evaluates its share and the sums are all-reduced, so every rank gets the same value.
    """
    ctx = ctx or D.DistContext()
    idx = D.shard(np.asarray(indices, dtype=np.int64), ctx.rank, ctx.world_size)
    was_training = model.training
    model.eval()
    sq = torch.zeros((), dtype=torch.float64, device=device)
    cnt = torch.zeros((), dtype=torch.float64, device=device)
    levels = output_quantiles(model)
    try:
        for lo in range(0, len(idx), batch_size):
            batch = _to_device(ws.batch(idx[lo : lo + batch_size]), device)
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                pred = model(batch)
            y, mask = _targets(batch, pred.shape[1])
            s, c = masked_loss(pred, y, mask, scale, levels)
            sq += s.double()
            cnt += c
    finally:
        model.train(was_training)
    both = D.all_reduce_sum(torch.stack([sq, cnt]))
    return float(both[0] / both[1]) if float(both[1]) > 0 else float("nan")


class _Batches:
    """Yields ``ws.batch(idx)`` for a list of index arrays, building the next one in a background thread."""

    def __init__(self, ws: WindowSource, index_lists: list[np.ndarray], prefetch: bool) -> None:
        self.ws, self.index_lists, self.prefetch = ws, index_lists, prefetch

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if not self.prefetch or len(self.index_lists) <= 1:
            for idx in self.index_lists:
                yield self.ws.batch(idx)
            return
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="urlk-batch") as ex:
            fut: Future = ex.submit(self.ws.batch, self.index_lists[0])
            for nxt in self.index_lists[1:]:
                cur = fut.result()
                fut = ex.submit(self.ws.batch, nxt)
                yield cur
            yield fut.result()


def _train_step(
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    batch: dict[str, Any],
    scale: torch.Tensor | None,
    amp_dtype: torch.dtype | None,
    cfg: TrainConfig,
    ctx: D.DistContext,
) -> float | None:
    """One optimiser step on this rank's share of the global batch; returns the global mean loss."""
    device = batch["x"].device
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        pred = net(batch)
    y, mask = _targets(batch, pred.shape[1])
    sq, cnt = masked_loss(pred, y, mask, scale, output_quantiles(net))
    total = D.all_reduce_sum(torch.stack([sq.detach().double(), cnt]))
    if float(total[1]) == 0:
        return None  # every target of the global batch is missing: nothing to learn from
    # scaled so that DDP's gradient average equals the gradient of the global-batch mean
    loss = sq * (ctx.world_size / float(total[1]))
    global_loss = float(total[0] / total[1])
    if not math.isfinite(global_loss):
        raise FloatingPointError(
            f"training loss is {global_loss} at lr {optimizer.param_groups[0]['lr']:.3g}; "
            "lower the learning rate, enable grad_clip, or check the inputs for non-finite values"
        )
    scaler.scale(loss).backward()
    if cfg.grad_clip is not None:
        scaler.unscale_(optimizer)
        fastpath.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], cfg.grad_clip)
    scaler.step(optimizer)
    scaler.update()
    return global_loss


# ------------------------------------------------------------------------------------------ checkpoints


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a training checkpoint on CPU, checking its format tag (clear error for a foreign file)."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no training checkpoint at {path}")
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(ckpt, dict) or ckpt.get("format") != _CKPT_FORMAT:
        raise ValueError(f"{path} is not an urlk-forecast training checkpoint")
    if int(ckpt.get("version", 0)) > _CKPT_VERSION:
        raise ValueError(f"{path} has checkpoint version {ckpt['version']}; this code reads <= {_CKPT_VERSION}")
    return ckpt


def _rng_state(device: torch.device) -> dict[str, Any]:
    st: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if device.type == "cuda":
        st["cuda"] = torch.cuda.get_rng_state(device)
    return st


def _set_rng_state(st: dict[str, Any], device: torch.device) -> None:
    random.setstate(st["python"])
    np.random.set_state(st["numpy"])
    torch.set_rng_state(st["torch"])
    if device.type == "cuda" and "cuda" in st:
        torch.cuda.set_rng_state(st["cuda"], device)


def _cpu_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def _check_fingerprint(old: dict[str, Any], new: dict[str, Any], path: Path) -> None:
    diff = {k: (old.get(k), v) for k, v in new.items() if k in old and old[k] != v}
    if diff:
        what = ", ".join(f"{k}: checkpoint {a} vs now {b}" for k, (a, b) in diff.items())
        raise ConfigError(f"cannot resume from {path}: the run differs ({what})")


def _progress(show: bool, total: int, initial: int, desc: str) -> Any:
    if not show:
        return None
    from tqdm.auto import tqdm  # only when a bar is shown: tqdm is not needed otherwise

    return tqdm(total=total, initial=initial, desc=desc, unit="step", file=sys.stderr, dynamic_ncols=True)


def _finite(v: float | None) -> float | None:
    return float(v) if v is not None and math.isfinite(v) else None


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4g}"


def _describe_plan(plan: dict[str, Any]) -> str:
    by = plan.get("by")
    if by == "config":
        return "plan_steps"
    if "step_s" in plan:
        return (f"{plan['step_s']:.3g} s/step and {plan['val_s']:.3g} s/validation measured, "
                f"{plan['time_left_s']:.0f} s left" + ("" if by == "time" else ": the step budget fits"))
    return "the step budget"


# ---------------------------------------------------------------------------------------------- Trainer


@dataclass
class _Run:
    """What one :meth:`Trainer.fit` call works with besides :class:`TrainState` (never checkpointed)."""

    model: nn.Module
    train_ws: WindowSource
    val_ws: WindowSource | None
    ctx: D.DistContext
    device: torch.device
    amp_dtype: torch.dtype | None
    n_train: int
    gbs: int  # global batch size (the configured one, capped at the number of training windows)
    steps_per_epoch: int
    val_idx: np.ndarray | None  # validation windows evaluated after each epoch; None = no validation
    eval_bs: int
    fingerprint: dict[str, Any]  # what a resumed run must share with the checkpoint
    show_bar: bool
    prev_deterministic: bool
    step_plan: int  # the step budget: epochs x steps_per_epoch, capped by max_steps
    # built by Trainer._build
    net: nn.Module = field(init=False)  # ``model``, DDP-wrapped under a process group
    optimizer: torch.optim.Optimizer = field(init=False)
    scheduler: torch.optim.lr_scheduler.LRScheduler = field(init=False)
    scaler: torch.amp.GradScaler = field(init=False)
    scale: torch.Tensor | None = field(init=False)  # per-station loss scale
    converted: bool = False  # BatchNorm converted to a synchronised one (reverted at the end)
    best_state: dict[str, torch.Tensor] | None = None  # weights of the best complete epoch (CPU)
    ema: WeightEMA | None = None  # the weight average validated and returned instead of the raw weights
    partial_best: float | None = None  # val loss of a limit-stopped partial epoch that beat every complete one
    resumed_from: dict[str, int] | None = None
    t_last: float = 0.0  # clock reading last added to ``TrainState.elapsed``
    t_logged: float = 0.0  # clock reading of the last progress log line
    durations: list[float] = field(default_factory=list)  # clock seconds of this process's steps until the plan is
    # fixed (step timing), without the first step and those during which the depthwise op compiled or measured
    all_durations: list[float] = field(default_factory=list)  # the same, every step
    one_time_mark: float = 0.0  # ops.one_time_seconds() at the start of the timed interval
    prov_plan: int | None = None  # the provisional plan while the step time is being measured
    t_step_end: float | None = None  # clock at the end of the last step of this epoch (its validation included)
    ckpt_s: float = 0.0  # seconds the last checkpoint took to write
    last_lr: float | None = None  # the LR of the last optimiser step (what a history entry reports)


class Trainer:
    """Trains a model under a :class:`~urlk_forecast.config.TrainConfig`; see the module docstring.

    ``callback(entry)`` is called on rank 0 with each history entry (after every epoch, complete or partial).
    ``out_dir`` and ``resume`` come from the config. A Trainer may fit several times; each :meth:`fit` starts
    from a fresh :attr:`state` (or the checkpoint's, when resuming).
    """

    #: seconds for the elapsed-time accounting and ``max_time`` (a class attribute so tests can drive a fake clock)
    clock: Callable[[], float] = staticmethod(time.perf_counter)

    def __init__(self, cfg: TrainConfig | None = None, *, callback: Callback | None = None) -> None:
        self.cfg = cfg or TrainConfig()
        self.cfg.validate()
        self.out = Path(self.cfg.out_dir) if self.cfg.out_dir else None
        if self.cfg.resume and self.out is None:
            raise ConfigError("TrainConfig.resume=True needs out_dir (where the checkpoint is)")
        self.callback = callback
        self.state = TrainState()

    # ------------------------------------------------------------------------------------------ public

    def fit(self, model: nn.Module, train_ws: WindowSource, val_ws: WindowSource | None = None) -> TrainResult:
        """Train ``model`` on the windows ``train_ws`` (early stopping on ``val_ws``); returns a :class:`TrainResult`.

        ``out_dir`` (from the config) receives ``checkpoint.pt``, ``best.pt``, ``history.json`` and
        ``train_config.json``; with ``resume`` the run continues from its checkpoint. At the end the model holds
        the weights of the best validation epoch (the last weights without ``val_ws``) and stays on the training
        device.
        """
        run = self._plan(model, train_ws, val_ws)
        self.state = TrainState()
        try:
            seed_everything(self.cfg.seed, self.cfg.deterministic)
            self._build(run)
            self._resume(run)
            self._write_config(run)
            self._plan_without_timing(run)
            self._loop(run)
        finally:
            self._teardown(run)
        return self._result(run)

    # ------------------------------------------------------------------------------------------- setup

    def _plan(self, model: nn.Module, train_ws: WindowSource, val_ws: WindowSource | None) -> _Run:
        """Join the process group, pick the device and size the run (touches neither the model nor the RNG)."""
        cfg = self.cfg
        want_cuda = cfg.device == "auto" and torch.cuda.is_available() or str(cfg.device).startswith("cuda")
        ctx = D.init_from_env(use_cuda=want_cuda, backend=cfg.backend)
        device = resolve_device(cfg.device, ctx)
        prev_deterministic = torch.are_deterministic_algorithms_enabled()
        n_train = len(train_ws)
        if n_train == 0:
            raise ValueError("no training windows (the training split is shorter than seq_len + pred_len?)")
        gbs = min(cfg.batch_size, n_train)
        if gbs < ctx.world_size:
            raise ConfigError(f"global batch size {gbs} is smaller than the number of processes {ctx.world_size}")
        full_steps = n_train // gbs if cfg.drop_last else math.ceil(n_train / gbs)
        steps_per_epoch = min(full_steps, cfg.steps_per_epoch) if cfg.steps_per_epoch else full_steps
        n_val = len(val_ws) if val_ws is not None else 0
        step_plan = cfg.epochs * steps_per_epoch
        if cfg.max_steps is not None:
            step_plan = min(step_plan, cfg.max_steps)
        return _Run(
            model=model, train_ws=train_ws, val_ws=val_ws, ctx=ctx, device=device,
            amp_dtype=resolve_amp(cfg.amp, device), n_train=n_train, gbs=gbs, steps_per_epoch=steps_per_epoch,
            val_idx=evenly_spaced(n_val, cfg.val_windows) if n_val > 0 else None,
            eval_bs=cfg.eval_batch_size or cfg.batch_size,
            fingerprint={"n_train": n_train, "n_val": n_val, "batch_size": gbs, "steps_per_epoch": steps_per_epoch,
                         "seed": cfg.seed, "lr_schedule": cfg.lr_schedule},
            show_bar=ctx.is_main and (cfg.progress if cfg.progress is not None else sys.stderr.isatty()),
            prev_deterministic=prev_deterministic,
            step_plan=step_plan,
        )

    def _build(self, run: _Run) -> None:
        """Loss scale; model on the device (grad checkpointing, sync BatchNorm, DDP); optimiser, scheduler, scaler."""
        cfg, model = self.cfg, run.model
        run.scale = station_scale(run.train_ws).to(run.device) if cfg.loss_norm == "station" else None
        fastpath.tune_allocator(run.device.type)
        if cfg.checkpointing:
            set_grad_checkpointing(model, True)
        model.to(run.device)
        model.train()
        if run.ctx.enabled and cfg.sync_batchnorm:
            D.convert_sync_batchnorm(model, use_cuda=run.device.type == "cuda")
            run.converted = True
        run.net = model
        if run.ctx.enabled:
            run.net = nn.parallel.DistributedDataParallel(
                model,
                device_ids=[run.device.index] if run.device.type == "cuda" else None,
                find_unused_parameters=cfg.find_unused_parameters,
            )
        params = [p for p in model.parameters() if p.requires_grad]
        opt_cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
        run.optimizer = opt_cls(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay,
                                **fastpath.optimizer_options(run.device.type))
        if cfg.lr_schedule == "cosine":  # stepped per optimiser step; the plan is read at every step
            run.scheduler = torch.optim.lr_scheduler.LambdaLR(
                run.optimizer, lambda s: cosine_lr_factor(s, self.state.plan_steps or run.prov_plan or run.step_plan,
                                                          cfg.warmup, cfg.min_lr_ratio))
        else:  # stepped per epoch
            run.scheduler = torch.optim.lr_scheduler.ExponentialLR(run.optimizer, gamma=cfg.lr_decay)
        run.scaler = torch.amp.GradScaler(run.device.type, enabled=run.amp_dtype == torch.float16)
        run.ema = WeightEMA(model, cfg.ema_decay) if cfg.ema_decay is not None else None

    def _resume(self, run: _Run) -> None:
        """With ``cfg.resume``: restore weights, optimiser, scheduler, scaler, state and RNG from the checkpoint."""
        if not self.cfg.resume or self.out is None:
            return
        path = self.out / CHECKPOINT_NAME
        main = run.ctx.is_main
        if not path.is_file():
            if main:
                logger.info("no checkpoint at %s: starting from scratch", path)
            return
        ckpt = load_checkpoint(path)
        _check_fingerprint(ckpt.get("fingerprint", {}), run.fingerprint, path)
        run.model.load_state_dict(ckpt["model"])
        run.optimizer.load_state_dict(ckpt["optimizer"])
        run.scheduler.load_state_dict(ckpt["scheduler"])
        run.scaler.load_state_dict(ckpt["scaler"])
        st = self.state = TrainState(**ckpt["state"])
        st.stopped = None  # a limit that stopped the earlier run is re-checked against this run's config
        run.best_state = ckpt.get("best_state")
        if run.ema is not None:
            if ckpt.get("ema") is None:
                raise ConfigError(f"{path} was written without a weight average (ema_decay=None); resume without it")
            run.ema.load_state_dict(ckpt["ema"])
        rngs = ckpt["rng"]
        _set_rng_state(rngs[run.ctx.rank] if run.ctx.rank < len(rngs) else rngs[0], run.device)
        if len(rngs) != run.ctx.world_size:
            logger.warning("checkpoint written by %d process(es), resuming with %d: dropout RNG streams differ",
                           len(rngs), run.ctx.world_size)
        run.resumed_from = {"epoch": st.epoch, "step_in_epoch": st.step_in_epoch, "global_step": st.global_step}
        if main:
            logger.info("resumed from %s at epoch %d step %d (global step %d)", path, st.epoch + 1,
                        st.step_in_epoch, st.global_step)

    def _write_config(self, run: _Run) -> None:
        if self.out is not None and run.ctx.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            self.cfg.to_json(self.out / CONFIG_NAME)

    def _teardown(self, run: _Run) -> None:
        """Undo what :meth:`_build` and :func:`seed_everything` changed outside the run."""
        if run.converted:
            D.revert_sync_batchnorm(run.model)
            run.converted = False
        if self.cfg.deterministic and not run.prev_deterministic:
            torch.use_deterministic_algorithms(False)

    # -------------------------------------------------------------------------------------------- plan

    def _needs_plan(self) -> bool:
        """Whether anything depends on the planned number of steps (the cosine LR, validations per plan)."""
        cfg = self.cfg
        return cfg.lr_schedule == "cosine" or (cfg.val_per_plan is not None and cfg.val_every is None)

    def _plan_without_timing(self, run: _Run) -> None:
        """Fix the plan now unless it is already fixed (resumed) or must wait for measured step times."""
        st, cfg = self.state, self.cfg
        if st.plan_steps is not None:
            return
        if not self._needs_plan():
            st.val_every = cfg.val_every
            return
        if cfg.plan_steps is not None:
            self._fix_plan(run, cfg.plan_steps, {"by": "config"})
        elif cfg.max_time is None or max(st.global_step, PLAN_AT_STEP) >= run.step_plan:  # nothing to time
            self._fix_plan(run, run.step_plan, {"by": "steps"})
        else:  # until the step time is measured: a provisional plan (_time_plan), epoch-end validations (or val_every)
            st.val_every = cfg.val_every

    def _fix_plan(self, run: _Run, plan: int, info: dict[str, Any]) -> None:
        """Set the plan (and with it the validation interval) once; the LR of the next step follows it."""
        st, cfg = self.state, self.cfg
        st.plan_steps = max(int(plan), 1)
        st.val_every = cfg.val_every if cfg.val_every is not None else \
            val_interval(st.plan_steps, run.steps_per_epoch, cfg.val_per_plan)
        st.plan = {"steps": st.plan_steps, "val_every": st.val_every, **info}
        if cfg.lr_schedule == "cosine":
            sched = run.scheduler
            factor = cosine_lr_factor(sched.last_epoch, st.plan_steps, cfg.warmup, cfg.min_lr_ratio)
            for group, base in zip(run.optimizer.param_groups, sched.base_lrs):
                group["lr"] = base * factor
            sched._last_lr = [g["lr"] for g in run.optimizer.param_groups]  # what get_last_lr() reports
        if run.ctx.is_main:
            logger.info("plan: %d steps (%s)%s, validation %s", st.plan_steps, _describe_plan(st.plan),
                        f", {cfg.lr_schedule} LR" if cfg.lr_schedule == "cosine" else "",
                        f"every {st.val_every} steps and at epoch ends" if st.val_every else "at epoch ends")

    def _time_plan(self, run: _Run) -> bool:
        """While the step time is measured: a provisional plan from the fastest step so far; at
        :data:`PLAN_AT_STEP` time one validation and fix the plan that fits in ``max_time`` (returns True then)."""
        cfg, st = self.cfg, self.state
        # steps after the process's first (torch's own warm-up) without the op's one-time work; else all of them
        times = run.durations or run.all_durations[1:] or run.all_durations
        assert cfg.max_time is not None
        if st.global_step < PLAN_AT_STEP or self._defer_plan(run):
            if len(run.all_durations) > 1:  # ~ an upper bound on the plan: a warm-up no shorter than the final one
                fastest = float(D.all_reduce_max(torch.tensor([min(times)], dtype=torch.float64, device=run.device)))
                run.prov_plan = self._steps_that_fit(run, (cfg.max_time - self._tick(run)) * (1.0 - PLAN_MARGIN),
                                                     fastest, 0.0)
            return False
        step_s = float(np.median(times))
        val_s = self._time_validation(run) if run.val_idx is not None else 0.0
        both = D.all_reduce_max(torch.tensor([step_s, val_s, run.ckpt_s], dtype=torch.float64, device=run.device))
        step_s, val_s, ckpt_s = (float(v) for v in both)
        left = (cfg.max_time - self._tick(run)) * (1.0 - PLAN_MARGIN)
        plan = self._steps_that_fit(run, left, step_s, val_s, ckpt_s)
        self._fix_plan(run, plan, {"by": "time" if plan < run.step_plan else "steps", "step_s": round(step_s, 4),
                                   "val_s": round(val_s, 4), "checkpoint_s": round(ckpt_s, 4),
                                   "time_left_s": round(left, 1)})
        return True

    def _defer_plan(self, run: _Run) -> bool:
        """Whether to time more steps before fixing the plan: fewer than :data:`PLAN_MIN_CLEAN` steps without the op's
        one-time work on some rank, and below the deferral cap (decided by all ranks together)."""
        if self.state.global_step >= PLAN_AT_STEP * PLAN_DEFER_MAX:
            return False
        few = float(len(run.durations) < PLAN_MIN_CLEAN)
        return float(D.all_reduce_max(torch.tensor([few], dtype=torch.float64, device=run.device))) > 0

    def _time_validation(self, run: _Run) -> float:
        """Seconds of one validation; timed a second time when the first compiled kernels for the validation's
        shapes or measured the op's table (on every rank when on one)."""
        val_s = 0.0
        for _ in range(2):
            mark, t0 = ops.one_time_seconds(), self.clock()
            evaluate_loss(run.model, run.val_ws, run.val_idx, run.eval_bs, run.device, run.scale, run.amp_dtype,
                          run.ctx)
            val_s = self.clock() - t0
            again = float(ops.one_time_seconds() != mark)
            if float(D.all_reduce_max(torch.tensor([again], dtype=torch.float64, device=run.device))) == 0:
                break
        return val_s

    def _steps_that_fit(self, run: _Run, left: float, step_s: float, val_s: float, ckpt_s: float = 0.0) -> int:
        """The largest plan (at most the step budget) whose remaining steps, validations and checkpoints (one per
        validation and every ``checkpoint_every`` steps) take ``left`` seconds."""
        g, spe, cfg = self.state.global_step, run.steps_per_epoch, self.cfg
        per_step = step_s + (ckpt_s / cfg.checkpoint_every if cfg.checkpoint_every else 0.0)

        def cost(plan: int) -> float:
            every = cfg.val_every if cfg.val_every is not None else val_interval(plan, spe, cfg.val_per_plan)
            n_val = count_validations(plan, spe, every) - count_validations(g, spe, every)
            return (plan - g) * per_step + n_val * (val_s + ckpt_s)

        lo, hi = g + 1, run.step_plan  # cost(lo) is spent whatever the plan; find the last plan within ``left``
        if hi <= lo or cost(hi) <= left:
            return max(hi, lo)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if cost(mid) <= left else (lo, mid - 1)
        return lo

    # -------------------------------------------------------------------------------------------- loop

    def _loop(self, run: _Run) -> None:
        """Epochs until a stop rule fires; the reason lands in ``state.stopped``."""
        st = self.state
        run.t_last = run.t_logged = self.clock()
        while st.stopped is None:
            st.stopped = self._stop_before_epoch(run)
            if st.stopped is not None:
                break
            reason = self._run_epoch(run)
            if reason is not None:
                self._stop_mid_epoch(run, reason)
                break
            self._end_epoch(run)
            st.stopped = self._limit_hit(run)

    def _stop_before_epoch(self, run: _Run) -> str | None:
        """The epoch-level stop rules: the epoch budget and early stopping."""
        st, cfg = self.state, self.cfg
        if st.epoch >= cfg.epochs:
            return "epochs"
        return self._early_stop(run)

    def _early_stop(self, run: _Run) -> str | None:
        """``"early_stopping"`` after ``patience`` validations in a row without a lower validation loss."""
        if self.cfg.patience and run.val_idx is not None and self.state.bad_epochs >= self.cfg.patience:
            return "early_stopping"
        return None

    def _limit_hit(self, run: _Run) -> str | None:
        """The limits checked before every step: ``max_steps`` and ``max_time`` (agreed by every rank)."""
        cfg = self.cfg
        if cfg.max_steps is not None and self.state.global_step >= cfg.max_steps:
            return "max_steps"
        if cfg.max_time is not None:
            flag = torch.tensor([1.0 if self._tick(run) >= cfg.max_time else 0.0], device=run.device)
            if float(D.all_reduce_max(flag)) > 0:
                return "max_time"
        return None

    def _tick(self, run: _Run) -> float:
        """Add the time since the last tick to ``state.elapsed``; returns it."""
        now = self.clock()
        self.state.elapsed += now - run.t_last
        run.t_last = now
        return self.state.elapsed

    def _run_epoch(self, run: _Run) -> str | None:
        """The remaining steps of the current epoch; returns the limit that interrupted it, if any."""
        st, cfg, ctx = self.state, self.cfg, run.ctx
        perm = epoch_permutation(run.n_train, cfg.seed, st.epoch)
        batches = [perm[k * run.gbs : (k + 1) * run.gbs] for k in range(st.step_in_epoch, run.steps_per_epoch)]
        local = [D.shard(b, ctx.rank, ctx.world_size) for b in batches]
        bar = _progress(run.show_bar, run.steps_per_epoch, st.step_in_epoch, f"epoch {st.epoch + 1}/{cfg.epochs}")
        stop_reason = None
        run.t_step_end = None  # the epoch-end validation and checkpoint are not part of the next step
        self._tick(run)
        try:
            for k, raw in enumerate(_Batches(run.train_ws, local, cfg.prefetch)):
                stop_reason = self._limit_hit(run) or self._early_stop(run)
                if stop_reason:
                    break
                self._step(run, raw, len(batches[k]), bar)
        finally:
            if bar is not None:
                bar.close()
        if stop_reason is None and st.step_in_epoch < run.steps_per_epoch:
            stop_reason = self._limit_hit(run)
        return stop_reason

    def _step(self, run: _Run, raw: dict[str, Any], n_windows: int, bar: Any) -> None:
        """One optimiser step on a global batch of ``n_windows``; bookkeeping, progress, mid-epoch checkpoint."""
        st, cfg = self.state, self.cfg
        t0 = time.perf_counter()
        timing = st.plan_steps is None and self._needs_plan()
        c0 = (run.t_step_end if run.t_step_end is not None else self.clock()) if timing else 0.0
        if timing and run.t_step_end is None:
            run.one_time_mark = ops.one_time_seconds()
        run.last_lr = run.optimizer.param_groups[0]["lr"]
        loss = _train_step(run.net, run.optimizer, run.scaler, _to_device(raw, run.device), run.scale,
                           run.amp_dtype, cfg, run.ctx)
        if run.ema is not None:
            run.ema.update(run.model)
        st.global_step += 1
        st.step_in_epoch += 1
        st.windows_seen += n_windows
        if loss is not None:
            st.step_losses.append(loss)
            st.epoch_loss_sum += loss
            st.epoch_loss_steps += 1
        if timing:
            dt = self.clock() - c0
            run.all_durations.append(dt)
            if len(run.all_durations) > 1 and ops.one_time_seconds() == run.one_time_mark:
                run.durations.append(dt)
        fixed = timing and self._time_plan(run)  # before the scheduler sets the next step's LR from the plan
        if cfg.lr_schedule == "cosine":
            run.scheduler.step()
        wps = n_windows / max(time.perf_counter() - t0, 1e-9)
        self._tick(run)
        self._report_step(run, bar, loss, wps)
        if fixed or (timing and len(run.all_durations) == 1):  # the first checkpoint also times a checkpoint
            self._save_checkpoint(run)
        mid_epoch = st.step_in_epoch < run.steps_per_epoch
        if mid_epoch and st.val_every and run.val_idx is not None and st.step_in_epoch % st.val_every == 0:
            self._validate_and_record(run, at="val_every")
            self._tick(run)
            self._save_checkpoint(run)
            self._write_history(run)
        elif mid_epoch and cfg.checkpoint_every and st.global_step % cfg.checkpoint_every == 0:
            self._save_checkpoint(run)
        run.t_step_end = self.clock() if timing else None
        if timing:
            run.one_time_mark = ops.one_time_seconds()

    def _report_step(self, run: _Run, bar: Any, loss: float | None, wps: float) -> None:
        """Progress: the bar when shown; else on rank 0 a log line every ``log_every`` steps or ``log_every_s`` s."""
        st, cfg = self.state, self.cfg
        if bar is not None:
            bar.update(1)
            bar.set_postfix({"loss": _fmt(loss), "windows/s": f"{wps:.1f}"})
            return
        if not run.ctx.is_main:
            return
        now = self.clock()
        due = bool(cfg.log_every) and st.global_step % cfg.log_every == 0
        if not due and cfg.log_every_s and now - run.t_logged >= cfg.log_every_s:
            due = True
        if due:
            run.t_logged = now
            logger.info("epoch %d step %d/%d (global %d): loss %s, %.1f windows/s", st.epoch + 1,
                        st.step_in_epoch, run.steps_per_epoch, st.global_step, _fmt(loss), wps)

    def _stop_mid_epoch(self, run: _Run, reason: str) -> None:
        """A limit fired: a partial epoch is still evaluated, checkpointed and written to the history."""
        st = self.state
        st.stopped = reason
        if st.step_in_epoch > 0:
            last = st.history[-1] if st.history else {}
            if not (last.get("at") == "val_every" and last["global_step"] == st.global_step):  # not just validated
                self._validate_and_record(run, at="stop")
            self._tick(run)
            self._save_checkpoint(run)
            self._write_history(run)

    def _end_epoch(self, run: _Run) -> None:
        """A complete epoch: validate, advance the position and the LR schedule, checkpoint."""
        st = self.state
        self._validate_and_record(run, at="epoch_end")
        st.epoch += 1
        st.step_in_epoch = 0
        st.epoch_loss_sum, st.epoch_loss_steps = 0.0, 0
        if self.cfg.lr_schedule == "epoch":
            run.scheduler.step()
        self._tick(run)
        self._save_checkpoint(run)
        self._write_history(run)

    # ---------------------------------------------------------------------------------- validate / record

    def _validate_and_record(self, run: _Run, at: str) -> None:
        """Evaluate the validation windows, update the best / early-stopping state, append the history entry.

        ``at``: ``"epoch_end"``, ``"val_every"`` (a scheduled mid-epoch validation) or ``"stop"`` (a limit stopped
        the run mid-epoch; this one never enters the early-stopping state).
        """
        with run.ema.applied(run.model) if run.ema is not None else contextlib.nullcontext():
            val = (evaluate_loss(run.model, run.val_ws, run.val_idx, run.eval_bs, run.device, run.scale,
                                 run.amp_dtype, run.ctx) if run.val_idx is not None else float("nan"))
            self._update_best(run, val, counted=at != "stop")  # the best weights are the evaluated ones
        entry = self._history_entry(run, val, at)
        self.state.history.append(entry)
        if run.ctx.is_main:
            where = {"epoch_end": "", "stop": " (partial)"}.get(at, f" step {entry['steps']}")
            logger.info(
                "epoch %d%s: train %s  val %s  lr %.3g  %.3g windows/s",
                entry["epoch"], where,
                _fmt(entry["train_loss"]), _fmt(entry["val_loss"]), entry["lr"], entry["windows_per_s"] or 0.0,
            )
            if self.callback is not None:
                self.callback(dict(entry))

    def _history_entry(self, run: _Run, val: float, at: str) -> dict[str, Any]:
        st = self.state
        return {
            "epoch": st.epoch + 1,
            "partial": at != "epoch_end",  # the epoch is not complete at this entry
            "at": at,
            "steps": st.step_in_epoch,
            "global_step": st.global_step,
            "train_loss": st.epoch_loss_sum / st.epoch_loss_steps if st.epoch_loss_steps else None,
            "val_loss": _finite(val),
            "lr": run.last_lr if run.last_lr is not None else run.optimizer.param_groups[0]["lr"],
            "elapsed_s": round(st.elapsed, 3),
            "windows_per_s": round(st.windows_seen / st.elapsed, 3) if st.elapsed > 0 else None,
        }

    def _update_best(self, run: _Run, val: float, counted: bool) -> None:
        """Best weights and early stopping follow the scheduled validations (epoch ends, ``val_every``) only.

        A run stopped by a limit mid-epoch returns its current weights if they beat every scheduled validation, but
        they do not enter the early-stopping state, so a later resume continues as if the stop had not happened.
        """
        st = self.state
        improved = math.isfinite(val) and val < st.best_val
        if not counted:
            run.partial_best = val if improved else None
            return
        run.partial_best = None
        if improved:
            st.best_val, st.best_epoch, st.best_step = val, st.epoch + 1, st.global_step
            run.best_state = _cpu_state_dict(run.model)
            if self.out is not None and run.ctx.is_main:
                atomic_torch_save(run.best_state, self.out / BEST_NAME)
        st.bad_epochs = 0 if improved or run.val_idx is None else st.bad_epochs + 1

    def _save_checkpoint(self, run: _Run) -> None:
        """Write ``checkpoint.pt`` (rank 0) with every rank's RNG states (a collective under DDP)."""
        if self.out is None:
            return
        t0 = self.clock()
        rng = _rng_state(run.device)
        rngs = [rng]
        if run.ctx.enabled:
            gathered: list[Any] = [None] * run.ctx.world_size
            torch.distributed.all_gather_object(gathered, rng)
            rngs = gathered
        if not run.ctx.is_main:
            return
        atomic_torch_save(
            {
                "format": _CKPT_FORMAT,
                "version": _CKPT_VERSION,
                "model": run.model.state_dict(),
                "optimizer": run.optimizer.state_dict(),
                "scheduler": run.scheduler.state_dict(),
                "scaler": run.scaler.state_dict(),
                "rng": rngs,
                "state": asdict(self.state),
                "best_state": run.best_state,
                "ema": run.ema.state_dict() if run.ema is not None else None,
                "config": self.cfg.to_dict(),
                "fingerprint": run.fingerprint,
                "world_size": run.ctx.world_size,
            },
            self.out / CHECKPOINT_NAME,
        )
        run.ckpt_s = self.clock() - t0

    def _write_history(self, run: _Run) -> None:
        if self.out is None or not run.ctx.is_main:
            return
        st = self.state
        text = json.dumps({"history": st.history, "step_losses": st.step_losses, "best_val_loss": _finite(st.best_val),
                           "best_epoch": st.best_epoch}, indent=1)
        atomic_write_text(self.out / HISTORY_NAME, text + "\n")

    def _result(self, run: _Run) -> TrainResult:
        """Restore the best weights, write the final history, build and log the :class:`TrainResult`."""
        st = self.state
        best_val, best_epoch, best_step = _finite(st.best_val), st.best_epoch, st.best_step
        if run.partial_best is not None:  # the limit-stopped partial epoch is the best: keep the current weights
            best_val, best_epoch, best_step = run.partial_best, st.epoch + 1, st.global_step
            if run.ema is not None:  # ... which are the average that was evaluated
                run.ema.copy_to(run.model)
        elif run.best_state is not None:
            run.model.load_state_dict(run.best_state)
        self._write_history(run)
        result = TrainResult(
            history=copy.deepcopy(st.history),
            step_losses=list(st.step_losses),
            best_val_loss=best_val,
            best_epoch=best_epoch,
            best_step=best_step,
            epochs_completed=sum(1 for h in st.history if not h["partial"]),
            steps=st.global_step,
            stopped=st.stopped or "epochs",
            elapsed_s=st.elapsed,
            windows_per_s=st.windows_seen / st.elapsed if st.elapsed > 0 else 0.0,
            out_dir=str(self.out) if self.out is not None else None,
            resumed_from=run.resumed_from,
            plan=dict(st.plan) or None,
        )
        if run.ctx.is_main:
            logger.info("training stopped (%s) after %d steps, %.1f s; best val %s (epoch %s)", result.stopped,
                        result.steps, result.elapsed_s, _fmt(result.best_val_loss), result.best_epoch)
        return result
