"""The allocator setting keeps freed memory: a re-allocated large tensor is not page-faulted in again.

Each case runs in a fresh interpreter, because the setting is process-wide and the test process may have it on
already (any CPU training test turns it on). Page faults are counted with ``getrusage`` around the second
allocation of a 64 MiB tensor after the first was freed: glibc's default maps it afresh (one minor fault per 4 KiB
page touched, ~16 000), with the setting the freed block is reused (a handful of faults at most).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")

_PROBE = textwrap.dedent("""
    import json, resource, sys
    import torch
    from urlk_forecast.utils import allocator
    from urlk_forecast.models import fastpath
    mode = sys.argv[1]
    if mode == "on":
        applied = allocator.retain_freed_memory()
    elif mode == "off_again":
        allocator.retain_freed_memory()
        applied = allocator.retain_freed_memory(False)
    elif mode == "fastpath":
        applied = fastpath.tune_allocator("cpu")
    elif mode == "fastpath_cuda":
        applied = fastpath.tune_allocator("cuda")
    else:
        applied = None
    n = 16 * 1024 * 1024  # 64 MiB of float32
    a = torch.empty(n).fill_(1.0)
    del a
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    b = torch.empty(n).fill_(2.0)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    assert float(b[-1]) == 2.0
    print(json.dumps({"applied": applied, "retained": allocator.retained(), "faults": faults}))
""")

PAGES = 16 * 1024 * 1024 * 4 // 4096  # pages of the 64 MiB tensor


def _probe(mode: str, **env: str) -> dict:
    full_env = {k: v for k, v in os.environ.items() if k not in ("URLK_MALLOC", "URLK_FAST", "MALLOC_MMAP_MAX_",
                                                               "MALLOC_TRIM_THRESHOLD_")}
    full_env.update(env)
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, env=full_env,
                         timeout=120, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_default_allocator_faults_the_memory_in_again() -> None:
    r = _probe("none")
    assert r["retained"] is False
    assert r["faults"] > PAGES // 2  # the premise: glibc's default unmaps and re-maps large blocks


def test_retained_memory_is_reused_without_page_faults() -> None:
    r = _probe("on")
    assert r["applied"] is True and r["retained"] is True
    assert r["faults"] < PAGES // 50


def test_turning_it_off_restores_the_default() -> None:
    r = _probe("off_again")
    assert r["applied"] is False and r["retained"] is False
    assert r["faults"] > PAGES // 2


def test_env_opt_out_changes_nothing() -> None:
    r = _probe("on", URLK_MALLOC="0")
    assert r["applied"] is False and r["retained"] is False
    assert r["faults"] > PAGES // 2


def test_fast_path_switch_and_device() -> None:
    assert _probe("fastpath")["retained"] is True
    assert _probe("fastpath", URLK_FAST="0")["retained"] is False  # the old path leaves the allocator alone
    assert _probe("fastpath_cuda")["retained"] is False  # device memory is torch's caching allocator's business
