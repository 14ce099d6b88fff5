"""Each benchmark configuration runs in its own process; a failing one must come back as a row, not a crash."""

import pytest

from benchmarks.common import run_isolated
from benchmarks.commands import _figure


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


def test_jobs_run_from_the_repository_root_wherever_the_cli_started(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    job = {"method": "dcq", "options": {"queue_size": 16}, "classes": 64, "batch": 4, "dim": 8, "device": "cpu",
           "warmup": 1, "repeats": 1}
    result = run_isolated("benchmarks.heads", job)
    assert "error" not in result, result
    assert result["state_mib"] > 0


def test_data_timing_never_asks_for_more_batches_than_an_epoch_holds(tiny_rec):
    from benchmarks.data_loading import images_per_second
    from core.errors import DataError

    # 48 images make three batches of 16: one warms up, two are timed, whatever --images asks for
    assert images_per_second(tiny_rec, 16, 0, 16, max_images=4096) > 0
    with pytest.raises(DataError, match="1 batch"):
        images_per_second(tiny_rec, 16, 0, 32, max_images=4096)
