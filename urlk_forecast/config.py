"""Configuration dataclasses: the training schedule (:class:`TrainConfig`) and the forecaster defaults.

Both round-trip through JSON (``to_json`` / ``from_json``) so a run directory records exactly how it
was trained, and both reject unknown keys with a message listing the known ones (a typo in a JSON file
or a CLI override must not be silently ignored).

The defaults of :class:`TrainConfig` are the paper's schedule (the Corrformer / Informer script the
paper trains with): Adam, lr 1e-4 halved after every epoch, 10 epochs, early stopping with patience 3
on the validation loss, MSE loss, batch size 32.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from .utils import atomic_write_text, to_jsonable  # atomic_write_text is also re-exported from here (__all__)
from .utils.quantiles import quantile_levels

__all__ = [
    "TrainConfig",
    "ForecasterConfig",
    "FORECASTER_DEFAULTS",
    "FORECASTER_FORMAT",
    "FORECASTER_FORMAT_VERSION",
    "QUICK_TRAIN_DEFAULTS",
    "atomic_write_text",
    "ConfigError",
]

_T = TypeVar("_T", bound="_JsonConfig")

#: Defaults of :class:`urlk_forecast.forecaster.Forecaster` (the paper's script: 48 h in, 24 h out); the source of
#: :class:`ForecasterConfig`'s defaults (a test checks the Forecaster's signature against it).
FORECASTER_DEFAULTS: dict[str, Any] = {
    "model": "unireplknet_a",
    "variable": "temperature",
    "seq_len": 48,
    "label_len": 24,
    "pred_len": 24,
    "max_gap": 3,
}

#: ``format`` / ``version`` of a saved forecaster's ``config.json`` (:meth:`Forecaster.save`).
FORECASTER_FORMAT = "urlk-forecast/forecaster"
FORECASTER_FORMAT_VERSION = 1

#: The synthetic default of ``urlk-forecast train`` (no data file given): the 3850-station set, four months of it,
#: and the training budget that keeps generation + training + the final table to about 10 minutes on a 2-core CPU.
#: The schedule itself is the automatic regime (:func:`urlk_forecast.regime.auto_regime`), sized to this data.
QUICK_TRAIN_DEFAULTS: dict[str, Any] = {
    "stations": 3850,
    "hours": 24 * 120,  # four months of hourly data: 70 % train, 10 % val, 20 % test
    "max_time": 240.0,  # seconds of training (validation included); the 256-window table takes ~5.5 min more
}


class ConfigError(ValueError):
    """A configuration value or key is invalid."""


class _JsonConfig:
    """Mixin: dict / JSON round trip with unknown-key checking for a dataclass."""

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of every field."""
        return to_jsonable(dataclasses.asdict(self))  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[_T], data: Mapping[str, Any], source: str = "config") -> _T:
        """Build from a mapping; unknown keys raise :class:`ConfigError` naming them and ``source``."""
        if not isinstance(data, Mapping):
            raise ConfigError(f"{source}: expected a JSON object, got {type(data).__name__}")
        known = cls.field_names()
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ConfigError(f"{source}: unknown {cls.__name__} key(s) {unknown}; known: {known}")
        return cls(**dict(data))  # type: ignore[call-arg]

    def to_json(self, path: str | os.PathLike[str] | None = None) -> str:
        """The JSON text; also written atomically to ``path`` when given."""
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"
        if path is not None:
            atomic_write_text(path, text)
        return text

    @classmethod
    def from_json(cls: type[_T], path_or_text: str | os.PathLike[str]) -> _T:
        """Load from a JSON file path or a JSON string."""
        text = str(path_or_text)
        source = "JSON text"
        if not text.lstrip().startswith("{"):
            p = Path(path_or_text)
            if not p.is_file():
                raise ConfigError(f"config file {p} does not exist")
            text, source = p.read_text(encoding="utf-8"), str(p)
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{source}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
        return cls.from_dict(data, source=source)

    def replace(self: _T, **overrides: Any) -> _T:
        """A copy with ``overrides`` applied (unknown keys raise :class:`ConfigError`)."""
        merged = {**dataclasses.asdict(self), **overrides}  # type: ignore[call-overload]
        return type(self).from_dict(merged, source="overrides")


_AMP_CHOICES = (False, True, "bf16", "fp16", "auto", "none")
_LOSS_NORMS = ("station", "none")
_OPTIMIZERS = ("adam", "adamw")
_BACKENDS = (None, "gloo", "nccl", "mpi")
_LR_SCHEDULES = ("epoch", "cosine")


def _positive_or_none(v: Any) -> bool:
    return v is None or int(v) >= 1


#: (field, check, what a valid value is) for :meth:`TrainConfig.validate`, checked in this order
_TRAIN_RULES: tuple[tuple[str, Callable[[Any], bool], str], ...] = (
    ("lr", lambda v: v > 0, "must be > 0"),
    ("lr_decay", lambda v: 0 < v <= 1, "must be in (0, 1]"),
    ("lr_schedule", lambda v: v in _LR_SCHEDULES, f"choose one of {list(_LR_SCHEDULES)}"),
    ("warmup", lambda v: 0 <= v < 1, "must be a fraction in [0, 1)"),
    ("min_lr_ratio", lambda v: 0 <= v <= 1, "must be in [0, 1]"),
    ("plan_steps", _positive_or_none, "must be >= 1 or None"),
    ("val_every", _positive_or_none, "must be >= 1 or None"),
    ("val_per_plan", _positive_or_none, "must be >= 1 or None"),
    ("epochs", lambda v: int(v) >= 1, "must be >= 1"),
    ("batch_size", lambda v: int(v) >= 1, "must be >= 1"),
    ("patience", lambda v: int(v) >= 0, "must be >= 0"),
    ("checkpoint_every", lambda v: int(v) >= 0, "must be >= 0"),
    ("log_every", lambda v: int(v) >= 0, "must be >= 0"),
    ("max_steps", _positive_or_none, "must be >= 1 or None"),
    ("steps_per_epoch", _positive_or_none, "must be >= 1 or None"),
    ("val_windows", _positive_or_none, "must be >= 1 or None"),
    ("eval_batch_size", _positive_or_none, "must be >= 1 or None"),
    ("max_time", lambda v: v is None or v > 0, "must be > 0 seconds or None"),
    ("log_every_s", lambda v: v >= 0, "must be >= 0 seconds"),
    ("weight_decay", lambda v: v >= 0, "must be >= 0"),
    ("grad_clip", lambda v: v is None or v > 0, "must be > 0 or None"),
    ("ema_decay", lambda v: v is None or 0 < v < 1, "must be in (0, 1) or None"),
    ("amp", lambda v: v in _AMP_CHOICES, f"choose one of {list(_AMP_CHOICES)}"),
    ("loss_norm", lambda v: v in _LOSS_NORMS, f"choose one of {list(_LOSS_NORMS)}"),
    ("optimizer", lambda v: v in _OPTIMIZERS, f"choose one of {list(_OPTIMIZERS)}"),
    ("betas", lambda v: len(v) == 2, "must be two numbers"),
    ("backend", lambda v: v in _BACKENDS, "choose gloo, nccl, mpi or None"),
)


@dataclass
class TrainConfig(_JsonConfig):
    """Everything :class:`urlk_forecast.trainer.Trainer` needs besides the model and the windows.

    Schedule: ``lr`` for the first epoch, multiplied by ``lr_decay`` after every epoch (the paper's
    "type1" halving, ``lr_schedule="epoch"``), at most ``epochs`` epochs, early stopping after ``patience``
    validations without a lower validation loss (``patience=0`` disables it); the weights of the best validation
    are restored at the end. ``lr_schedule="cosine"`` instead sets the LR per optimiser step: a linear warm-up over
    the first ``warmup`` fraction of the planned steps, then a cosine decay to ``min_lr_ratio * lr`` at the last
    planned step (``plan_steps``; by default the step budget, or with ``max_time`` what the measured step time
    lets fit). Validation runs at every epoch end and, with ``val_every``, every that many steps into an epoch
    (``val_per_plan`` instead spreads that many validations over the plan). :meth:`paper` is the paper's schedule.
    Limits ``max_steps`` (optimiser steps) and ``max_time`` (seconds of training, summed over resumes)
    stop cleanly: the validation loss is still computed and the checkpoint still written. ``out_dir`` and
    ``resume`` are the only way to give the run directory and to continue from its checkpoint.
    """

    lr: float = 1e-4
    epochs: int = 10
    lr_decay: float = 0.5
    lr_schedule: str = "epoch"  # "epoch": lr_decay after each epoch; "cosine": warm-up + cosine per optimiser step
    warmup: float = 0.05  # cosine: linear warm-up over this fraction of the planned steps
    min_lr_ratio: float = 0.01  # cosine: the LR at the last planned step, relative to lr
    #: cosine: planned optimiser steps; None = min(epochs * steps per epoch, max_steps), with max_time further
    #: capped by what fits in the time left at the step time measured over the first steps (fixed once per run)
    plan_steps: int | None = None
    val_every: int | None = None  # also validate every N steps into an epoch (patience then counts validations)
    #: validations spread over the plan (sets the interval ``val_every`` when the plan is fixed; val_every wins)
    val_per_plan: int | None = None
    patience: int = 3
    batch_size: int = 32
    weight_decay: float = 0.0
    optimizer: str = "adam"
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float | None = None  # max global grad norm; None = no clipping
    #: average the weights (exponential moving average with this decay, :mod:`urlk_forecast.ema`): validation,
    #: early stopping and the returned weights use the average; None = the raw weights
    ema_decay: float | None = None
    #: loss normalisation: "station" divides errors by each station's train std (the MSE Corrformer reports,
    #: which standardises the data first); "none" is the MSE in physical units.
    loss_norm: str = "station"
    max_steps: int | None = None
    max_time: float | None = None
    steps_per_epoch: int | None = None  # None = one pass over the (shuffled) training windows
    val_windows: int | None = None  # evenly spaced subset of validation windows per epoch; None = all
    eval_batch_size: int | None = None  # None = batch_size
    drop_last: bool = True
    amp: bool | str = False  # False / "none", True / "auto" (bf16 on CPU, bf16 or fp16 on CUDA), "bf16", "fp16"
    checkpointing: bool = False  # gradient checkpointing (sets with_cp on the model's blocks)
    seed: int = 0
    deterministic: bool = False  # torch.use_deterministic_algorithms
    device: str = "auto"  # "auto" = cuda if available else cpu; under DDP the local rank's device
    checkpoint_every: int = 0  # also write the checkpoint every N optimiser steps (0 = only each epoch)
    progress: bool | None = None  # tqdm bar; None = only when stderr is a terminal
    log_every: int = 10  # steps between log lines when there is no progress bar (0 = none by count)
    log_every_s: float = 30.0  # without a progress bar also log at least every this many seconds (0 = never)
    prefetch: bool = True  # build the next batch in a background thread
    out_dir: str | None = None  # where checkpoint.pt, best.pt, history.json and train_config.json go
    resume: bool = False  # continue from out_dir/checkpoint.pt (needs out_dir)
    sync_batchnorm: bool = True  # under DDP convert BatchNorm to a synchronised BatchNorm (exact equivalence)
    find_unused_parameters: bool = False  # passed to DistributedDataParallel
    backend: str | None = None  # DDP backend; None = nccl on CUDA, gloo on CPU
    extra: dict[str, Any] = field(default_factory=dict)  # free-form metadata kept with the run

    def __post_init__(self) -> None:
        if isinstance(self.betas, list):
            self.betas = tuple(self.betas)  # type: ignore[assignment]
        if isinstance(self.out_dir, os.PathLike):
            self.out_dir = os.fspath(self.out_dir)  # a Path is accepted; the field (and the JSON) holds a str
        self.validate()

    @classmethod
    def paper(cls, **overrides: Any) -> TrainConfig:
        """The paper's schedule (Adam, lr 1e-4 halved per epoch, 10 epochs, batch 32, patience 3): the defaults."""
        return cls(**overrides)

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first invalid field (the rules of ``_TRAIN_RULES``, in order)."""
        for name, ok, why in _TRAIN_RULES:
            if not ok(getattr(self, name)):
                raise ConfigError(f"TrainConfig.{name}={getattr(self, name)!r}: {why}")


@dataclass
class ForecasterConfig(_JsonConfig):
    """What a :class:`~urlk_forecast.forecaster.Forecaster` is built from, and -- once trained -- the rest of what
    :meth:`~urlk_forecast.forecaster.Forecaster.save` writes to ``config.json`` (read back by ``load``).

    Construction: ``model``, ``variable``, ``seq_len``, ``label_len``, ``pred_len``, ``max_gap``, ``model_kw``
    (network options; a saved model also records ``encoder``/``variant`` there). Saved state: ``format``/``version``
    (the file format), ``units`` of the variable, ``net`` (the network's constructor config), ``reparameterized``,
    ``frequency`` (the data time step, e.g. ``"0 days 01:00:00"``), ``n_stations`` and ``train`` (training
    metadata: period, windows, wall time, the TrainConfig, the result). ``quantiles``: the forecast quantile levels
    (None: point forecasts). ``inputs``: the covariates (None: the target only). Several targets: ``variable`` is
    their list and ``units`` a dict per variable. Files written before ``max_gap``, ``quantiles`` or ``inputs`` were
    saved load with their defaults (a ``variable`` string: one target).
    """

    model: str = FORECASTER_DEFAULTS["model"]
    variable: str | list[str] = FORECASTER_DEFAULTS["variable"]  # a list: several targets (one model)
    seq_len: int = FORECASTER_DEFAULTS["seq_len"]
    label_len: int = FORECASTER_DEFAULTS["label_len"]
    pred_len: int = FORECASTER_DEFAULTS["pred_len"]
    max_gap: int = FORECASTER_DEFAULTS["max_gap"]
    quantiles: list[float] | None = None
    inputs: list[str] | None = None
    model_kw: dict[str, Any] = field(default_factory=dict)
    format: str = FORECASTER_FORMAT
    version: int = FORECASTER_FORMAT_VERSION
    units: str | dict[str, str] | None = None  # per target ({variable: units}) for several targets
    net: dict[str, Any] | None = None
    reparameterized: bool = False
    frequency: str | None = None
    n_stations: int | None = None
    train: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("seq_len", "pred_len"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"ForecasterConfig.{name}={getattr(self, name)!r}: must be >= 1")
        if not (0 <= int(self.label_len) <= int(self.seq_len)):
            raise ConfigError(
                f"ForecasterConfig.label_len={self.label_len!r}: must be in [0, seq_len={self.seq_len}]"
            )
        if int(self.max_gap) < 0:
            raise ConfigError(f"ForecasterConfig.max_gap={self.max_gap!r}: must be >= 0")
        if self.quantiles is not None:
            try:
                self.quantiles = list(quantile_levels(self.quantiles, "ForecasterConfig.quantiles") or ())
            except ValueError as e:
                raise ConfigError(str(e)) from None
        if self.format != FORECASTER_FORMAT:
            raise ConfigError(f"ForecasterConfig.format={self.format!r}: not a forecaster config "
                              f"(expected {FORECASTER_FORMAT!r})")
        if int(self.version) > FORECASTER_FORMAT_VERSION:
            raise ConfigError(f"ForecasterConfig.version={self.version!r}: newer than this urlk-forecast supports "
                              f"({FORECASTER_FORMAT_VERSION})")

    def forecaster_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``Forecaster(**kw)`` (the network options of ``model_kw`` included; the
        ``encoder``/``variant`` a saved model records there follow from ``model``)."""
        kw = {k: getattr(self, k) for k in ("model", "variable", "seq_len", "label_len", "pred_len", "max_gap",
                                             "quantiles", "inputs")}
        net_kw = {k: v for k, v in self.model_kw.items() if k not in ("encoder", "variant")}
        return {**kw, **net_kw}
