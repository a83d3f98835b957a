"""Loading released and own UniRepLKNet checkpoints: strict key/shape checks with readable reports, wrapped state
dicts (``model`` / ``state_dict`` / DDP ``module.`` prefixes), and a training-form checkpoint loaded into a deploy-form
model through a re-parameterized twin."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from urlk_forecast.models.layers import reparameterize_model

__all__ = ["CheckpointError", "LoadReport", "load_pretrained"]


class CheckpointError(ValueError):
    """A checkpoint does not match the model (missing/unexpected keys or shape mismatches)."""


@dataclass
class LoadReport:
    """What :func:`load_pretrained` loaded and what did not match."""

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    source: str = ""

    @property
    def ok(self) -> bool:
        """True when every key matched in name and shape."""
        return not (self.missing or self.unexpected or self.mismatched)

    def __str__(self) -> str:
        lines = [f"checkpoint {self.source}: {len(self.loaded)} tensors match the model"]
        if self.missing:
            lines.append(f"  missing in checkpoint ({len(self.missing)}): {_abbrev(self.missing)}")
        if self.unexpected:
            lines.append(f"  unexpected in checkpoint ({len(self.unexpected)}): {_abbrev(self.unexpected)}")
        if self.mismatched:
            shown = ", ".join(f"{k}: model {list(a)} vs checkpoint {list(b)}" for k, a, b in self.mismatched[:8])
            more = f" ... (+{len(self.mismatched) - 8})" if len(self.mismatched) > 8 else ""
            lines.append(f"  shape mismatches ({len(self.mismatched)}): {shown}{more}")
        lines.extend(f"  hint: {h}" for h in self.hints())
        return "\n".join(lines)

    def hints(self) -> list[str]:
        """Likely causes of the mismatch."""
        hints = []
        train_marks = ("origin_bn", "dil_conv_", "pwconv2.2.", ".norm.running_mean", ".gamma", "act.1.beta")

        def has_train(keys: list[str]) -> bool:
            return any(m in k for k in keys for m in train_marks if "stages." in k)

        if has_train(self.missing) and not has_train(self.unexpected):
            hints.append("the checkpoint looks re-parameterized (deploy form): build the model with deploy=True "
                         "or call reparameterize_model(model) before loading")
        if has_train(self.unexpected) and not has_train(self.missing):
            hints.append("the checkpoint is in training form: build the model with deploy=False, load it, then "
                         "call reparameterize_model(model)")
        if any(k.startswith("head.") for k, _, _ in self.mismatched) or any(
            k.startswith(("head.", "norm.")) for k in self.unexpected
        ):
            hints.append("the classification head differs (num_classes / out_indices): pass strict=False to load "
                         "the backbone only")
        return hints


def _abbrev(keys: list[str], n: int = 16) -> str:
    """Group keys by module pattern (stage/block indices as ``*``) with counts.

    E.g. ``stages.*.*.norm.{weight,bias,running_mean,running_var,num_batches_tracked} (x12)``.
    """
    groups: dict[str, dict[str, int]] = {}
    for k in keys:
        parts = k.split(".")
        module = ".".join("*" if p.isdigit() and i < 3 else p for i, p in enumerate(parts[:-1]))
        names = groups.setdefault(module, {})
        names[parts[-1]] = names.get(parts[-1], 0) + 1
    items = []
    for module, names in groups.items():
        count = max(names.values())
        leaf = next(iter(names)) if len(names) == 1 else "{" + ",".join(names) + "}"
        key = f"{module}.{leaf}" if module else leaf
        items.append(key if count == 1 else f"{key} (x{count})")
    return ", ".join(items[:n]) + (f" ... (+{len(items) - n} more)" if len(items) > n else "")


def _unwrap_state_dict(obj: Any, source: str) -> dict[str, torch.Tensor]:
    for _ in range(3):
        if isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
            for key in ("model", "state_dict", "model_ema"):
                if isinstance(obj.get(key), dict):
                    obj = obj[key]
                    break
            else:
                break
        elif isinstance(obj, dict) and isinstance(obj.get("model"), dict):
            obj = obj["model"]
        elif isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
            obj = obj["state_dict"]
        else:
            break
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"{source}: no state dict found (expected a dict of tensors, optionally under "
                              f"'model' or 'state_dict'), got {type(obj).__name__}")
    state = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise CheckpointError(f"{source}: the state dict holds no tensors (keys: {_abbrev(list(obj))})")
    for prefix in ("module.", "_orig_mod."):
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def load_pretrained(
    model: nn.Module,
    path: str | os.PathLike[str] | dict[str, Any],
    strict: bool = True,
    map_location: str | torch.device = "cpu",
) -> LoadReport:
    """Load a (released or own) UniRepLKNet checkpoint into ``model``.

    ``path`` is a ``.pth`` file or an in-memory dict: a raw state dict, or one wrapped under ``model`` /
    ``state_dict``; a ``module.`` (DataParallel) or ``_orig_mod.`` (torch.compile) prefix is stripped. With
    ``strict=True`` any missing/unexpected key or shape mismatch raises :class:`CheckpointError` listing them all
    (nothing is loaded); with ``strict=False`` the matching tensors are loaded and the report says what was not.
    A training-form checkpoint (e.g. a released one) given to a ``deploy=True`` UniRepLKNet is loaded into a
    training-form twin, re-parameterized and copied over.
    """
    if isinstance(path, dict):
        source, obj = "<in-memory state dict>", path
    else:
        source = os.fspath(path)
        if not os.path.isfile(source):
            raise FileNotFoundError(f"checkpoint not found: {source}")
        try:
            obj = torch.load(source, map_location=map_location, weights_only=True)
        except Exception as exc:  # noqa: BLE001 - re-raised with the file name
            raise CheckpointError(f"{source}: cannot read checkpoint ({exc})") from exc
    state = _unwrap_state_dict(obj, source)
    own = model.state_dict()
    report = LoadReport(source=source)
    report.missing = [k for k in own if k not in state]
    report.unexpected = [k for k in state if k not in own]
    for k, v in state.items():
        if k in own:
            if tuple(own[k].shape) != tuple(v.shape):
                report.mismatched.append((k, tuple(own[k].shape), tuple(v.shape)))
            else:
                report.loaded.append(k)
    if not report.ok and _is_training_form_for(model, state):
        return _load_training_into_deploy(model, state, source, strict)
    if strict and not report.ok:
        raise CheckpointError(f"checkpoint does not match the model (strict=True):\n{report}")
    model.load_state_dict({k: state[k] for k in report.loaded}, strict=False)
    return report


def _is_training_form_for(model: nn.Module, state: dict[str, torch.Tensor]) -> bool:
    """True if ``model`` is a deploy-form UniRepLKNet and ``state`` is a training-form state dict.

    A deploy-form UniRepLKNet is recognised by what the twin needs, ``deploy`` and the constructor arguments
    ``config`` (duck typing keeps this module free of an import of the architecture, which imports it).
    """
    if getattr(model, "deploy", False) is not True or not isinstance(getattr(model, "config", None), dict):
        return False
    if not any(k.startswith("stages.") and k.endswith(".pwconv2.2.running_mean") for k in state):
        return False
    return not any(k.endswith("origin_bn.weight") for k in model.state_dict())


def _load_training_into_deploy(
    model: nn.Module, state: dict[str, torch.Tensor], source: str, strict: bool
) -> LoadReport:
    """Load a training-form checkpoint into a deploy-form model: load a training twin, reparameterize, copy."""
    param = next(model.parameters())
    with torch.device(param.device):
        twin = type(model)(**{**model.config, "deploy": False, "with_cp": False})
    twin = twin.to(param.dtype)
    report = load_pretrained(twin, state, strict=strict)
    report.source = f"{source} (training form, re-parameterized into the deploy model)"
    reparameterize_model(twin.eval())
    model.load_state_dict(twin.state_dict(), strict=True)
    return report
