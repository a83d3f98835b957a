"""The one table of UniRepLKNet variants and the one parser of model names.

Every place that lists variants (the backbone factory, the comparison encoders, the forecasting network's default
``d_model``, the :class:`~urlk_forecast.Forecaster` model names, the command line) reads this module. It imports
nothing from urlk_forecast but :mod:`urlk_forecast.utils` and no torch, so any module may import it cheaply and
without an import cycle.

Names are normalised once (:func:`urlk_forecast.utils.normalize_name`): ``"UniRepLKNet-S"``, ``"unireplknet_s"``
and ``"s"`` are the same variant.
"""

from __future__ import annotations

from urlk_forecast.utils import normalize_name

__all__ = [
    "VARIANTS",
    "DEFAULT_D_MODEL",
    "ENCODERS",
    "PREFIX",
    "DEFAULT_VARIANT",
    "list_models",
    "variant_keys",
    "canonical_variant",
    "variant_key",
    "variant_config",
    "parse_model_name",
]

PREFIX = "unireplknet_"

# short name: (stage depths, stage widths, forecasting d_model). The d_model is the paper's 768 for S and larger
# (48·768 = 192²); smaller for the small variants so the Eq. 2 images (one per node: 350 per window at 3850
# stations) stay affordable on a CPU: 48·128 → 64×96 (a, f), 48·256 → 96×128 (p, n), 48·512 → 128×192 (t).
# Measured on the 2-core CPU, one 3850-station window costs about 3× more forward+backward at 256 than at 128
# (docs/forecasting.md).
_TABLE: dict[str, tuple[tuple[int, ...], tuple[int, ...], int]] = {
    "a": ((2, 2, 6, 2), (40, 80, 160, 320), 128),
    "f": ((2, 2, 6, 2), (48, 96, 192, 384), 128),
    "p": ((2, 2, 6, 2), (64, 128, 256, 512), 256),
    "n": ((2, 2, 8, 2), (80, 160, 320, 640), 256),
    "t": ((3, 3, 18, 3), (80, 160, 320, 640), 512),
    "s": ((3, 3, 27, 3), (96, 192, 384, 768), 768),
    "b": ((3, 3, 27, 3), (128, 256, 512, 1024), 768),
    "l": ((3, 3, 27, 3), (192, 384, 768, 1536), 768),
    "xl": ((3, 3, 27, 3), (256, 512, 1024, 2048), 768),
    "h": ((3, 3, 27, 3), (480, 960, 1920, 3840), 768),
}

#: UniRepLKNet variants (smallest first): ``{"unireplknet_a": {"depths": ..., "dims": ...}, ...}``
VARIANTS: dict[str, dict[str, tuple[int, ...]]] = {
    PREFIX + key: {"depths": depths, "dims": dims} for key, (depths, dims, _) in _TABLE.items()
}

#: default forecasting ``d_model`` per short variant name (``"a"`` … ``"h"``)
DEFAULT_D_MODEL: dict[str, int] = {key: d_model for key, (_, _, d_model) in _TABLE.items()}

#: encoders of the forecasting network (``ForecastNet(encoder=...)``, model names ``"<encoder>[_<variant>]"``)
ENCODERS: tuple[str, ...] = ("unireplknet", "convnext", "resnet", "corrformer")

#: the variant an encoder name without a suffix takes its widths and depths from
DEFAULT_VARIANT = PREFIX + "a"


def list_models() -> list[str]:
    """Registered variant names, smallest first."""
    return list(VARIANTS)


def variant_keys() -> tuple[str, ...]:
    """Short variant names (``"a"``, ``"f"``, …, ``"h"``), smallest first."""
    return tuple(_TABLE)


def _lookup(name: object) -> str | None:
    key = normalize_name(name)
    if key in VARIANTS:
        return key
    if PREFIX + key in VARIANTS:
        return PREFIX + key
    return None


def canonical_variant(name: object) -> str:
    """``"unireplknet_<v>"`` for a variant name (``"UniRepLKNet-S"``, ``"s"``); ValueError naming the choices."""
    found = _lookup(name)
    if found is None:
        raise ValueError(f"unknown UniRepLKNet variant {name!r}; available: {', '.join(VARIANTS)}")
    return found


def variant_key(name: object) -> str:
    """The short name (``"s"``) of a variant name (``"unireplknet_s"``, ``"S"``)."""
    return canonical_variant(name).removeprefix(PREFIX)


def variant_config(name: object) -> dict[str, tuple[int, ...]]:
    """``{"depths": ..., "dims": ...}`` of a variant (a fresh dict, safe to update)."""
    return dict(VARIANTS[canonical_variant(name)])


def parse_model_name(model: str) -> tuple[str, str]:
    """Model name → ``(encoder, variant)``: ``"unireplknet_s"`` → ``("unireplknet", "unireplknet_s")``,
    ``"s"`` → ``("unireplknet", "unireplknet_s")``, ``"convnext"`` → ``("convnext", "unireplknet_a")``,
    ``"resnet_s"`` → ``("resnet", "unireplknet_s")``."""
    key = normalize_name(model)
    if key in _TABLE:
        return "unireplknet", PREFIX + key
    for enc in ENCODERS:
        if key == enc:
            return enc, DEFAULT_VARIANT
        suffix = key[len(enc) + 1:]
        if key.startswith(enc + "_") and suffix in _TABLE:
            return enc, PREFIX + suffix
    names = [*VARIANTS, *(f"{enc}[_v]" for enc in ENCODERS[1:])]
    raise ValueError(f"unknown model {model!r}; available: {', '.join(names)}")
