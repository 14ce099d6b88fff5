"""Each benchmark configuration runs in its own process; a failing one must come back as a row, not a crash."""

import pytest

from benchmarks.common import run_isolated
from cli import _figure


def test_a_failing_job_returns_its_last_error_line():
    result = run_isolated("json.tool", {"classes": 1})  # json.tool reads --job as a file name: argparse exits with 2
    assert set(result) == {"error"} and result["error"].startswith("python -m json.tool: error:")


def test_a_job_past_its_time_limit_returns_an_error_instead_of_raising():
    assert run_isolated("json.tool", {}, timeout=0.001) == {"error": "timed out after 0 s"}


@pytest.mark.parametrize("result, shown", [
    ({"step_ms": 12.345}, "12.3"),
    ({"error": "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 38.15 GiB"}, "out of memory"),
    ({"error": "timed out after 1800 s"}, "timed out after 1800 s"),
])
def test_one_side_of_a_row_shows_its_figure_or_why_it_has_none(result, shown):
    assert _figure(result, "step_ms", ".1f") == shown
