"""Shared pytest configuration."""

import atexit
import logging
import os
import shutil
import tempfile

import numpy as np
import pytest
import torch

os.environ.setdefault("URLK_TEST", "1")

# The depthwise op under ``auto`` measures and caches a per-machine dispatch table (urlk_forecast/ops/autotune.py).
# Tests, and the subprocesses they start, write theirs into a private temporary directory, never the user's cache:
# set here, at import, so that it holds before any test module runs the op.
_TABLE_DIR = tempfile.mkdtemp(prefix="urlk_dwconv_table_")
os.environ["URLK_DWCONV_TABLE_DIR"] = _TABLE_DIR
atexit.register(shutil.rmtree, _TABLE_DIR, True)


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
