"""Point-cloud example: classify sphere / cube / cylinder / cone / torus from noisy, randomly rotated samples.

Points ``(B, P, 3)`` go through the three-view projection adapter (Eq. 4: xy, yz, xz occupancy + depth maps,
learnable conv layers → ``(B, 3, R, R)``) into a small UniRepLKNet. Data are generated on the fly (no download):
``P`` points on each surface (area-uniform), Gaussian noise, a uniformly random 3-D rotation and a random
scale. Run ``python examples/pointcloud_shapes.py`` (~2 minutes on a 2-core CPU) or with ``--quick`` (~30 s).
Chance is 0.20. ``--resolution 224`` gives the paper's view size (much slower on a CPU).
"""

from __future__ import annotations

import math
import sys

import numpy as np
import torch
from _common import backbone_kw, base_parser, setup, train_classifier

from urlk_forecast.models.modalities import create_classifier

SHAPES = ("sphere", "cube", "cylinder", "cone", "torus")


def _sphere(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.standard_normal((n, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _cube(rng: np.random.Generator, n: int) -> np.ndarray:
    p = rng.uniform(-1, 1, (n, 3))
    axis = rng.integers(0, 3, n)
    p[np.arange(n), axis] = rng.choice([-1.0, 1.0], n)  # each point on one of the six faces (equal areas)
    return p


def _cylinder(rng: np.random.Generator, n: int, r: float = 0.6, h: float = 2.0) -> np.ndarray:
    side, cap = 2 * math.pi * r * h, math.pi * r * r
    on_side = rng.random(n) < side / (side + 2 * cap)
    t = rng.uniform(0, 2 * math.pi, n)
    rad = np.where(on_side, r, r * np.sqrt(rng.random(n)))
    z = np.where(on_side, rng.uniform(-h / 2, h / 2, n), rng.choice([-h / 2, h / 2], n))
    return np.stack([rad * np.cos(t), rad * np.sin(t), z], axis=1)


def _cone(rng: np.random.Generator, n: int, r: float = 0.9, h: float = 2.0) -> np.ndarray:
    slant = math.hypot(r, h)
    side, base = math.pi * r * slant, math.pi * r * r
    on_side = rng.random(n) < side / (side + base)
    t = rng.uniform(0, 2 * math.pi, n)
    u = np.sqrt(rng.random(n))  # area-uniform: density grows linearly with the distance from the apex
    rad = np.where(on_side, r * u, r * np.sqrt(rng.random(n)))
    z = np.where(on_side, h / 2 - h * u, -h / 2)
    return np.stack([rad * np.cos(t), rad * np.sin(t), z], axis=1)


def _torus(rng: np.random.Generator, n: int, R: float = 1.0, r: float = 0.35) -> np.ndarray:
    out = np.empty((0, 3))
    while len(out) < n:  # rejection sampling: surface density ∝ R + r·cos(v)
        u, v = rng.uniform(0, 2 * math.pi, (2, 2 * n))
        keep = rng.random(2 * n) < (R + r * np.cos(v)) / (R + r)
        u, v = u[keep], v[keep]
        ring = R + r * np.cos(v)
        out = np.concatenate([out, np.stack([ring * np.cos(u), ring * np.sin(u), r * np.sin(v)], axis=1)])
    return out[:n]


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """Uniform random rotation (QR of a Gaussian matrix with the sign convention fixed, det = +1)."""
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def make_dataset(n_per_class: int, points: int, noise: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(N, P, 3)`` float32 clouds and int64 labels (index into SHAPES)."""
    rng = np.random.default_rng(seed)
    makers = (_sphere, _cube, _cylinder, _cone, _torus)
    xs, ys = [], []
    for label, make in enumerate(makers):
        for _ in range(n_per_class):
            p = make(rng, points) @ random_rotation(rng).T
            p = p * rng.uniform(0.5, 2.0) + noise * rng.standard_normal(p.shape) + rng.uniform(-1, 1, 3)
            xs.append(p)
            ys.append(label)
    return torch.from_numpy(np.stack(xs).astype(np.float32)), torch.tensor(ys, dtype=torch.int64)


def main(argv: list[str] | None = None) -> float:
    """Train and evaluate; returns the test accuracy."""
    p = base_parser(__doc__.splitlines()[0])
    p.add_argument("--points", type=int, default=512)
    p.add_argument("--noise", type=float, default=0.02)
    p.add_argument("--resolution", type=int, default=64, help="view size R (the paper uses 224)")
    args = p.parse_args(argv)
    setup(args)
    n_train, n_test = (80, 30) if args.quick else (200, 60)
    x_tr, y_tr = make_dataset(n_train, args.points, args.noise, args.seed)
    x_te, y_te = make_dataset(n_test, args.points, args.noise, args.seed + 1000)
    epochs = args.epochs or (4 if args.quick else 8)
    model = create_classifier("point_cloud", args.variant, len(SHAPES), resolution=args.resolution, hidden=8,
                              **backbone_kw(args))
    print(f"shapes {SHAPES}: {len(y_tr)} train / {len(y_te)} test clouds of {args.points} points (chance 0.20); "
          f"views {args.resolution}x{args.resolution}")
    acc = train_classifier(model, (x_tr, y_tr), (x_te, y_te), epochs, batch_size=16, lr=3e-3)
    print(f"test accuracy: {acc:.4f}")
    return acc


if __name__ == "__main__":
    main(sys.argv[1:])
