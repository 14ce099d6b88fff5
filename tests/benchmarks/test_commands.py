import pytest
from click.testing import CliRunner

from cli import main


@pytest.mark.parametrize("command", ["pfc", "heads", "step", "data", "train", "analysis"])
def test_every_bench_command_has_help(command):
    result = CliRunner().invoke(main, ["bench", command, "--help"])
    assert result.exit_code == 0 and "Usage:" in result.output


@pytest.mark.parametrize("args, message", [
    (["pfc", "--sample-rate", "nan"], "'nan' is not a number in the range 0<x<=1"),
    (["pfc", "--classes", "0"], "0 is not in the range x>=2"),
    (["heads", "--queue-size", "0"], "queue_size (--queue-size) must be > 0, got 0"),
    (["heads", "--method", "pfc", "--queue-size", "100"], "--queue-size: not an option of pfc"),
    (["step", "--method", "pfc", "--classes", "100", "--batch-size", "128", "--device", "cpu"], "give at least 128"),
    (["step", "--method", "dcq", "--sample-rate", "0.5", "--device", "cpu"], "--sample-rate: not an option of dcq"),
    (["analysis", "--classes", "1000", "--k", "5000"], "at most 999 other classes"),
    (["data", "--batch-size", "0"], "0 is not in the range x>=1"),
    (["train", "--steps", "0"], "0 is not in the range x>=1"),
])
def test_bench_options_are_checked_before_anything_runs(args, message):
    result = CliRunner().invoke(main, ["bench", *args])
    assert result.exit_code == 2 and message in result.output, result.output
