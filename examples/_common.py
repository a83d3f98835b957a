"""Shared training loop for the modality examples (seeded, CPU-friendly, prints progress and accuracy)."""

from __future__ import annotations

import argparse
import math
import random
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

#: a small UniRepLKNet (variant A's layout with fewer/narrower blocks) so each example trains in minutes on a CPU
SMALL_BACKBONE = dict(dims=(16, 32, 64, 128), depths=(1, 1, 2, 1), layer_scale_init_value=1e-6)


def base_parser(description: str) -> argparse.ArgumentParser:
    """Options common to every example."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="smaller data and fewer epochs (for tests, < 1 minute)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default depends on --quick)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1: small batches gain "
                   "little from more, and a shared CPU loses a lot to oversubscription)")
    p.add_argument("--variant", default="unireplknet_a", help="UniRepLKNet variant (its dims/depths are reduced "
                   "by --full-size unless given)")
    p.add_argument("--full-size", action="store_true", help="use the variant's own dims/depths (slow on a CPU)")
    return p


def setup(args: argparse.Namespace) -> None:
    """Seed everything and set the thread count."""
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)


def backbone_kw(args: argparse.Namespace) -> dict:
    """Backbone overrides for create_classifier."""
    return {} if args.full_size else dict(SMALL_BACKBONE)


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 128) -> float:
    """Top-1 accuracy in eval mode."""
    model.eval()
    correct = 0
    for i in range(0, len(x), batch_size):
        correct += int((model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum())
    return correct / max(len(x), 1)


def train_classifier(model: nn.Module, train: tuple[torch.Tensor, torch.Tensor],
                     test: tuple[torch.Tensor, torch.Tensor], epochs: int, batch_size: int = 64, lr: float = 2e-3,
                     weight_decay: float = 0.05, augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
                     ) -> float:
    """AdamW + cosine schedule with warm-up, cross-entropy; prints one line per epoch; returns test accuracy."""
    x_tr, y_tr = train
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps = epochs * math.ceil(len(x_tr) / batch_size)
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    loss_fn = nn.CrossEntropyLoss()
    t0 = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(x_tr))
        total, n = 0.0, 0
        for i in range(0, len(x_tr), batch_size):
            idx = perm[i:i + batch_size]
            if len(idx) < 2:  # BatchNorm needs more than one sample
                continue
            xb = x_tr[idx]
            if augment is not None:
                xb = augment(xb)
            loss = loss_fn(model(xb), y_tr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
            n += len(idx)
        acc = accuracy(model, *test)
        print(f"epoch {epoch + 1}/{epochs}  loss {total / max(n, 1):.4f}  test accuracy {acc:.3f}  "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
    return accuracy(model, *test)


def split(n: int, labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified random train/test indices."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        k = max(1, int(round(len(idx) * test_fraction)))
        test.extend(idx[:k])
        train.extend(idx[k:])
    return rng.permutation(np.array(train)), np.array(sorted(test))
