"""Image example: scikit-learn's bundled 8×8 handwritten digits, upsampled to 32×32, UniRepLKNet classifier.

Run ``python examples/image_digits.py`` (about 1.5 minutes on a 2-core CPU) or with ``--quick``
(~20 s). Chance is 0.10. The data ship with scikit-learn (no download).
"""

from __future__ import annotations

import sys

import numpy as np
import torch
from _common import backbone_kw, base_parser, setup, split, train_classifier
from sklearn.datasets import load_digits

from urlk_forecast.models.modalities import create_classifier


def main(argv: list[str] | None = None) -> float:
    """Train and evaluate; returns the test accuracy."""
    p = base_parser(__doc__.splitlines()[0])
    args = p.parse_args(argv)
    setup(args)
    digits = load_digits()
    x = torch.from_numpy(digits.images.astype(np.float32)).unsqueeze(1)  # (N, 1, 8, 8), grey levels 0..16
    y = torch.from_numpy(digits.target.astype(np.int64))
    tr, te = split(len(y), digits.target, 0.2, args.seed)
    if args.quick:
        tr = tr[:800]
    epochs = args.epochs or (3 if args.quick else 10)
    mean, std = x[tr].mean(), x[tr].std()  # standardise with training statistics (matters a lot here)
    x = (x - mean) / std

    model = create_classifier("image", args.variant, 10, channels=1, size=32, **backbone_kw(args))
    print(f"digits: {len(tr)} train / {len(te)} test images, 10 classes (chance 0.10); "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters")
    acc = train_classifier(model, (x[tr], y[tr]), (x[te], y[te]), epochs, batch_size=16, lr=5e-3)
    print(f"test accuracy: {acc:.4f}")
    return acc


if __name__ == "__main__":
    main(sys.argv[1:])
