#!/usr/bin/env bash
# GPU check of the own depthwise-conv CUDA kernels (urlk_forecast/ops/cuda_kernels.py), one command for a GPU machine:
#   1. environment: GPU, torch, numba.cuda interop on torch's stream
#   2. ahead-of-time compilation of every kernel the tests and the benchmark need (parallel, numba disk cache)
#   3. the GPU tests:  pytest -m gpu tests/test_ops_cuda*.py
#   4. launch overhead of one call (own fast path, numba's launch path, F.conv2d)
#   5. (mode "sweep") blocking sweep of the forward and grad-weight kernels at R=32
#   6. the benchmark (seed's Table 1 protocol): a stack of 24 depthwise layers, input (B, 384, R, R), B=64,
#      K in {3,5,7,9,13,17,21,27,29,31}, R in {16,32,64}, fp32 and fp16, forward and forward+backward,
#      median of repeats after warm-up (CUDA events), own kernels vs torch's F.conv2d (cuDNN / native depthwise).
#
# Usage:  bash benchmarks/gpu_check.sh [full|quick|bench|tests|sweep|STAGE,STAGE,...]   (default full = 1-4 and 6)
#         quick: full at R=32 only; bench: 1, 2, 6; tests: 1-3; sweep: 1, 5;
#         stages: env, precompile, tests, overhead, sweep, bench
# Env:    OUT (results folder, default ./gpu_check_out), BENCH_R, BENCH_K, BENCH_DTYPES, BENCH_B, BENCH_MODES
# Needs:  torch with CUDA, numba + numba-cuda, pytest + hypothesis (not netCDF4: only the ops are imported).
set -u
MODE=${1:-full}
OUT=${OUT:-gpu_check_out}
mkdir -p "$OUT"
export PYTHONPATH="$(pwd)${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
export URLK_CUDA_CACHE=${URLK_CUDA_CACHE:-/tmp/urlk_cuda_cache}
PY=${PYTHON:-python3}
T0=$(date +%s)
stage() { echo; echo "=== [$(( $(date +%s) - T0 ))s] $*"; }

BENCH=$(mktemp /tmp/urlk_gpu_bench.XXXXXX.py)
trap 'rm -f "$BENCH"' EXIT
cat > "$BENCH" <<'PYEOF'
"""Helpers run by benchmarks/gpu_check.sh: env check, precompile, launch overhead, sweep, benchmark."""
import json
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from urlk_forecast.ops import cuda_kernels as ck

KS = [int(k) for k in os.environ.get("BENCH_K", "3,5,7,9,13,17,21,27,29,31").split(",")]
RS = [int(r) for r in os.environ.get("BENCH_R", "32,16,64").split(",")]
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
DTS = os.environ.get("BENCH_DTYPES", "fp32,fp16").split(",")
B = int(os.environ.get("BENCH_B", "64"))
C = 384
LAYERS = 24
MODES = os.environ.get("BENCH_MODES", "fwd,fwdbwd").split(",")
OUT = os.environ.get("OUT", "gpu_check_out")


class OwnDW(torch.autograd.Function):
    """Depthwise conv through the own kernels (the dispatcher does the same for CUDA tensors)."""

    @staticmethod
    def forward(ctx, x, w, pad, dil):
        ctx.save_for_backward(x, w)
        ctx.pad, ctx.dil = pad, dil
        return ck.forward(x, w, None, pad, dil)

    @staticmethod
    def backward(ctx, gy):
        x, w = ctx.saved_tensors
        gx = ck.grad_input(gy, w, ctx.pad, ctx.dil, x.shape[-2:]) if ctx.needs_input_grad[0] else None
        gw = ck.grad_weight(x, gy, w.shape[-2:], ctx.pad, ctx.dil) if ctx.needs_input_grad[1] else None
        return gx, gw, None, None


def own(x, w, k):
    return OwnDW.apply(x, w, (k // 2, k // 2), (1, 1))


def ref(x, w, k):
    return F.conv2d(x, w, None, 1, k // 2, 1, x.shape[1])


def env():
    from numba import cuda

    print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version())
    import numba
    import numba_cuda
    print("numba", numba.__version__, "numba-cuda", numba_cuda.__version__)
    p = torch.cuda.get_device_properties(0)
    print("device", p.name, "SMs", p.multi_processor_count, "mem GiB", round(p.total_memory / 2**30, 1))
    print("numba sees", cuda.get_current_device().name, "cc", cuda.get_current_device().compute_capability)
    print("available()", ck.available())
    x = torch.randn(2, 4, 9, 9, device="cuda")
    w = torch.randn(4, 1, 3, 3, device="cuda")
    y = ck.forward(x, w, None, (1, 1), (1, 1))
    print("smoke forward max abs err", float((y - ref(x, w, 3)).abs().max()))


def all_keys():
    keys = []
    for dt in DTS:
        for k in KS:
            for r in RS:
                keys += ck.kernel_keys((B, C, r, r), k, k // 2, 1, DTYPES[dt])
    # shapes of tests/test_ops_cuda.py (GPU)
    import importlib.util
    spec = importlib.util.spec_from_file_location("t", "tests/test_ops_cuda.py")
    t = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(t)
    for (b, c, h, w, kh, kw, dil, pad) in t.GPU_CASES:
        pad = pad or (dil[0] * (kh - 1) // 2, dil[1] * (kw - 1) // 2)
        keys += ck.kernel_keys((b, c, h, w), (kh, kw), pad, dil, torch.float32)
    for dt in (torch.float16, torch.bfloat16):
        for k in (3, 7, 31):
            keys += ck.kernel_keys((2, 12, 29, 35), k, k // 2, 1, dt)
    for k in (3, 7):
        for d in (1, 2):
            for hw in (1, 2, 5, 9, 12, 17, 33, 72):
                keys += ck.kernel_keys((2, 4, hw, hw), k, d * (k - 1) // 2, d, torch.float32)
    keys += ck.kernel_keys((8, 64, 64, 64), 13, 6, 1, torch.float32)
    keys += ck.kernel_keys((16, 32, 32, 32), 31, 15, 1, torch.float32)
    return list(dict.fromkeys(keys))


def precompile(keys=None):
    keys = keys or all_keys()
    t = time.perf_counter()
    times = ck.precompile(keys)
    v = sorted(times.values())
    print(f"precompiled {len(keys)} kernels in {time.perf_counter() - t:.1f}s "
          f"(per kernel: median {statistics.median(v) if v else 0:.1f}s, max {max(v) if v else 0:.1f}s)")


def overhead():
    x = torch.randn(1, 8, 8, 8, device="cuda")
    w = torch.randn(8, 1, 3, 3, device="cuda")
    ck.forward(x, w, None, (1, 1), (1, 1))
    res = {}
    for name, fn in [("own fast launch", lambda: ck.forward(x, w, None, (1, 1), (1, 1))),
                     ("own numba launch", None),
                     ("F.conv2d", lambda: ref(x, w, 3))]:
        if fn is None:
            ck._fast_ok[0] = False
            fn = lambda: ck.forward(x, w, None, (1, 1), (1, 1))  # noqa: E731
        for _ in range(50):
            fn()
        torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(2000):
            fn()
        torch.cuda.synchronize()
        res[name] = (time.perf_counter() - t) / 2000 * 1e6
        ck._fast_ok[0] = True
    gw = lambda: ck.grad_weight(x, x, (3, 3), (1, 1), (1, 1))  # noqa: E731
    for _ in range(50):
        gw()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(2000):
        gw()
    torch.cuda.synchronize()
    res["own grad_weight (+sum)"] = (time.perf_counter() - t) / 2000 * 1e6
    print("host time per call, tiny tensors (us):", {k: round(v, 1) for k, v in res.items()})


def timeit(fn, min_reps=3, max_reps=25, budget_s=float(os.environ.get("BENCH_BUDGET_S", "0.4"))):
    """Median milliseconds of fn() over repeats after warm-up (CUDA events)."""
    fn()
    torch.cuda.synchronize()
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record()
    fn()
    e.record()
    torch.cuda.synchronize()
    first = s.elapsed_time(e)
    reps = int(max(min_reps, min(max_reps, budget_s * 1e3 / max(first, 1e-3))))
    if first > 400:  # long runs vary little: fewer repeats keep the sweep inside a GPU lease
        reps = 2 if first < 1500 else 1
    times = []
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e))
    return statistics.median(times)


def stack_fn(op, x, ws, k, mode, gy=None):
    if mode == "fwd":
        def f():
            with torch.no_grad():
                y = x
                for w in ws:
                    y = op(y, w, k)
            return y
    else:
        def f():
            y = x
            for w in ws:
                y = op(y, w, k)
            y.backward(gy)
    return f


def bench():
    rows = []
    path = os.path.join(OUT, "gpu_bench.jsonl")
    dev = torch.cuda.get_device_name(0)
    for r in RS:
        for dt in DTS:
            dtype = DTYPES[dt]
            for mode in MODES:
                for k in KS:
                    g = torch.Generator(device="cuda").manual_seed(k)
                    x = torch.randn(B, C, r, r, device="cuda", dtype=dtype, generator=g)
                    ws = [(torch.randn(C, 1, k, k, device="cuda", generator=g) / k).to(dtype).requires_grad_(
                        mode != "fwd") for _ in range(LAYERS)]
                    gy = torch.randn_like(x) if mode != "fwd" else None
                    res = {}
                    for name, op in (("torch", ref), ("own", own)):
                        for w in ws:
                            w.grad = None
                        try:
                            res[name] = timeit(stack_fn(op, x, ws, k, mode, gy)) / LAYERS
                        except Exception as exc:  # noqa: BLE001 - report and go on
                            print(f"  {name} failed: {type(exc).__name__}: {exc}"[:300])
                            res[name] = float("nan")
                    row = dict(device=dev, B=B, C=C, R=r, K=k, dtype=dt, mode=mode, torch_ms=res["torch"],
                               own_ms=res["own"], ratio=res["torch"] / res["own"])
                    rows.append(row)
                    with open(path, "a") as fh:
                        fh.write(json.dumps(row) + "\n")
                    print(f"R={r:3d} {dt} {mode:7s} K={k:2d}  torch {res['torch']:9.3f} ms/layer  "
                          f"own {res['own']:9.3f} ms/layer  torch/own {row['ratio']:6.2f}", flush=True)
                    del x, ws, gy
                    torch.cuda.empty_cache()
    table(rows)


def table(rows):
    print("\n| R | dtype | pass | " + " | ".join(f"K={k}" for k in KS) + " |")
    print("|---|---|---|" + "---|" * len(KS))
    keyf = lambda r: (r["R"], r["dtype"], r["mode"])  # noqa: E731
    for key in dict.fromkeys(keyf(r) for r in rows):
        sel = {r["K"]: r for r in rows if keyf(r) == key}
        cells = [f"{sel[k]['torch_ms']:.3f}/{sel[k]['own_ms']:.3f} ({sel[k]['ratio']:.2f}x)" if k in sel else "-"
                 for k in KS]
        print(f"| {key[0]} | {key[1]} | {key[2]} | " + " | ".join(cells) + " |")
    print("cells: torch ms / own ms per layer (torch/own); B=%d, C=%d, %d layers" % (B, C, LAYERS))


def sweep():
    """Time forward / grad-weight blockings at R=32 (override knobs URLK_CUDA_FWD / URLK_CUDA_GW)."""
    for r in [int(v) for v in os.environ.get("SWEEP_R", "32").split(",")]:
        sweep_r(r)


def sweep_r(r):
    print(f"-- sweep at B={B}, C={C}, R={r}: [P,Q,THmax,TWmax,threads] forward, [PJmax,TWG,threads,blocks/SM] gw")
    fwd_cfgs = os.environ.get("SWEEP_FWD", "8,2,64,32,128;8,4,64,32,128;8,1,32,32,128;4,2,64,32,128").split(";")
    gw_cfgs = os.environ.get("SWEEP_GW", "16,0,256,8;8,0,256,8;16,0,128,8;16,0,256,16").split(";")
    ks = [int(k) for k in os.environ.get("SWEEP_K", "7,13,31").split(",")]
    keys = []
    for k in ks:
        for c in fwd_cfgs:
            P, Q = map(int, c.split(",")[:2])
            keys.append(("fwd", (k, k, 1, 1, P, Q, "f32", "f32")))
        for c in gw_cfgs:
            os.environ["URLK_CUDA_GW"] = c
            ck.gw_config.cache_clear()
            g = ck.gw_config(B, C, r, r, k, k, 1, 1)
            keys.append(("gw", (k, k, 1, 1, g.PJ, g.TWG, "f32", "f32")))
    os.environ.pop("URLK_CUDA_GW", None)
    ck.gw_config.cache_clear()
    precompile(list(dict.fromkeys(keys)))
    x = torch.randn(B, C, r, r, device="cuda")
    for k in ks:
        w = torch.randn(C, 1, k, k, device="cuda") / k
        yref = ref(x, w, k)
        t_ref = timeit(lambda: ref(x, w, k), min_reps=10)
        line = [f"K={k:2d} fwd torch {t_ref:.3f}ms"]
        for c in fwd_cfgs:
            os.environ["URLK_CUDA_FWD"] = c
            ck.fwd_config.cache_clear()
            y = ck.forward(x, w, None, (k // 2, k // 2), (1, 1))
            err = float((y - yref).norm() / yref.norm())
            t = timeit(lambda: ck.forward(x, w, None, (k // 2, k // 2), (1, 1)), min_reps=10)
            line.append(f"[{c}] {t:.3f}ms{'' if err < 1e-5 else ' ERR %.1e' % err}")
        os.environ.pop("URLK_CUDA_FWD", None)
        ck.fwd_config.cache_clear()
        print(" ".join(line), flush=True)
        xr = x.detach().requires_grad_()
        wr = w.detach().requires_grad_()
        gy = torch.randn_like(x)
        torch.autograd.backward(ref(xr, wr, k), gy)
        gref = wr.grad
        t_ref = timeit(lambda: torch.ops.aten.convolution_backward(
            gy, x, w, None, [1, 1], [k // 2, k // 2], [1, 1], False, [0, 0], C, [False, True, False]), min_reps=5)
        line = [f"K={k:2d} gw  torch {t_ref:.3f}ms"]
        for c in gw_cfgs:
            os.environ["URLK_CUDA_GW"] = c
            ck.gw_config.cache_clear()
            gw = ck.grad_weight(x, gy, (k, k), (k // 2, k // 2), (1, 1))
            err = float((gw - gref).norm() / gref.norm())
            t = timeit(lambda: ck.grad_weight(x, gy, (k, k), (k // 2, k // 2), (1, 1)), min_reps=10)
            line.append(f"[{c}] {t:.3f}ms{'' if err < 1e-4 else ' ERR %.1e' % err}")
        os.environ.pop("URLK_CUDA_GW", None)
        ck.gw_config.cache_clear()
        print(" ".join(line), flush=True)


if __name__ == "__main__":
    {"env": env, "precompile": precompile, "overhead": overhead, "bench": bench, "sweep": sweep}[sys.argv[1]]()
PYEOF

run() {  # run <seconds> <log name> <command...>: time-limited, logged under $OUT, never aborts the script
  local secs=$1 log=$2; shift 2
  timeout -k 10 "$secs" "$@" 2>&1 | tee -a "$OUT/$log"
  local rc=${PIPESTATUS[0]}
  [ "$rc" -eq 0 ] || echo "!!! $* exited with $rc"
}

has() { case ",$STAGES," in *",$1,"*) return 0;; *) return 1;; esac; }
case "$MODE" in
  full) STAGES=env,precompile,tests,overhead,bench;;
  quick) STAGES=env,precompile,tests,overhead,bench; export BENCH_R=${BENCH_R:-32};;
  bench) STAGES=env,precompile,bench;;
  tests) STAGES=env,precompile,tests;;
  sweep) STAGES=env,sweep;;
  *) STAGES=$MODE;;  # a comma-separated list of stages
esac

if has env; then
  stage "environment"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv 2>&1 \
    | tee "$OUT/env.txt"
  run 120 env.txt "$PY" "$BENCH" env
fi
if has precompile; then
  stage "precompile kernels"
  run "${PRECOMPILE_TIMEOUT:-300}" precompile.txt "$PY" "$BENCH" precompile
fi
if has tests; then
  stage "GPU tests"
  run "${TESTS_TIMEOUT:-300}" gpu_tests.txt "$PY" -m pytest -q -m gpu -p no:cacheprovider -rs --maxfail=3 \
    tests/test_ops_cuda*.py
fi
if has overhead; then
  stage "launch overhead"
  run 60 overhead.txt "$PY" "$BENCH" overhead
fi
if has bench; then
  stage "benchmark (24 depthwise layers, B=${BENCH_B:-64}, C=384)"
  run "${BENCH_TIMEOUT:-420}" gpu_bench.txt "$PY" "$BENCH" bench
fi
if has sweep; then
  stage "blocking sweep"
  run "${SWEEP_TIMEOUT:-300}" sweep.txt "$PY" "$BENCH" sweep
fi
stage "done"
