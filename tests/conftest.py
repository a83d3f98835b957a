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
    """CLI commands run in-process (CliRunner, also in module-scoped fixtures) configure the package logger;
    give every test the pristine one."""
    logger = logging.getLogger("urlk_forecast")

    def reset() -> None:
        logger.handlers.clear()
        logger.setLevel(logging.NOTSET)
        logger.propagate = True

    reset()
    yield
    reset()
