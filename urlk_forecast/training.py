"""The training loop: the paper's schedule, masked loss, AMP, checkpoint/resume, DDP.

:func:`train` optimises any ``nn.Module`` whose ``forward(batch)`` maps a window batch (the dict of
:meth:`urlk_forecast.data.windows.WindowDataset.batch`) to ``(B, pred_len, S)`` forecasts in physical
units. Design points (see docs/training.md):

* **Loss.** Masked MSE against ``batch["y"][:, -pred_len:]`` over the entries where ``y_mask`` is True
  (missing targets never count). With ``loss_norm="station"`` (default) each station's error is divided
  by that station's standard deviation over the training windows: the MSE in standardised units that
  Corrformer (and the paper) report, while the network keeps predicting physical units. The per-window
  statistics are the network's own business (RevIN inside it).
* **Data order.** Epoch ``e`` visits the windows in ``default_rng([seed, e]).permutation(n)``; global
  batch ``k`` is the slice ``[k*B, (k+1)*B)``, split contiguously across DDP ranks. A checkpoint stores
  ``(epoch, step)``, so a resumed run replays exactly the same batches, and with the RNG states restored
  it reaches the same weights as an uninterrupted run.
* **Checkpoints** (``out_dir/checkpoint.pt``) are written atomically at the end of every epoch, every
  ``checkpoint_every`` steps and when a limit stops the run; they hold model, optimiser, scheduler, AMP
  scaler, every rank's RNG states, position, early-stopping state, best weights and history.
* **DDP.** Under ``torchrun`` the process group is joined automatically; BatchNorm becomes a
  synchronised BatchNorm (``sync_batchnorm``), and each rank's loss is scaled by the *global* count of
  observed targets, so N processes follow the single-process trajectory with the same global batch.
  Only rank 0 writes files and shows progress.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import random
import sys
import tempfile
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
from .config import ConfigError, TrainConfig, atomic_write_text

__all__ = [
    "TrainResult",
    "train",
    "seed_everything",
    "epoch_permutation",
    "station_scale",
    "masked_sq_error",
    "evaluate_loss",
    "resolve_device",
    "resolve_amp",
    "set_grad_checkpointing",
    "load_checkpoint",
    "CHECKPOINT_NAME",
]

logger = logging.getLogger("urlk_forecast.training")

CHECKPOINT_NAME = "checkpoint.pt"
BEST_NAME = "best.pt"
HISTORY_NAME = "history.json"
_CKPT_FORMAT = "urlk-forecast/train-checkpoint"
_CKPT_VERSION = 1


@dataclass
class TrainResult:
    """What :func:`train` returns; ``history`` has one dict per (possibly partial) epoch."""

    history: list[dict[str, Any]] = field(default_factory=list)
    step_losses: list[float] = field(default_factory=list)
    best_val_loss: float | None = None
    best_epoch: int | None = None
    epochs_completed: int = 0
    steps: int = 0
    stopped: str = "epochs"  # epochs | early_stopping | max_steps | max_time
    elapsed_s: float = 0.0
    windows_per_s: float = 0.0
    out_dir: str | None = None
    resumed_from: dict[str, int] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable copy."""
        return asdict(self)


@dataclass
class _State:
    epoch: int = 0  # current (0-based) epoch
    step_in_epoch: int = 0  # optimiser steps already done in the current epoch
    global_step: int = 0
    best_val: float = math.inf
    best_epoch: int | None = None
    bad_epochs: int = 0
    elapsed: float = 0.0  # seconds of training, summed over resumes
    windows_seen: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    step_losses: list[float] = field(default_factory=list)
    epoch_loss_sum: float = 0.0  # running sums of the current epoch (for the mean train loss)
    epoch_loss_steps: int = 0
    stopped: str | None = None


# --------------------------------------------------------------------------------------------- helpers


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


def station_scale(ws: Any, batch_windows: int = 16, floor: float = 1e-3) -> torch.Tensor:
    """Per-station standard deviation (ddof 1) of the observed training values of ``ws`` (float32, ``(S,)``).

    Uses the dataset's raw observations (``ws.values`` where ``ws.observed``, interpolated and missing
    entries excluded) when the window dataset exposes them; otherwise scans windows ``0, seq_len,
    2*seq_len, ...`` through ``ws.batch`` (entries with ``x_mask`` True). Stations with fewer than two
    observations get the median std; every std is floored at ``floor``.
    """
    n = len(ws)
    if n == 0:
        raise ValueError("the training windows are empty: no data to fit the loss scale")
    s1 = s2 = cnt = None

    def add(x: torch.Tensor, m: torch.Tensor) -> None:
        nonlocal s1, s2, cnt
        m = m & torch.isfinite(x)
        x = torch.where(m, x, torch.zeros((), dtype=x.dtype))
        dims = tuple(range(x.dim() - 1))
        a1, a2, c = x.sum(dims), (x * x).sum(dims), m.sum(dims).double()
        s1, s2, cnt = (a1, a2, c) if s1 is None else (s1 + a1, s2 + a2, cnt + c)

    values, observed = getattr(ws, "values", None), getattr(ws, "observed", None)
    if isinstance(values, np.ndarray) and isinstance(observed, np.ndarray) and values.shape == observed.shape:
        for lo in range(0, values.shape[0], 4096):
            add(torch.from_numpy(values[lo : lo + 4096].astype(np.float64)), torch.from_numpy(observed[lo : lo + 4096]))
    else:
        seq_len = int(ws.batch(np.array([0]))["x"].shape[1])
        starts = np.arange(0, n, seq_len)
        for i in range(0, len(starts), batch_windows):
            b = ws.batch(starts[i : i + batch_windows])
            x = b["x"].double()
            add(x, b["x_mask"].bool() if "x_mask" in b else torch.isfinite(x))
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
    ws: Any,
    indices: Sequence[int] | np.ndarray,
    batch_size: int,
    device: torch.device,
    scale: torch.Tensor | None = None,
    amp_dtype: torch.dtype | None = None,
    ctx: D.DistContext | None = None,
) -> float:
    """Masked (scaled) MSE pooled over the observed targets of the windows ``indices`` (eval mode).

    Under DDP each rank evaluates its share and the sums are all-reduced, so every rank gets the same value.
    """
    ctx = ctx or D.DistContext()
    idx = D.shard(np.asarray(indices, dtype=np.int64), ctx.rank, ctx.world_size)
    was_training = model.training
    model.eval()
    sq = torch.zeros((), dtype=torch.float64, device=device)
    cnt = torch.zeros((), dtype=torch.float64, device=device)
    try:
        for lo in range(0, len(idx), batch_size):
            batch = _to_device(ws.batch(idx[lo : lo + batch_size]), device)
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                pred = model(batch)
            y, mask = _targets(batch, pred.shape[1])
            s, c = masked_sq_error(pred, y, mask, scale)
            sq += s.double()
            cnt += c
    finally:
        model.train(was_training)
    both = D.all_reduce_sum(torch.stack([sq, cnt]))
    return float(both[0] / both[1]) if float(both[1]) > 0 else float("nan")


def _evenly_spaced(n: int, k: int | None) -> np.ndarray:
    if k is None or k >= n:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, k).round().astype(np.int64))


class _Batches:
    """Yields ``ws.batch(idx)`` for a list of index arrays, building the next one in a background thread."""

    def __init__(self, ws: Any, index_lists: list[np.ndarray], prefetch: bool) -> None:
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


# ------------------------------------------------------------------------------------------ checkpoints


def _atomic_torch_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


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


# ------------------------------------------------------------------------------------------------ train


def train(
    model: nn.Module,
    train_ws: Any,
    val_ws: Any | None = None,
    cfg: TrainConfig | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    resume: bool = False,
    *,
    callback: Callable[[dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Train ``model`` on the windows ``train_ws`` (early stopping on ``val_ws``); returns a :class:`TrainResult`.

    ``cfg`` defaults to the paper's schedule. ``out_dir`` (or ``cfg.out_dir``) receives ``checkpoint.pt``,
    ``best.pt`` and ``history.json``; ``resume=True`` (or ``cfg.resume``) continues from its checkpoint.
    At the end the model holds the weights of the best validation epoch (the last weights without
    ``val_ws``) and stays on the training device. ``callback(event)`` is called on rank 0 after each
    epoch with the history entry.
    """
    cfg = cfg or TrainConfig()
    cfg.validate()
    out = Path(out_dir) if out_dir is not None else (Path(cfg.out_dir) if cfg.out_dir else None)
    resume = bool(resume or cfg.resume)
    if resume and out is None:
        raise ConfigError("resume=True needs out_dir (where the checkpoint is)")

    want_cuda = cfg.device == "auto" and torch.cuda.is_available() or str(cfg.device).startswith("cuda")
    ctx = D.init_from_env(use_cuda=want_cuda, backend=cfg.backend)
    device = resolve_device(cfg.device, ctx)
    main = ctx.is_main
    prev_deterministic = torch.are_deterministic_algorithms_enabled()
    seed_everything(cfg.seed, cfg.deterministic)

    n_train = len(train_ws)
    gbs = cfg.batch_size
    if n_train == 0:
        raise ValueError("no training windows (the training split is shorter than seq_len + pred_len?)")
    if n_train < gbs:
        gbs = n_train
    if gbs < ctx.world_size:
        raise ConfigError(f"global batch size {gbs} is smaller than the number of processes {ctx.world_size}")
    full_steps = n_train // gbs if cfg.drop_last else math.ceil(n_train / gbs)
    steps_per_epoch = min(full_steps, cfg.steps_per_epoch) if cfg.steps_per_epoch else full_steps
    val_idx = _evenly_spaced(len(val_ws), cfg.val_windows) if val_ws is not None and len(val_ws) > 0 else None
    eval_bs = cfg.eval_batch_size or cfg.batch_size

    if cfg.checkpointing:
        set_grad_checkpointing(model, True)
    model.to(device)
    model.train()
    converted = False
    if ctx.enabled and cfg.sync_batchnorm:
        D.convert_sync_batchnorm(model, use_cuda=device.type == "cuda")
        converted = True
    net: nn.Module = model
    if ctx.enabled:
        net = nn.parallel.DistributedDataParallel(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=cfg.find_unused_parameters,
        )

    params = [p for p in model.parameters() if p.requires_grad]
    opt_cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    optimizer = opt_cls(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=cfg.lr_decay)
    amp_dtype = resolve_amp(cfg.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    scale = station_scale(train_ws).to(device) if cfg.loss_norm == "station" else None

    st = _State()
    best_state: dict[str, torch.Tensor] | None = None
    fingerprint = {"n_train": n_train, "n_val": len(val_ws) if val_ws is not None else 0,
                   "batch_size": gbs, "steps_per_epoch": steps_per_epoch, "seed": cfg.seed}
    resumed_from = None
    ckpt_path = out / CHECKPOINT_NAME if out is not None else None
    if resume:
        assert ckpt_path is not None
        if ckpt_path.is_file():
            ckpt = load_checkpoint(ckpt_path)
            _check_fingerprint(ckpt.get("fingerprint", {}), fingerprint, ckpt_path)
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
            scaler.load_state_dict(ckpt["scaler"])
            st = _State(**ckpt["state"])
            st.stopped = None  # a limit that stopped the earlier run is re-checked against this run's config
            best_state = ckpt.get("best_state")
            rngs = ckpt["rng"]
            _set_rng_state(rngs[ctx.rank] if ctx.rank < len(rngs) else rngs[0], device)
            if len(rngs) != ctx.world_size:
                logger.warning("checkpoint written by %d process(es), resuming with %d: dropout RNG streams differ",
                               len(rngs), ctx.world_size)
            resumed_from = {"epoch": st.epoch, "step_in_epoch": st.step_in_epoch, "global_step": st.global_step}
            if main:
                logger.info("resumed from %s at epoch %d step %d (global step %d)", ckpt_path, st.epoch + 1,
                            st.step_in_epoch, st.global_step)
        elif main:
            logger.info("no checkpoint at %s: starting from scratch", ckpt_path)
    if out is not None and main:
        out.mkdir(parents=True, exist_ok=True)
        cfg.to_json(out / "train_config.json")

    def save_checkpoint() -> None:
        if out is None:
            return
        rng = _rng_state(device)
        rngs = [rng]
        if ctx.enabled:
            gathered: list[Any] = [None] * ctx.world_size
            torch.distributed.all_gather_object(gathered, rng)
            rngs = gathered
        if not main:
            return
        _atomic_torch_save(
            {
                "format": _CKPT_FORMAT,
                "version": _CKPT_VERSION,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(),
                "rng": rngs,
                "state": asdict(st),
                "best_state": best_state,
                "config": cfg.to_dict(),
                "fingerprint": fingerprint,
                "world_size": ctx.world_size,
            },
            out / CHECKPOINT_NAME,
        )

    def write_history() -> None:
        if out is not None and main:
            import json

            atomic_write_text(out / HISTORY_NAME, json.dumps({"history": st.history, "step_losses": st.step_losses,
                                                                "best_val_loss": _finite(st.best_val),
                                                                "best_epoch": st.best_epoch}, indent=1) + "\n")

    partial_best: float | None = None

    def validate_and_record(partial: bool) -> None:
        nonlocal best_state
        val = (evaluate_loss(model, val_ws, val_idx, eval_bs, device, scale, amp_dtype, ctx)
               if val_idx is not None else float("nan"))
        entry = {
            "epoch": st.epoch + 1,
            "partial": partial,
            "steps": st.step_in_epoch,
            "global_step": st.global_step,
            "train_loss": st.epoch_loss_sum / st.epoch_loss_steps if st.epoch_loss_steps else None,
            "val_loss": _finite(val),
            "lr": optimizer.param_groups[0]["lr"],
            "elapsed_s": round(st.elapsed, 3),
            "windows_per_s": round(st.windows_seen / st.elapsed, 3) if st.elapsed > 0 else None,
        }
        improved = math.isfinite(val) and val < st.best_val
        if partial:
            # a run stopped by a limit mid-epoch: the current weights are returned if they beat every complete
            # epoch, but they do not enter the early-stopping state, so a later resume continues as if the stop
            # had not happened
            nonlocal partial_best
            partial_best = val if improved else None
        else:
            if improved:
                st.best_val, st.best_epoch = val, st.epoch + 1
                best_state = _cpu_state_dict(model)
                if out is not None and main:
                    _atomic_torch_save(best_state, out / BEST_NAME)
            st.bad_epochs = 0 if improved or val_idx is None else st.bad_epochs + 1
        st.history.append(entry)
        if main:
            logger.info(
                "epoch %d%s: train %s  val %s  lr %.3g  %.3g windows/s",
                entry["epoch"], " (partial)" if partial else "",
                _fmt(entry["train_loss"]), _fmt(entry["val_loss"]), entry["lr"], entry["windows_per_s"] or 0.0,
            )
            if callback is not None:
                callback(dict(entry))

    show_bar = main and (cfg.progress if cfg.progress is not None else sys.stderr.isatty())
    t_last = time.perf_counter()

    def tick() -> float:
        nonlocal t_last
        now = time.perf_counter()
        st.elapsed += now - t_last
        t_last = now
        return st.elapsed

    def limit_hit() -> str | None:
        if cfg.max_steps is not None and st.global_step >= cfg.max_steps:
            return "max_steps"
        if cfg.max_time is not None:
            flag = torch.tensor([1.0 if tick() >= cfg.max_time else 0.0], device=device)
            if float(D.all_reduce_max(flag)) > 0:
                return "max_time"
        return None

    try:
        while st.stopped is None:
            if st.epoch >= cfg.epochs:
                st.stopped = "epochs"
                break
            if cfg.patience and val_idx is not None and st.bad_epochs >= cfg.patience:
                st.stopped = "early_stopping"
                break
            perm = epoch_permutation(n_train, cfg.seed, st.epoch)
            batches = [perm[k * gbs : (k + 1) * gbs] for k in range(st.step_in_epoch, steps_per_epoch)]
            local = [D.shard(b, ctx.rank, ctx.world_size) for b in batches]
            bar = _progress(show_bar, steps_per_epoch, st.step_in_epoch, f"epoch {st.epoch + 1}/{cfg.epochs}")
            stop_reason = None
            tick()
            for k, raw in enumerate(_Batches(train_ws, local, cfg.prefetch)):
                stop_reason = limit_hit()
                if stop_reason:
                    break
                t0 = time.perf_counter()
                loss = _train_step(net, optimizer, scaler, _to_device(raw, device), scale, amp_dtype, cfg, ctx)
                st.global_step += 1
                st.step_in_epoch += 1
                st.windows_seen += len(batches[k])
                if loss is not None:
                    st.step_losses.append(loss)
                    st.epoch_loss_sum += loss
                    st.epoch_loss_steps += 1
                wps = len(batches[k]) / max(time.perf_counter() - t0, 1e-9)
                tick()
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix({"loss": _fmt(loss), "windows/s": f"{wps:.1f}"})
                elif main and cfg.log_every and st.global_step % cfg.log_every == 0:
                    logger.info("epoch %d step %d/%d (global %d): loss %s, %.1f windows/s", st.epoch + 1,
                                st.step_in_epoch, steps_per_epoch, st.global_step, _fmt(loss), wps)
                if cfg.checkpoint_every and st.global_step % cfg.checkpoint_every == 0 \
                        and st.step_in_epoch < steps_per_epoch:
                    save_checkpoint()
            if bar is not None:
                bar.close()
            if stop_reason is None and st.step_in_epoch < steps_per_epoch:
                stop_reason = limit_hit()
            if stop_reason is not None:
                st.stopped = stop_reason
                if st.step_in_epoch > 0:  # a partial epoch: still evaluate and save
                    validate_and_record(partial=True)
                    tick()
                    save_checkpoint()
                    write_history()
                break
            validate_and_record(partial=False)
            st.epoch += 1
            st.step_in_epoch = 0
            st.epoch_loss_sum, st.epoch_loss_steps = 0.0, 0
            scheduler.step()
            tick()
            save_checkpoint()
            write_history()
            if cfg.max_steps is not None and st.global_step >= cfg.max_steps:
                st.stopped = "max_steps"
            if cfg.max_time is not None and limit_hit() == "max_time":
                st.stopped = "max_time"
    finally:
        if converted:
            D.revert_sync_batchnorm(model)
        if cfg.deterministic and not prev_deterministic:
            torch.use_deterministic_algorithms(False)

    best_val, best_epoch = _finite(st.best_val), st.best_epoch
    if partial_best is not None:  # the limit-stopped partial epoch is the best: keep the current weights
        best_val, best_epoch = partial_best, st.epoch + 1
    elif best_state is not None:
        model.load_state_dict(best_state)
    write_history()
    result = TrainResult(
        history=copy.deepcopy(st.history),
        step_losses=list(st.step_losses),
        best_val_loss=best_val,
        best_epoch=best_epoch,
        epochs_completed=sum(1 for h in st.history if not h["partial"]),
        steps=st.global_step,
        stopped=st.stopped or "epochs",
        elapsed_s=st.elapsed,
        windows_per_s=st.windows_seen / st.elapsed if st.elapsed > 0 else 0.0,
        out_dir=str(out) if out is not None else None,
        resumed_from=resumed_from,
    )
    if main:
        logger.info("training stopped (%s) after %d steps, %.1f s; best val %s (epoch %s)", result.stopped,
                    result.steps, result.elapsed_s, _fmt(result.best_val_loss), result.best_epoch)
    return result


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
    sq, cnt = masked_sq_error(pred, y, mask, scale)
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
        nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], cfg.grad_clip)
    scaler.step(optimizer)
    scaler.update()
    return global_loss


def _check_fingerprint(old: dict[str, Any], new: dict[str, Any], path: Path) -> None:
    diff = {k: (old.get(k), v) for k, v in new.items() if k in old and old[k] != v}
    if diff:
        what = ", ".join(f"{k}: checkpoint {a} vs now {b}" for k, (a, b) in diff.items())
        raise ConfigError(f"cannot resume from {path}: the run differs ({what})")


def _progress(show: bool, total: int, initial: int, desc: str) -> Any:
    if not show:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="step", file=sys.stderr, dynamic_ncols=True)


def _finite(v: float | None) -> float | None:
    return float(v) if v is not None and math.isfinite(v) else None


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4g}"
