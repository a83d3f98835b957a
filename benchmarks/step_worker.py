"""Time the default forecaster's training step under whichever ``urlk_forecast`` is importable (issue 15 item 5).

Run by ``benchmarks/forecaster_profile.py --against COMMIT`` in a fresh process, once with the working tree's
package and once with a commit's (``PYTHONPATH`` points at an extracted copy), so that both code paths train the
same default network on the same synthetic windows side by side. It uses only what both sides have: the default
``Forecaster()`` network, ``WindowDataset.batch`` and the trainer's own step function ``_train_step``. Whatever the
trainer of that code sets up before its first step is set up here too: where the package has
``models.fastpath``, the C allocator setting and the fused AdamW of the trainer.

    python benchmarks/step_worker.py --stations 4 --batch 32 --steps 6 --warmup 2 --amp none

Prints one JSON line: the package's path, the autocast dtype used, the seconds of every timed step and their median.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch


def _trainer_setup(net: torch.nn.Module) -> torch.optim.Optimizer:
    """The optimiser and process settings the trainer of the imported package uses on a CPU."""
    options: dict[str, bool] = {}
    try:
        from urlk_forecast.models import fastpath
    except ImportError:  # code from before issue 15 item 5
        pass
    else:
        fastpath.tune_allocator("cpu")
        options = fastpath.optimizer_options("cpu")
    return torch.optim.AdamW(net.parameters(), lr=1e-3, **options)


def _default_amp(net: torch.nn.Module, batch: int) -> torch.dtype | None:
    """The autocast dtype of the imported package's automatic regime for this step: bf16 from its
    ``BF16_MIN_IMAGES`` node images per step on a CPU with native bf16; float32 where the regime has no such rule
    (code from before issue 15 item 4's decision). The rule of ``regime.bf16_pays`` spelled out from its parts,
    because older packages have the parts but not that function."""
    try:
        from urlk_forecast.regime import BF16_MIN_IMAGES, cpu_has_native_bf16
    except ImportError:
        return None
    images = net.grouping.n_nodes * batch  # type: ignore[union-attr]
    return torch.bfloat16 if images >= BF16_MIN_IMAGES and cpu_has_native_bf16() else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stations", type=int, required=True)
    ap.add_argument("--batch", type=int, required=True)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--amp", choices=("none", "bf16", "default"), default="none",
                    help="default: the dtype the package's own automatic regime trains this step with")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    args = ap.parse_args(argv)

    import urlk_forecast
    from urlk_forecast.config import TrainConfig
    from urlk_forecast.data.schema import infer_frequency
    from urlk_forecast.data.synthetic import synthetic_global
    from urlk_forecast.data.windows import WindowDataset
    from urlk_forecast.distributed import DistContext
    from urlk_forecast.forecaster import Forecaster
    from urlk_forecast.trainer import _train_step

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    ds = synthetic_global(stations=args.stations, hours=24 * 60, seed=args.seed, variables=("temperature",))
    fc = Forecaster()
    ws = WindowDataset(ds, fc.variable, fc.seq_len, fc.label_len, fc.pred_len)
    fc.frequency = infer_frequency(ds)
    net = fc.build_net(len(ws.station_ids), None)
    net.train()
    opt = _trainer_setup(net)
    rng = np.random.default_rng(args.seed)
    picks = [rng.choice(len(ws), args.batch, replace=len(ws) < args.batch) for _ in range(args.warmup + args.steps)]
    amp = _default_amp(net, args.batch) if args.amp == "default" else torch.bfloat16 if args.amp == "bf16" else None
    cfg = TrainConfig(grad_clip=5.0)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    ctx = DistContext()
    times = []
    for k, idx in enumerate(picks):
        b = ws.batch(idx)
        t0 = time.perf_counter()
        _train_step(net, opt, scaler, b, None, amp, cfg, ctx)
        if k >= args.warmup:
            times.append(time.perf_counter() - t0)
    out = {"package": urlk_forecast.__file__, "amp": "bf16" if amp else "none",
           "params": sum(p.numel() for p in net.parameters()), "threads": torch.get_num_threads(),
           "steps_s": times, "median_s": statistics.median(times)}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
