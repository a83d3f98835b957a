"""The automatic training regime: a :class:`~urlk_forecast.config.TrainConfig` sized to the data it trains on.

:func:`auto_regime` looks at the training and validation windows, the stations per window and the device, and
chooses batch size, epochs, learning rate and schedule, validation and time budget, with a human-readable reason for
each choice (docs/training.md, "The automatic regime"). Whatever the caller gives explicitly wins over the choice.

* **Batch.** A window of S stations is ``ceil(S / node_size)`` node images through the encoder; the batch aims at
  ~32 images per optimiser step (``round(32 / images per window)`` windows, 1 to 64): batch 1 for the 3850-station
  synthetic set (350 images per window), batch 32 for a couple of stations.
* **Epochs** are real passes over the training windows, up to a cap; the time budget or early stopping ends the
  run earlier.
* **LR.** Adam at 2e-3 from :data:`LR_MIN_IMAGES` node images per step (the encoder's batch), 1e-3 below, a 5 %
  linear warm-up and a cosine decay to 1 % over the planned steps, which the trainer fits to the time budget from
  the step time it measures. At 3850 stations (one window = 350 images) 2e-3 reached validation loss 0.573 in the
  240-s synthetic default against 0.658 at 1e-3 (docs/training.md).
* **Validation** on enough evenly spaced windows to rank checkpoints (~2048 node images, 4 to 256 windows), about
  10 times over the plan and at every epoch end; early stopping after 4 validations without improvement, the best
  validation's weights restored at the end.
* **Budget.** 600 s of training on a CPU; none on a GPU.
* **Weight average.** An exponential moving average of the weights (:mod:`urlk_forecast.ema`) is what validation
  ranks and what the run returns.
* **Precision.** bf16 autocast on a CPU with native bf16 (AVX512_BF16 or AMX) when a step holds at least
  :data:`BF16_MIN_IMAGES` node images (>= 1.3x per step there, with the same skill on the real-data suite:
  docs/benchmarks.md); float32 otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from .config import TrainConfig
from .utils import to_jsonable

__all__ = ["Regime", "auto_regime", "cpu_has_native_bf16", "bf16_pays", "BF16_MIN_IMAGES", "CPU_MAX_TIME",
           "IMAGES_PER_STEP", "LR_MIN_IMAGES", "VAL_IMAGES"]

#: node images per optimiser step the batch size aims at
IMAGES_PER_STEP = 32
#: node images of the validation set (enough windows to rank checkpoints)
VAL_IMAGES = 2048
#: seconds of training on a CPU (no limit on a GPU)
CPU_MAX_TIME = 600.0
EPOCH_CAP = 100
VALIDATIONS_PER_PLAN = 10
PATIENCE = 4
GRAD_CLIP = 5.0
#: weight average (EMA) decay; its warm-up (1 + n) / (10 + n) keeps it to about the last 11 % of the steps of runs
#: shorter than ~1800 steps (chosen on validation windows of the real suite, docs/training.md)
EMA_DECAY = 0.995
WARMUP = 0.05
#: node images per optimiser step from which the regime's lr is 2e-3 (1e-3 below)
LR_MIN_IMAGES = 8
#: node images per step from which bf16 autocast pays on a CPU with native bf16 (the >= 1.3x rule of issue 15).
#: float32 / bf16 step time on the 2-core CPU (AMD Zen 5), 2026-12-07 session 13, after float32 Linear layers moved
#: to oneDNN (models/linear_function.py): 1.00x at 8 images, 1.14x at 16, 1.05-1.14x at 32, 1.17-1.28x at 64,
#: 1.21-1.29x at 128, 1.18x at 256, 1.25-1.59x (median 1.37x) at 350 (3850 stations x 1 window). Session 12
#: measured 1.37-1.50x at 32-64 before that change and took 32; bf16's best validation loss on the real-data suite
#: was unchanged within noise (docs/benchmarks.md)
BF16_MIN_IMAGES = 350
MIN_LR_RATIO = 0.01

# given values that need no reason line (where the run goes, how it shows progress)
_NOT_SHOWN = frozenset({"out_dir", "resume", "progress", "log_every", "log_every_s", "extra", "prefetch"})



@dataclass
class Regime:
    """A training regime: ``settings`` (TrainConfig fields), the ``reasons`` for them, the ``given`` values."""

    settings: dict[str, Any]
    reasons: list[str]
    given: dict[str, Any] = field(default_factory=dict)  # explicit values, already part of ``settings``

    def config(self, **extra: Any) -> TrainConfig:
        """The :class:`TrainConfig` of the regime (``extra``: fields outside the regime, e.g. ``out_dir``)."""
        return TrainConfig(**{**self.settings, **extra})

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable record: what was chosen, what was given, and why."""
        return {"schedule": "auto", "settings": to_jsonable(dict(self.settings)), "given": sorted(self.given),
                "reasons": list(self.reasons)}

    def describe(self) -> str:
        """The reasons, one per line."""
        return "\n".join(self.reasons)


def bf16_pays(images_per_step: int) -> bool:
    """Whether the regime trains a CPU step of ``images_per_step`` node images in bf16 autocast: at least
    :data:`BF16_MIN_IMAGES` on a CPU with native bf16."""
    return images_per_step >= BF16_MIN_IMAGES and cpu_has_native_bf16()


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512_BF16 or AMX tiles); without it bf16 is emulated and slower."""
    probes = (getattr(torch.cpu, "_is_avx512_bf16_supported", None), getattr(torch.cpu, "_is_amx_tile_supported", None))
    for probe in probes:
        try:
            if probe is not None and probe():
                return True
        except (RuntimeError, AttributeError):  # a torch build without the probe's backend
            continue
    return False


def _resolve_device(device: str) -> str:
    name = str(device)
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def auto_regime(
    n_train_windows: int,
    n_val_windows: int,
    n_stations: int,
    node_size: int,
    device: str = "auto",
    max_time: float | str | None = "auto",
    given: Mapping[str, Any] | None = None,
) -> Regime:
    """The regime for ``n_train_windows`` training and ``n_val_windows`` validation windows of ``n_stations``
    stations in nodes of ``node_size``, on ``device`` (``auto``: CUDA when available).

    ``max_time``: the training budget in seconds (``"auto"``: :data:`CPU_MAX_TIME` on a CPU, None on CUDA). ``given``:
    TrainConfig values chosen by the caller; they win, and the choices derived from them follow them (an explicit
    batch size sets the learning rate chosen for it).
    """
    if n_train_windows < 1:
        raise ValueError(f"n_train_windows={n_train_windows}: no training window to size a regime for")
    if n_stations < 1 or node_size < 1:
        raise ValueError(f"n_stations={n_stations}, node_size={node_size}: both must be >= 1")
    given = dict(given or {})
    unknown = sorted(set(given) - set(TrainConfig.field_names()))
    if unknown:
        TrainConfig.from_dict(given, source="given")  # raises ConfigError naming the unknown keys
    dev = _resolve_device(given.get("device", device))
    images = math.ceil(n_stations / node_size)
    chooser = _Chooser(given)
    batch = chooser.batch(images, n_stations, node_size, n_train_windows)
    chooser.epochs(n_train_windows, batch)
    chooser.lr(batch, images)
    chooser.validation(images, n_val_windows)
    chooser.budget(dev, max_time)
    chooser.precision(dev, images * batch)
    chooser.set("grad_clip", GRAD_CLIP, f"gradient norm clipped at {GRAD_CLIP:g}: caps the rare exploding window")
    chooser.set("ema_decay", EMA_DECAY, f"weights averaged (EMA, decay {EMA_DECAY:g} after a warm-up): validation, "
                                        "early stopping and the returned model use the average")
    chooser.set("device", dev, f"device {dev}")
    chooser.rest()
    return Regime(settings=chooser.settings, reasons=chooser.reasons, given=given)


class _Chooser:
    """Collects settings and reasons; a given value replaces the choice and says so."""

    def __init__(self, given: dict[str, Any]) -> None:
        self.given = given
        self.settings: dict[str, Any] = {}
        self.reasons: list[str] = []

    def set(self, key: str, value: Any, why: str) -> Any:
        """Choose ``value`` for ``key`` because ``why``, unless it was given; returns the value in effect."""
        if key in self.given:
            self.settings[key] = self.given[key]
            if self.given[key] != value:
                self.reasons.append(f"{key} {self.given[key]!r}: given (auto: {value!r})")
            else:
                self.reasons.append(why + " (also given)")
            return self.given[key]
        self.settings[key] = value
        self.reasons.append(why)
        return value

    def quiet(self, key: str, value: Any) -> Any:
        """Choose ``value`` for ``key`` without a reason line of its own; a given value wins."""
        self.settings[key] = self.given.get(key, value)
        return self.settings[key]

    def batch(self, images: int, n_stations: int, node_size: int, n_train: int) -> int:
        b = min(max(round(IMAGES_PER_STEP / images), 1), 64)
        capped = min(b, n_train)
        why = (f"batch {capped}: {images} node image{'s' if images != 1 else ''} per window ({n_stations} station"
               f"{'s' if n_stations != 1 else ''} in nodes of {node_size}), aiming at ~{IMAGES_PER_STEP} images per "
               "step" + (f"; capped at the {n_train} training windows" if capped < b else ""))
        return int(self.set("batch_size", capped, why))

    def epochs(self, n_train: int, batch: int) -> None:
        steps = max(n_train // max(min(batch, n_train), 1), 1)
        self.quiet("steps_per_epoch", None)
        self.set("epochs", EPOCH_CAP, f"epochs {EPOCH_CAP}: a cap; an epoch is a full pass over the {n_train} "
                                      f"training windows ({steps} steps); the time budget or early stopping end the "
                                      "run earlier")

    def lr(self, batch: int, images: int) -> None:
        lr = 2e-3 if batch * images >= LR_MIN_IMAGES else 1e-3
        self.set("lr", lr, f"lr {lr:g} (2e-3 from {LR_MIN_IMAGES} node images per step, 1e-3 below; "
                           f"{batch * images} here) with a {WARMUP:.0%} linear warm-up and a "
                           f"cosine decay to {MIN_LR_RATIO:g} x lr at the last planned step; the plan is sized to the "
                           "time budget from the step time measured on the first steps")
        self.quiet("lr_schedule", "cosine")
        self.quiet("warmup", WARMUP)
        self.quiet("min_lr_ratio", MIN_LR_RATIO)

    def validation(self, images: int, n_val: int) -> None:
        if n_val < 1:
            self.reasons.append("no validation windows: no early stopping, the last weights are kept")
            return
        vw = min(max(math.ceil(VAL_IMAGES / images), 4), 256, n_val)
        self.set("val_windows", vw, f"validation on {vw} of {n_val} windows, evenly spaced (~{vw * images} node "
                                    f"images, aiming at ~{VAL_IMAGES}: enough to rank checkpoints)")
        self.quiet("val_per_plan", VALIDATIONS_PER_PLAN)
        every = self.given.get("val_every")
        when = f"every {every} steps into an epoch" if every else f"about {VALIDATIONS_PER_PLAN} times over the plan"
        self.set("patience", PATIENCE, f"validation {when} and at every epoch end; early stopping after {PATIENCE} "
                                       "validations without improvement; the best validation's weights are "
                                       "restored at the end")

    def precision(self, device: str, images_per_step: int) -> None:
        if device != "cpu" or not bf16_pays(images_per_step):
            self.quiet("amp", False)
            return
        self.set("amp", "bf16", f"bf16 autocast: {images_per_step} node images per step on a CPU with native bf16 "
                                f"(>= {BF16_MIN_IMAGES}: measured >= 1.3x faster per step at equal validation skill)")

    def rest(self) -> None:
        """The given values no choice covered (``max_steps``, ``seed``, ``out_dir``, ...), with one reason line."""
        rest = {k: v for k, v in self.given.items() if k not in self.settings}
        self.settings.update(rest)
        shown = {k: v for k, v in rest.items() if k not in _NOT_SHOWN}
        if shown:
            self.reasons.append("given: " + ", ".join(f"{k}={v!r}" for k, v in shown.items()))

    def budget(self, device: str, max_time: float | str | None) -> None:
        default = max_time == "auto"
        if default:
            max_time = CPU_MAX_TIME if not device.startswith("cuda") else None
        why = (f"max_time {max_time:g} s of training{' (the CPU default)' if default else ''}: the plan fills it "
               "unless validation converges first" if max_time is not None
               else f"no time limit on {device}: the epoch cap and early stopping end the run")
        self.set("max_time", max_time, why)
