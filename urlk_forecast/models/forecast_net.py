"""The forecasting network of paper §3.3 (Eq. 2): UniRepLKNet between Corrformer's embedding and decoder.

``ForecastNet(**config)(batch) -> (B, pred_len, S)`` in physical units. Data flow for a batch of windows:

1. RevIN: ``x`` (B, L, S) normalised per window and station by its observed mean/std (``x_mask``), learned
   per-slot affine (:class:`~urlk_forecast.models.embedding.RevIN`).
2. Decoder initialisation (on all stations at once): series decomposition of the normalised input (moving
   average ``moving_avg``, replicate padding); seasonal init = the last ``label_len`` seasonal steps + zeros
   for ``pred_len``; trend init = the last ``label_len`` trend steps + the input mean for ``pred_len``.
3. Grouping ``(B, L, S) → (B·n, L, D')`` into ``n = ceil(S/D')`` nodes of D' consecutive stations.
4. Corrformer embedding of the inputs (encoder) and of the seasonal init (decoder), each with the node's
   coordinates (``coords`` buffer, standardised lat/lon/elevation).
5. Encoder (``encoder=``: ``unireplknet`` any variant/K, ``convnext``, ``resnet``, ``corrformer``; see
   :mod:`urlk_forecast.models.encoders`) → tokens ``(B·n, T, d_model)``; optional fusion of an auxiliary input.
6. Decoder: ``d_layers`` of self multi-correlation (temporal auto-correlation + spatial cross-correlation
   between nodes on the ``node_list`` tree), cross attention to image tokens (or cross multi-correlation to
   Corrformer tokens), FFN, progressive decomposition and trend projection; output seasonal + trend.
7. Ungroup, crop the padded stations, undo RevIN.

Covariates (``n_inputs=K``): ``batch["x_cov"]``/``batch["x_cov_mask"]`` (B, L, S, K), past values of other variables.
Each is normalised per window and station over its observed entries, masked (unobserved entries are exactly 0)
and grouped like the target; with its mask channel it adds 2·D' channels to the encoder's token embedding,
``(B·n, L, D'·(1 + 2K)) → (B·n, L, d_model)``, so the Eq. 2 image keeps its shape. The decoder, the trend and
the skip see the target only (covariates are not known in the future; the calendar features are).

Quantiles (``quantiles=(0.1, 0.5, 0.9)``, sorted levels in (0, 1) with the median): the decoder's seasonal channel plus
the trend (and skip) is the median forecast, as for a point network; a spread head on the decoder's un-decomposed
residual stream (:class:`~urlk_forecast.models.decoder.Decoder` ``spread_channels``) gives one channel per other level
and node station, each a non-negative spread (softplus), and the levels are the median minus/plus cumulative spreads
(:func:`~urlk_forecast.models.quantiles.monotone_quantiles`): they never cross. (The spreads do not come from seasonal
channels: the decomposition's replicate padding halves the last step's own value there and removes smooth growth over
the leads, which collapsed the band at the last lead.) RevIN de-normalises the median as
the point forecast and scales the spreads by the window's std. The output is then ``(B, pred_len, S, Q)`` and the
network's ``quantiles`` attribute (None for a point network) tells the trainer to use the pinball loss.

Several targets (``n_targets=V > 1``; :class:`~urlk_forecast.data.target_windows.TargetWindows`): ``batch["x"]`` and
``x_mask`` are ``(B, L, V·S)``, the targets' stations side by side (target-major), and the output is ``(B, pred_len,
V·S)``. Each target is normalised per window and station by RevIN (its own statistics; the per-slot affine and the
seasonal skip are shared by the targets), enters the encoder like a covariate (its D' masked values and D' masks per
node: ``(B·n, L, D'·(2V + 2K))``, the image unchanged), and has its own D' channels in the decoder's seasonal init,
trend and output projection (``c_out = V·D'``); it is de-normalised with its own statistics. Point forecasts only.

The network never reads ``batch["y"]``. ``config`` holds the (JSON-serialisable) constructor arguments with
defaults resolved; ``ForecastNet(**net.config)`` rebuilds the same architecture (the coordinates are a
persistent buffer, restored by ``load_state_dict``).

Fusion hook (the large-kernel fusion of §3.4, provided by :mod:`urlk_forecast.models.fusion`): with
``fusion={...}`` the net calls ``urlk_forecast.models.fusion.build_forecast_fusion(**fusion, d_model=,
seq_len=, n_nodes=, node_size=, n_stations=)`` and applies the returned module as
``tokens = fusion(tokens, batch)`` to the encoder tokens ``(B·n, T, d_model)`` before the decoder.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from numpy.typing import ArrayLike
from torch import nn

from ..data.windows import TIME_FEATURES, check_time_features
from ..utils import normalize_name, quantile_levels, to_jsonable
from .corrformer import auto_node_list, build_multi_correlation
from .decoder import CrossAttention, Decoder, DecoderLayer, SeriesDecomp
from .embedding import DataEmbedding, NodeGrouping, RevIN, covariate_channels
from .encoders import build_encoder
from .fusion import build_forecast_fusion
from .layers import SeasonalSkip, reparameterize_children
from .quantiles import monotone_quantiles, spreads_from_raw
from .registry import DEFAULT_D_MODEL, variant_key

__all__ = ["ForecastNet", "DEFAULT_D_MODEL", "default_d_model"]

_BATCH_KEYS = ("x", "x_mark", "y_mark")


def default_d_model(variant: str) -> int:
    """Default ``d_model`` for a variant name such as ``"unireplknet_a"`` or ``"s"`` (the registry's
    :data:`~urlk_forecast.models.registry.DEFAULT_D_MODEL`: 768 as in the paper for S and larger, less below)."""
    return DEFAULT_D_MODEL[variant_key(variant)]


def _check_sizes(n_stations: int, node_size: int, seq_len: int, label_len: int, pred_len: int, d_model: int,
                 n_heads: int, dropout: float) -> None:
    if n_stations < 1:
        raise ValueError(f"n_stations must be >= 1, got {n_stations}")
    if node_size < 1:
        raise ValueError(f"node_size must be >= 1, got {node_size}")
    if seq_len < 2 or pred_len < 1 or not 0 <= label_len <= seq_len:
        raise ValueError(f"need seq_len >= 2, pred_len >= 1 and 0 <= label_len <= seq_len; got seq_len={seq_len}, "
                         f"label_len={label_len}, pred_len={pred_len}")
    if d_model % n_heads:
        raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")


def _node_list(node_list: Sequence[int] | None, n_nodes: int, n_stations: int, node_size: int) -> list[int]:
    """The spatial tree (factors of ``n_nodes``): ``node_list`` checked, or the automatic one."""
    out = [int(v) for v in node_list] if node_list is not None else auto_node_list(n_nodes)
    if math.prod(out) != n_nodes:
        raise ValueError(f"node_list {out} multiplies to {math.prod(out)}, but {n_stations} stations "
                         f"in nodes of {node_size} make {n_nodes} nodes")
    return out


def _coords_tensor(coords: ArrayLike | None, n_stations: int) -> torch.Tensor:
    """``(n_stations, 3)`` standardised lat/lon/elevation as float32 (zeros when not given)."""
    if coords is None:
        return torch.zeros(n_stations, 3)
    coords_t = torch.as_tensor(np.asarray(coords, dtype=np.float32))
    if coords_t.shape != (n_stations, 3):
        raise ValueError(f"coords must have shape (n_stations, 3) = ({n_stations}, 3), got {tuple(coords_t.shape)}")
    if not torch.isfinite(coords_t).all():
        raise ValueError("coords contain NaN/inf; standardise lat/lon/elevation and fill unknown "
                         "elevations before building the network")
    return coords_t.clone()


def _input_scale(scale: ArrayLike | None, n_inputs: int) -> torch.Tensor:
    """``(n_inputs,)`` positive float32 covariate scales (ones when not given)."""
    if scale is None:
        return torch.ones(n_inputs)
    t = torch.as_tensor(np.asarray(scale, dtype=np.float32)).reshape(-1)
    if t.shape != (n_inputs,) or not bool(torch.isfinite(t).all()) or bool((t < 0).any()):
        raise ValueError(f"input_scale must be {n_inputs} finite non-negative numbers, got {t.tolist()}")
    return t.clone()


def _check_targets(n_targets: int, quantiles: tuple[float, ...] | None) -> int:
    """``n_targets`` checked: >= 1, and 1 for a quantile network (several targets forecast point values only)."""
    if int(n_targets) != n_targets or int(n_targets) < 1:
        raise ValueError(f"n_targets must be an integer >= 1, got {n_targets!r}")
    if int(n_targets) > 1 and quantiles is not None:
        raise ValueError(f"quantiles are forecast for one target variable; this network has {int(n_targets)} "
                         "targets (train one quantile model per variable)")
    return int(n_targets)


def _enc_channels(n_targets: int, n_inputs: int) -> int:
    """Channels per node slot of the encoder's value embedding: the target's values (one target), or each target's
    masked values and masks (several), then each covariate's masked values and masks."""
    return (1 if n_targets == 1 else 2 * n_targets) + 2 * int(n_inputs)


def _cross_kind(cross: str | None, encoder: nn.Module) -> str:
    """The decoder's cross block: ``cross`` checked, or by default attention over an encoder's spatial (image)
    tokens and multi-correlation over temporal ones."""
    cross = cross or ("attention" if getattr(encoder, "token_kind", "spatial") == "spatial" else "correlation")
    if cross not in ("attention", "correlation"):
        raise ValueError(f"cross must be 'attention' or 'correlation', got {cross!r}")
    return cross


class ForecastNet(nn.Module):
    """UniRepLKNet time-series forecaster (see the module docstring for the data flow and options)."""

    def __init__(
        self,
        n_stations: int,
        coords: ArrayLike | None = None,
        node_size: int = 11,
        seq_len: int = 48,
        label_len: int = 24,
        pred_len: int = 24,
        d_model: int | None = None,
        encoder: str = "unireplknet",
        variant: str = "unireplknet_a",
        kernel_size: int | None = None,
        dropout: float = 0.05,
        moving_avg: int = 25,
        n_heads: int = 8,
        d_ff: int | None = None,
        revin: bool = True,
        with_cp: bool = False,
        fusion: Mapping[str, Any] | None = None,
        d_layers: int = 1,
        node_list: Sequence[int] | None = None,
        spatial: bool = True,
        factor_temporal: float = 1.0,
        factor_spatial: int = 1,
        tcn_layers: int = 1,
        activation: str = "gelu",
        cross: str | None = None,
        skip: str = "none",
        season: int = 24,
        quantiles: Sequence[float] | None = None,
        n_inputs: int = 0, input_scale: ArrayLike | None = None, n_targets: int = 1,
        time_features: Sequence[str] | None = None, **encoder_kw: Any,
    ) -> None:
        super().__init__()
        n_stations, node_size = int(n_stations), int(node_size)
        seq_len, label_len, pred_len = int(seq_len), int(label_len), int(pred_len)
        d_model = int(d_model) if d_model is not None else default_d_model(variant)
        _check_sizes(n_stations, node_size, seq_len, label_len, pred_len, d_model, n_heads, dropout)
        encoder = normalize_name(encoder)
        self.quantiles = quantile_levels(quantiles)  # levels: the output gains a last axis Q; None: point forecasts
        V = self.n_targets = _check_targets(n_targets, self.quantiles)  # V targets side by side along the stations
        self.grouping = NodeGrouping(n_stations, node_size)
        n_nodes = self.grouping.n_nodes
        node_list = _node_list(node_list, n_nodes, n_stations, node_size)
        self.n_stations, self.node_size, self.n_nodes, self.d_model = n_stations, node_size, n_nodes, d_model
        self.seq_len, self.label_len, self.pred_len = seq_len, label_len, pred_len
        self.register_buffer("coords", _coords_tensor(coords, n_stations))
        self.revin = RevIN(node_size) if revin else None
        self.decomp = SeriesDecomp(moving_avg)
        self.enc_embedding = DataEmbedding(node_size, d_model, 4, dropout, n_channels=_enc_channels(V, n_inputs))
        self.dec_embedding = DataEmbedding(node_size, d_model, 4, dropout, n_channels=V)

        corr_kw = dict(factor_temporal=factor_temporal, factor_spatial=factor_spatial, tcn_layers=tcn_layers,
                       dropout=dropout, spatial=spatial)
        enc_kw = dict(encoder_kw) if encoder != "corrformer" else dict(  # Corrformer's encoder: tree + correlation
            encoder_kw, node_list=node_list, factor_temporal=factor_temporal, factor_spatial=factor_spatial,
            tcn_layers=tcn_layers, spatial=spatial, activation=activation)
        self.encoder = build_encoder(encoder, d_model=d_model, seq_len=seq_len, n_nodes=n_nodes, variant=variant,
                                     kernel_size=kernel_size, n_heads=n_heads, d_ff=d_ff, moving_avg=moving_avg,
                                     dropout=dropout, with_cp=with_cp, **enc_kw)
        cross = _cross_kind(cross, self.encoder)
        layers = [self._decoder_layer(cross, n_heads, node_list, corr_kw, d_ff, moving_avg, dropout, activation)
                  for _ in range(int(d_layers))]
        self.decoder = Decoder(layers, d_model, node_size * V, with_cp=with_cp,  # + a spread head per non-median level
                               spread_channels=node_size * (len(self.quantiles) - 1 if self.quantiles else 0))
        self.fusion = None if fusion is None else build_forecast_fusion(
            **dict(fusion), d_model=d_model, seq_len=seq_len, n_nodes=n_nodes, node_size=node_size,
            n_stations=n_stations)
        self.config: dict[str, Any] = to_jsonable(dict(
            n_stations=n_stations, coords=None, node_size=node_size, seq_len=seq_len, label_len=label_len,
            pred_len=pred_len, d_model=d_model, encoder=encoder, variant=variant, kernel_size=kernel_size,
            dropout=dropout, moving_avg=moving_avg, n_heads=n_heads, d_ff=d_ff, revin=revin, with_cp=with_cp,
            fusion=dict(fusion) if fusion is not None else None, d_layers=int(d_layers), node_list=node_list,
            spatial=spatial, factor_temporal=factor_temporal, factor_spatial=factor_spatial, tcn_layers=tcn_layers,
            activation=activation, cross=cross, skip=skip, season=int(season), quantiles=self.quantiles, **encoder_kw,
        ))
        self._init_inputs(int(n_inputs), input_scale)
        self._init_time_features(time_features)
        self.skip = None if skip == "none" else SeasonalSkip(seq_len, pred_len, skip, season)
        self.reparameterized = False

    def _init_time_features(self, names: Sequence[str] | None) -> None:
        """The calendar features the embeddings see (:data:`TIME_FEATURES`; None: all four, the paper's "timeF"):
        the others' columns of ``x_mark``/``y_mark`` are zeroed (a non-persistent mask: the weights' keys do not
        change), so the network cannot key on a feature that the data's span makes meaningless -- a day of the year
        never seen in training, say. Recorded in ``config`` only when not all four (older configs stay valid)."""
        self.time_features = check_time_features(names)
        mask = torch.tensor([float(f in self.time_features) for f in TIME_FEATURES])
        self.register_buffer("time_mask", mask, persistent=False)
        if self.time_features != TIME_FEATURES:
            self.config["time_features"] = list(self.time_features)

    def _marks(self, batch: Mapping[str, torch.Tensor], dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """``x_mark``/``y_mark`` in ``dtype`` with the unused calendar features zeroed."""
        m = self.time_mask.to(dtype)
        return batch["x_mark"].to(dtype) * m, batch["y_mark"].to(dtype) * m

    def _init_inputs(self, n_inputs: int, input_scale: ArrayLike | None) -> None:
        """Covariates: ``n_inputs`` (recorded in ``config`` when > 0) and the ``input_scale`` buffer, each
        covariate's typical scale (its training std), which floors its per-window std at 0.1x."""
        if n_inputs < 0:
            raise ValueError(f"n_inputs must be >= 0, got {n_inputs}")
        self.n_inputs = n_inputs
        if self.n_targets > 1:  # recorded only for several targets (configs of one target stay as they were)
            self.config["n_targets"] = self.n_targets
        if n_inputs:
            self.register_buffer("input_scale", _input_scale(input_scale, n_inputs))
            self.config["n_inputs"] = n_inputs

    def _decoder_layer(self, cross: str, n_heads: int, node_list: list[int], corr_kw: dict[str, Any],
                       d_ff: int | None, moving_avg: int, dropout: float, activation: str) -> DecoderLayer:
        """One decoder layer: self multi-correlation, cross attention (image tokens) or cross multi-correlation."""
        dec_len = self.label_len + self.pred_len
        self_block = build_multi_correlation(self.d_model, n_heads, dec_len, node_list, **corr_kw)
        cross_block = (CrossAttention(self.d_model, n_heads, dropout) if cross == "attention"
                       else build_multi_correlation(self.d_model, n_heads, dec_len, node_list, **corr_kw))
        return DecoderLayer(self_block, cross_block, self.d_model, self.node_size * self.n_targets, d_ff, moving_avg,
                            dropout, activation)

    # ------------------------------------------------------------------------------------------ forward
    def _check_batch(self, batch: Mapping[str, torch.Tensor]) -> None:
        missing = [k for k in _BATCH_KEYS if k not in batch]
        if missing:
            raise ValueError(f"batch is missing {missing}; ForecastNet reads {list(_BATCH_KEYS)} (+ optional x_mask)")
        x, x_mark, y_mark = batch["x"], batch["x_mark"], batch["y_mark"]
        B = x.shape[0]
        width = self.n_stations * self.n_targets
        if x.dim() != 3 or x.shape[1:] != (self.seq_len, width):
            what = f"stations={width}" if self.n_targets == 1 else f"targets x stations={width}"
            raise ValueError(f"batch['x'] must be (batch, seq_len={self.seq_len}, {what}), got {tuple(x.shape)}")
        if x_mark.dim() != 3 or x_mark.shape[:2] != (B, self.seq_len):
            raise ValueError(f"batch['x_mark'] must be ({B}, {self.seq_len}, 4), got {tuple(x_mark.shape)}")
        L = self.label_len + self.pred_len
        if y_mark.dim() != 3 or y_mark.shape[:2] != (B, L):
            raise ValueError(f"batch['y_mark'] must be ({B}, label_len+pred_len={L}, 4), got {tuple(y_mark.shape)}")
        mask = batch.get("x_mask")
        if mask is not None and tuple(mask.shape) != tuple(x.shape):
            raise ValueError(f"batch['x_mask'] must match x {tuple(x.shape)}, got {tuple(mask.shape)}")
        if self.n_inputs:
            want = (B, self.seq_len, self.n_stations, self.n_inputs)
            for k in ("x_cov", "x_cov_mask"):
                if k not in batch or tuple(batch[k].shape) != want:
                    got = tuple(batch[k].shape) if k in batch else "nothing"
                    raise ValueError(f"batch[{k!r}] must be (batch, seq_len, stations, inputs) = {want} for a network "
                                     f"with {self.n_inputs} covariate(s), got {got}")

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Forecast ``(B, pred_len, S)`` in the units of ``batch["x"]`` (never reads ``batch["y"]``); with
        ``quantiles``, ``(B, pred_len, S, Q)`` non-decreasing along Q."""
        self._check_batch(batch)
        if self.n_targets > 1:
            return self._forward_targets(batch)
        g = self.grouping
        dtype = self.coords.dtype
        x = g.pad(batch["x"].to(dtype))
        mask = batch.get("x_mask")
        mask = g.pad(mask) if mask is not None else None
        x_mark, y_mark = self._marks(batch, dtype)

        if self.revin is not None:
            xn, stats = self.revin.normalize(x, mask)
        else:
            finite = torch.isfinite(x)
            xn = torch.where(finite, x, torch.zeros((), dtype=dtype, device=x.device))
            stats = None

        B = xn.shape[0]
        seasonal, trend = self.decomp(xn)
        mean = xn.mean(dim=1, keepdim=True).expand(-1, self.pred_len, -1)
        zeros = xn.new_zeros(B, self.pred_len, xn.shape[-1])
        trend_init = torch.cat([trend[:, xn.shape[1] - self.label_len:], mean], dim=1)
        seasonal_init = torch.cat([seasonal[:, xn.shape[1] - self.label_len:], zeros], dim=1)

        node_coords = g.node_coords(self.coords)
        enc_in = self.enc_embedding(self._encoder_values(xn, batch), x_mark, node_coords)
        tokens = self.encoder(enc_in)
        if self.fusion is not None:
            tokens = self.fusion(tokens, batch)
        dec_in = self.dec_embedding(g.to_nodes(seasonal_init), y_mark, node_coords)
        if self.quantiles is not None:
            return self._quantile_output(*self.decoder.forward_spreads(dec_in, tokens, g.to_nodes(trend_init)),
                                         xn, stats)
        seasonal_part, trend_part = self.decoder(dec_in, tokens, g.to_nodes(trend_init))
        out = g.from_nodes((seasonal_part + trend_part)[:, -self.pred_len:])
        if self.skip is not None:
            out = out + self.skip(xn)
        if self.revin is not None:
            out = self.revin.denormalize(out, stats)
        return g.crop(out)

    def _forward_targets(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """:meth:`forward` of a network with ``n_targets = V > 1``: ``batch["x"]``/``x_mask`` ``(B, L, V·S)``
        (target-major, :class:`~urlk_forecast.data.target_windows.TargetWindows`) → ``(B, pred_len, V·S)``.

        Every target is padded to whole nodes, normalised per window and station by RevIN (its own mean/std, the
        per-slot affine shared by the targets) and decomposed like the single target; a node's decoder channels are
        the targets' D' each, its encoder channels per target the D' masked values and D' masks, then the
        covariates'; each target is de-normalised with its own statistics."""
        g, S, P = self.grouping, self.n_stations, self.pred_len
        dtype = self.coords.dtype

        def padded(t: torch.Tensor) -> torch.Tensor:  # (B, L, V·S) -> (B, L, V·S'), each target padded
            return torch.cat([g.pad(c) for c in t.split(S, dim=-1)], dim=-1)

        def nodes(t: torch.Tensor) -> torch.Tensor:  # (B, L, V·S') -> (B·n, L, V·D'), target-major per node
            return torch.cat([g.to_nodes(c) for c in t.split(g.n_padded, dim=-1)], dim=-1)

        x = padded(batch["x"].to(dtype))
        mask = batch.get("x_mask")
        mask = padded(mask.bool()) & torch.isfinite(x) if mask is not None else torch.isfinite(x)
        if self.revin is not None:
            xn, stats = self.revin.normalize(x, mask)
        else:
            xn, stats = torch.where(torch.isfinite(x), x, torch.zeros((), dtype=dtype, device=x.device)), None
        seasonal, trend = self.decomp(xn)
        mean = xn.mean(dim=1, keepdim=True).expand(-1, P, -1)
        L0 = xn.shape[1] - self.label_len
        trend_init = torch.cat([trend[:, L0:], mean], dim=1)
        seasonal_init = torch.cat([seasonal[:, L0:], xn.new_zeros(xn.shape[0], P, xn.shape[-1])], dim=1)

        node_coords = g.node_coords(self.coords)
        x_mark, y_mark = self._marks(batch, dtype)
        m = mask.to(dtype)
        per_target = [nodes(c) for pair in zip((xn * m).split(g.n_padded, -1), m.split(g.n_padded, -1)) for c in pair]
        enc_values = torch.cat([torch.cat(per_target, dim=-1), *self._covariate_nodes(batch, dtype)], dim=-1)
        tokens = self.encoder(self.enc_embedding(enc_values, x_mark, node_coords))
        if self.fusion is not None:
            tokens = self.fusion(tokens, batch)
        dec_in = self.dec_embedding(nodes(seasonal_init), y_mark, node_coords)
        seasonal_part, trend_part = self.decoder(dec_in, tokens, nodes(trend_init))
        out = torch.cat([g.from_nodes(c) for c in (seasonal_part + trend_part)[:, -P:].split(self.node_size, -1)],
                        dim=-1)
        if self.skip is not None:
            out = out + self.skip(xn)
        if self.revin is not None:
            out = self.revin.denormalize(out, stats)
        return torch.cat([g.crop(c) for c in out.split(g.n_padded, dim=-1)], dim=-1)

    def _covariate_nodes(self, batch: Mapping[str, torch.Tensor], dtype: torch.dtype) -> list[torch.Tensor]:
        """Per covariate its masked normalised values and its masks as node series ``(B·n, L, D')`` each (none
        without covariates); see :func:`covariate_channels`."""
        if not self.n_inputs:
            return []
        g = self.grouping
        ch = covariate_channels(batch["x_cov"].to(dtype), batch["x_cov_mask"], 0.1 * self.input_scale).flatten(3)
        return [g.to_nodes(g.pad(ch[..., j])) for j in range(ch.shape[-1])]

    def _encoder_values(self, xn: torch.Tensor, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The encoder's node series ``(B·n, L, D'·(1 + 2K))``: the normalised target's D' channels, then per
        covariate its D' masked normalised values and its D' masks (see :func:`covariate_channels`)."""
        g = self.grouping
        nodes = g.to_nodes(xn)
        if not self.n_inputs:
            return nodes
        ch = covariate_channels(batch["x_cov"].to(xn.dtype), batch["x_cov_mask"], 0.1 * self.input_scale)
        ch = ch.flatten(3)  # (B, L, S, 2K): covariate 0 value, covariate 0 mask, covariate 1 value, ...
        return torch.cat([nodes, *(g.to_nodes(g.pad(ch[..., j])) for j in range(ch.shape[-1]))], dim=-1)

    def _quantile_output(self, seasonal: torch.Tensor, trend: torch.Tensor, raw_spreads: torch.Tensor,
                         xn: torch.Tensor, stats: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        """``(B, pred_len, S, Q)`` from the decoder's seasonal channels and trend ``(B·n, L, D')`` (their sum, plus
        the skip, is the median) and its spread head ``(B·n, L, (Q-1)·D')`` (level-major, the levels other than the
        median): see the module docstring; both de-normalised by RevIN."""
        assert self.quantiles is not None
        g, P = self.grouping, self.pred_len
        m = self.quantiles.index(0.5)
        median = g.from_nodes(seasonal[:, -P:] + trend[:, -P:])
        if self.skip is not None:
            median = median + self.skip(xn)
        others = [g.from_nodes(p) for p in raw_spreads[:, -P:].split(self.node_size, dim=-1)]
        spreads = (spreads_from_raw(torch.stack(others, dim=-1)) if others
                   else median.new_zeros(median.shape + (0,)))
        if self.revin is not None:
            assert stats is not None
            median = self.revin.denormalize(median, stats)
            spreads = self.revin.denormalize_spread(spreads, stats)
        S = self.n_stations
        return monotone_quantiles(median[..., :S], spreads[..., :S, :], m)

    def _load_from_state_dict(self, state_dict: Mapping[str, Any], prefix: str, *args: Any) -> None:
        """Refuse, with a clear message, the weights of a quantile network whose spreads came from the decoder's
        seasonal channels (before the spread head; their band collapsed at the last lead): they cannot be mapped."""
        if self.quantiles is not None and f"{prefix}decoder.projection.weight" in state_dict and \
                f"{prefix}decoder.spread_projection.weight" not in state_dict:
            raise ValueError("these quantile weights predate the decoder's spread head (their spreads came from the "
                             "seasonal channels, whose band collapses at the last lead); retrain the model")
        super()._load_from_state_dict(state_dict, prefix, *args)

    # ----------------------------------------------------------------------------------------- helpers
    def reparameterize(self) -> ForecastNet:
        """Convert the network to its inference form in place (identical outputs in eval mode): every part that
        has a ``reparameterize()`` (the encoder's blocks, BatchNorms folded) through
        :func:`~urlk_forecast.models.layers.reparameterize_model`."""
        reparameterize_children(self)
        self.reparameterized = True
        return self

    def num_parameters(self) -> int:
        """Number of parameters (trainable or not)."""
        return sum(p.numel() for p in self.parameters())

    def extra_repr(self) -> str:
        c = self.config
        return (f"stations={self.n_stations}, nodes={self.n_nodes}x{self.node_size}, encoder={c['encoder']}"
                f"({c['variant']}), d_model={self.d_model}, seq/label/pred={self.seq_len}/{self.label_len}/"
                f"{self.pred_len}" + (f", quantiles={list(self.quantiles)}" if self.quantiles is not None else "")
                + (f", inputs={self.n_inputs}" if self.n_inputs else "")
                + (f", targets={self.n_targets}" if self.n_targets > 1 else ""))
