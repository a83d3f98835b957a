"""Shared pytest configuration."""

import os

import numpy as np
import pytest
import torch

os.environ.setdefault("URLK_TEST", "1")


@pytest.fixture(autouse=True)
def _seed() -> None:
    np.random.seed(0)
    torch.manual_seed(0)
