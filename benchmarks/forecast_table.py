#!/usr/bin/env python3
"""The paper's Table 12 comparison (baselines vs UniRepLKNet) -- a thin wrapper of ``urlk-forecast benchmark``.

Same options as the CLI command, e.g. the full synthetic default (3850 stations, 512 evenly spaced test windows)::

    python benchmarks/forecast_table.py --var temperature --out benchmark_results
    python benchmarks/forecast_table.py --var wind_speed --run runs/<run> --out benchmark_results
"""

from __future__ import annotations

from urlk_forecast.cli.benchmark import benchmark

if __name__ == "__main__":
    benchmark(prog_name="forecast_table.py")
