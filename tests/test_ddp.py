"""DDP: two real CPU processes over gloo (launched by torchrun) follow the one-process loss trajectory.

This file is also the torchrun worker script (``python -m torch.distributed.run ... tests/test_ddp.py worker``):
each rank checks the synchronised BatchNorm against a BatchNorm over the concatenated batch and then trains the
stand-in network of test_training.py with the same global batch as the in-process reference.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_training import TinyNet, make_ws, small_cfg  # noqa: E402

from urlk_forecast import distributed as D  # noqa: E402
from urlk_forecast.training import load_checkpoint, train  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# global batch 9 over 2 ranks = shards of 5 and 4 windows: the loss scaling by the global count of observed
# targets and the synchronised BatchNorm must make the uneven split exact
DDP_CFG = dict(epochs=2, batch_size=9, steps_per_epoch=5, patience=0, lr=5e-3, checkpoint_every=4, prefetch=False)


def _torchrun(nproc: int, *args: str) -> subprocess.CompletedProcess:
    cmd = D.torchrun_command(nproc, [*args], module="__unused__")
    cmd = cmd[: cmd.index("-m", 3)] + [str(Path(__file__).resolve()), *args]  # run this file as the script
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run(cmd, env=env, timeout=300, capture_output=True, text=True)


def test_torchrun_command_lines() -> None:
    cmd = D.torchrun_command(4, ["train", "--stations", "12"])
    assert cmd[1:] == ["-m", "torch.distributed.run", "--nproc-per-node", "4", "--standalone", "-m",
                       "urlk_forecast.cli", "train", "--stations", "12"]
    cmd = D.torchrun_command(8, ["train"], nnodes=2, node_rank=1, master_addr="10.0.0.1", master_port=29400)
    assert cmd[3:13] == ["--nproc-per-node", "8", "--nnodes", "2", "--node-rank", "1", "--master-addr", "10.0.0.1",
                         "--master-port", "29400"]
    cmd = D.torchrun_command(8, ["train"], nnodes=2, rdzv_endpoint="head:29400")
    assert "--rdzv-endpoint" in cmd and "head:29400" in cmd and "--standalone" not in cmd
    with pytest.raises(ValueError, match="master_addr and node_rank"):
        D.torchrun_command(2, ["train"], nnodes=2)


def test_shard_splits_a_global_batch_exactly() -> None:
    idx = np.arange(9)
    parts = [D.shard(idx, r, 2) for r in range(2)]
    assert [len(p) for p in parts] == [5, 4]
    np.testing.assert_array_equal(np.concatenate(parts), idx)


def test_sync_batchnorm_conversion_round_trip() -> None:
    m = nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.Sequential(nn.BatchNorm1d(3)))
    w = m[1].weight
    D.convert_sync_batchnorm(m, use_cuda=False)
    assert isinstance(m[1], D.GlobalBatchNorm) and isinstance(m[2][0], D.GlobalBatchNorm)
    assert m[1].weight is w  # parameters are shared, not copied
    sd = m.state_dict()
    D.revert_sync_batchnorm(m)
    assert type(m[1]) is nn.BatchNorm2d and type(m[2][0]) is nn.BatchNorm1d and m[1].weight is w
    assert m.state_dict().keys() == sd.keys()
    # without a process group it is an ordinary BatchNorm
    g, b = D.GlobalBatchNorm(4), nn.BatchNorm2d(4)
    x = torch.randn(3, 4, 5, 5)
    torch.testing.assert_close(g(x), b(x))
    torch.testing.assert_close(g.running_var, b.running_var)


def test_two_gloo_processes_follow_the_single_process_trajectory(tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    proc = _torchrun(2, "worker", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads((out / "result.json").read_text())
    # the synchronised BatchNorm equals one BatchNorm over the concatenated batch, forward and backward
    assert res["bn_max_rel_err"] < 1e-5, res
    # reference: one process, same global batch and data order
    ws, val = make_ws(480, 6, seed=0), make_ws(200, 6, seed=1, start="2020-03-01")
    torch.manual_seed(0)
    model = TinyNet()
    ref = train(model, ws, val, small_cfg(**DDP_CFG, out_dir=tmp_path / "one"))
    got = np.array(res["step_losses"])
    assert len(got) == len(ref.step_losses) == 10
    np.testing.assert_allclose(got, ref.step_losses, rtol=1e-5)
    np.testing.assert_allclose([h["val_loss"] for h in res["history"]], [h["val_loss"] for h in ref.history],
                               rtol=1e-5)
    final = torch.load(out / "final.pt")
    for k, v in model.state_dict().items():
        torch.testing.assert_close(final[k].double(), v.double(), rtol=1e-4, atol=1e-5, msg=k)
    # only rank 0 wrote, and the checkpoint holds both ranks' RNG states for an exact resume
    ck = load_checkpoint(out)
    assert ck["world_size"] == 2 and len(ck["rng"]) == 2
    assert sorted(p.name for p in out.iterdir()) == ["best.pt", "checkpoint.pt", "final.pt", "history.json",
                                                     "result.json", "train_config.json"]


def _bn_check() -> float:
    """Each rank normalises its slice; compare with nn.BatchNorm2d over the whole batch (rank 0's view)."""
    ctx = D.context()
    g = torch.Generator().manual_seed(7)
    full = torch.randn(9, 3, 4, 5, generator=g) * 2 + 1
    wout = torch.randn(9, 3, 4, 5, generator=g)
    ref_bn = nn.BatchNorm2d(3)
    with torch.no_grad():
        ref_bn.weight.uniform_(0.5, 1.5, generator=g)
        ref_bn.bias.uniform_(-1, 1, generator=g)
    bn = D.convert_sync_batchnorm(nn.Sequential(nn.BatchNorm2d(3)), use_cuda=False)
    bn.load_state_dict(nn.Sequential(ref_bn).state_dict())
    sl = np.array_split(np.arange(9), ctx.world_size)[ctx.rank]
    x_full = full.clone().requires_grad_()
    y_ref = ref_bn(x_full)
    (y_ref * wout).sum().backward()
    x = full[sl].clone().requires_grad_()
    y = bn(x)
    (y * wout[sl]).sum().backward()
    errs = [
        (y - y_ref[sl]).abs().max() / y_ref.abs().max(),
        (x.grad - x_full.grad[sl]).abs().max() / x_full.grad.abs().max(),
    ]
    gw = bn[0].weight.grad.clone()
    gb = bn[0].bias.grad.clone()
    D.all_reduce_sum(gw)
    D.all_reduce_sum(gb)
    errs += [(gw - ref_bn.weight.grad).abs().max() / ref_bn.weight.grad.abs().max(),
             (gb - ref_bn.bias.grad).abs().max() / ref_bn.bias.grad.abs().max(),
             (bn[0].running_var - ref_bn.running_var).abs().max() / ref_bn.running_var.abs().max(),
             (bn[0].running_mean - ref_bn.running_mean).abs().max() / ref_bn.running_mean.abs().max()]
    e = torch.stack([torch.as_tensor(v, dtype=torch.float64) for v in errs]).max().reshape(1)
    D.all_reduce_max(e)
    return float(e)


def _worker(out: str) -> None:
    torch.set_num_threads(1)
    ctx = D.init_from_env(use_cuda=False)
    assert ctx.world_size == int(os.environ["WORLD_SIZE"]) > 1
    bn_err = _bn_check()
    ws, val = make_ws(480, 6, seed=0), make_ws(200, 6, seed=1, start="2020-03-01")
    torch.manual_seed(0)
    model = TinyNet()
    res = train(model, ws, val, small_cfg(**DDP_CFG, out_dir=out))
    assert type(model.bn) is nn.BatchNorm1d  # converted back after training
    if ctx.is_main:
        torch.save(model.state_dict(), Path(out) / "final.pt")
        d = res.to_dict()
        d["bn_max_rel_err"] = bn_err
        (Path(out) / "result.json").write_text(json.dumps(d))
    D.cleanup()


if __name__ == "__main__" and len(sys.argv) >= 2 and sys.argv[1] == "worker":
    _worker(sys.argv[2])


def test_cleanup_lets_waiting_threads_run_before_the_group_goes(tmp_path: Path) -> None:
    """cleanup() releases the GIL before destroying the group, so a thread waiting for it (a gloo worker dropping
    its last collective's tensors) runs while the group still exists, not during interpreter shutdown."""
    import threading

    import torch.distributed as dist

    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    seen: list[bool] = []
    go = threading.Event()
    t = threading.Thread(target=lambda: (go.wait(), seen.append(dist.is_initialized())))
    t.start()
    go.set()  # the thread now wants the GIL; the main thread keeps it unless cleanup gives it away
    D.cleanup()
    t.join()
    assert seen == [True] and not dist.is_initialized()
