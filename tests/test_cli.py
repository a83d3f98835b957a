"""The shared pieces of the command line: one-line user errors, printed warnings, and logging that is restored."""

from __future__ import annotations

import logging
import warnings

import click
import pandas as pd
import pytest
from click.testing import CliRunner

from urlk_forecast.cli import cli, command_logging, user_errors
from urlk_forecast.cli.errors import speak_flags
from urlk_forecast.cli.outputs import step_label
from urlk_forecast.utils import describe_steps, freq_label


@pytest.mark.parametrize(
    ("exc", "expect"),
    [
        (ValueError("bad --var 'x'\nsecond line"), "bad --var 'x' second line"),
        (FileNotFoundError("data.nc: no such file"), "data.nc: no such file"),
        (KeyError("temperature"), "missing 'temperature'"),
        (ImportError("prophet is not installed"), "prophet is not installed"),
    ],
)
def test_user_errors_become_one_click_line(exc: Exception, expect: str) -> None:
    with pytest.raises(click.ClickException) as err:
        with user_errors():
            raise exc
    assert err.value.message == expect
    assert err.value.__cause__ is None and err.value.__suppress_context__


def test_user_errors_leave_programming_errors_alone() -> None:
    with pytest.raises(TypeError):
        with user_errors():
            raise TypeError("a bug, keep the traceback")


def test_user_errors_print_each_warning_once_and_hide_deprecations(capsys: pytest.CaptureFixture[str]) -> None:
    with user_errors():
        for _ in range(3):
            warnings.warn("station 042 has no data", UserWarning, stacklevel=1)
        warnings.warn("old API", DeprecationWarning, stacklevel=1)
    err = capsys.readouterr().err
    assert err.count("warning: station 042 has no data") == 1
    assert "old API" not in err


def test_command_logging_prints_and_restores_the_package_logger(capsys: pytest.CaptureFixture[str]) -> None:
    logger = logging.getLogger("urlk_forecast")
    logger.setLevel(logging.ERROR)
    before = (list(logger.handlers), logger.level, logger.propagate)
    with command_logging(verbose=True):
        logging.getLogger("urlk_forecast.training").info("epoch 1 done")
    assert "epoch 1 done" in capsys.readouterr().err
    assert (list(logger.handlers), logger.level, logger.propagate) == before
    with command_logging(verbose=False):
        logging.getLogger("urlk_forecast.training").info("hidden on ranks > 0")
    assert "hidden" not in capsys.readouterr().err


def test_a_failing_command_restores_logging_too(tmp_path) -> None:
    logger = logging.getLogger("urlk_forecast")
    before = (list(logger.handlers), logger.level, logger.propagate)
    res = CliRunner().invoke(cli, ["train", "--data", str(tmp_path / "missing.nc")])
    assert res.exit_code != 0 and "missing.nc" in res.output
    assert (list(logger.handlers), logger.level, logger.propagate) == before


@pytest.mark.parametrize(
    ("msg", "flags", "expect"),
    [
        ("x.txt, line 1: unknown format (first line 'a'); pass format= one of ['csv-long', 'gsod']",
         {"format": "--format"}, "x.txt, line 1: unknown format (first line 'a'); pass --format one of ['csv-long', "
                                 "'gsod']"),
        ("no station coordinate; map the file's name onto it (name_map={'<name>': 'station'})",
         {"name_map": "--name-map"}, "no station coordinate; map the file's name onto it (--name-map <name>=station)"),
        ("their coordinates are NaN — add lat/lon columns or pass stations=<metadata csv>",
         {"stations": "--stations-csv"}, "their coordinates are NaN — add lat/lon columns or pass --stations-csv "
                                         "<metadata csv>"),
        ("value np.float64(2.0) out of range at np.int64(3)", None, "value 2.0 out of range at 3"),
        ("keep my_format= and --format= alone", {"format": "--format"}, "keep my_format= and --format= alone"),
    ],
)
def test_library_messages_speak_the_flags(msg: str, flags: dict[str, str] | None, expect: str) -> None:
    assert speak_flags(msg, flags) == expect
    with pytest.raises(click.ClickException) as err:
        with user_errors(flags):
            raise ValueError(msg)
    assert err.value.message == expect


def test_help_lists_every_command_without_importing_them() -> None:
    """`urlk-forecast --help` is fast: it imports no command module (and no torch); its one-line help of each
    command is that command's own."""
    import subprocess
    import sys

    code = ("import sys\nfrom urlk_forecast.cli import main\nsys.argv = ['urlk-forecast', '--help']\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in sys.modules if m.startswith('torch') or m.startswith('urlk_forecast.cli.')))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip().splitlines()[-1] == "['urlk_forecast.cli.errors']"
    for name in ("benchmark", "data", "predict", "train"):
        assert f"  {name} " in p.stdout
    from urlk_forecast.cli import _COMMANDS

    for name, (_module, _attr, short) in _COMMANDS.items():
        cmd = cli.get_command(click.Context(cli), name)
        assert cmd is not None and cmd.help is not None
        assert " ".join(cmd.help.split()).startswith(short), name


@pytest.mark.parametrize("n, freq, expect", [
    (24, "1h", "24 h"), (24, "1D", "24 days"), (1, "1D", "1 day"), (6, "10min", "6 x 10 min"),
    (8, "3h", "8 x 3 h"), (5, None, "5 steps"), (1, None, "1 step"), (3, "7D", "3 x 7 days"), (90, "1min", "90 min"),
])
def test_describe_steps_words_counts_in_the_data_step(n: int, freq: str | None, expect: str) -> None:
    assert describe_steps(n, freq) == expect
    assert step_label(n, freq) == expect  # the CLI's name for the same helper
    if freq is not None:
        assert describe_steps(n, pd.Timedelta(freq)) == expect
        assert freq_label(pd.Timedelta(freq)) == describe_steps(1, freq).replace("1 x ", "")
