"""Shared pytest configuration."""

import logging
import os

import numpy as np
import pytest
import torch

os.environ.setdefault("URLK_TEST", "1")


@pytest.fixture(autouse=True)
def _seed() -> None:
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _restore_package_logger():
    """CLI commands run in-process (CliRunner) configure the package logger; undo it after each test."""
    logger = logging.getLogger("urlk_forecast")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    logger.handlers[:] = saved[0]
    logger.setLevel(saved[1])
    logger.propagate = saved[2]
