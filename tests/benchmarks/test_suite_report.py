import json

from benchmarks.suite_report import write_report


def _lines(*records):
    return "device: test\n" + "".join(json.dumps(record) + "\n" for record in records)


def _suite(tmp_path, *steps):
    (tmp_path / "steps").mkdir()
    (tmp_path / "machine.txt").write_text("NVIDIA H200\n")
    (tmp_path / "steps.jsonl").write_text("".join(json.dumps(step) + "\n" for step in steps))


def test_the_report_pairs_each_figure_with_its_baseline_from_the_same_run(tmp_path):
    _suite(tmp_path, {"step": "bench_pfc", "rc": 0, "seconds": 40, "limit": 150},
           {"step": "bench_step_256", "rc": 124, "seconds": 150, "limit": 150})
    (tmp_path / "steps" / "bench_pfc.out").write_text(_lines(
        {"variant": "triton", "classes": 1000000, "center_dtype": "float32", "step_ms": 2.5, "peak_gib": 5.0,
         "kernels": [["_forward_kernel", 0.75], ["_row_gradient_kernel", 0.5]]},
        {"variant": "torch", "classes": 1000000, "center_dtype": "float32", "step_ms": 5.0, "peak_gib": 6.0},
        {"variant": "dense", "classes": 1000000, "center_dtype": "float32", "step_ms": 10.0, "peak_gib": 8.0},
        {"variant": "triton", "classes": 10000000, "center_dtype": "float32", "step_ms": 12.0, "peak_gib": 41.0},
        {"variant": "torch", "classes": 10000000, "center_dtype": "float32", "step_ms": 30.0, "peak_gib": 44.0},
        {"variant": "dense", "classes": 10000000, "center_dtype": "float32", "error": "CUDA out of memory"}))
    report = write_report(tmp_path).read_text()
    assert "| 1,000,000 | float32 | 2.50 | 5.00 | 4.00x | 5.00 | 6.00 | 2.00x | 10.00 | 8.00 |" in report
    assert "| 10,000,000 | float32 | 12.00 | 41.00 |  | 30.00 | 44.00 |  | – | – |" in report  # no baseline
    assert ("| classes | head | step ms | kernel | ms per step |\n|---|---|---|---|---|\n"
            "| 1,000,000 | triton | 2.50 | _forward_kernel | 0.750 |\n"
            "| 1,000,000 | triton | 2.50 | _row_gradient_kernel | 0.500 |\n") in report  # the profiled head only
    assert "| bench_step_256 | 124 | 150 | 150 |" in report  # timed out: listed with its exit code
    assert "## Whole training step (`bench_step_256`)\n\n\n(no figures" in report


def _step(batch, name, images_per_s, variant="ours"):
    return {"name": name, "method": "pfc", "batch": batch, "variant": variant, "images_per_s": images_per_s,
            "step_ms": batch * 1000 / images_per_s, "peak_gib": batch / 64}


def test_both_whole_step_runs_get_their_table_and_a_step_the_budget_skipped_is_listed(tmp_path):
    _suite(tmp_path, {"step": "cuda_tests", "rc": 0, "seconds": 61, "limit": 150},
           {"step": "bench_step_256", "rc": 0, "seconds": 140, "limit": 150},
           {"step": "bench_data", "rc": "skipped", "seconds": 0, "limit": 0},
           {"step": "bench_step_128", "rc": 0, "seconds": 25, "limit": 27})
    (tmp_path / "steps" / "cuda_tests.out").write_text("...........\n11 passed in 58.20s\n")
    (tmp_path / "steps" / "bench_step_256.out").write_text(_lines(
        _step(256, "baseline", 1000.0, "baseline"), _step(256, "ours bf16", 2500.0),
        {"name": "ours fp32", "method": "pfc", "batch": 256, "variant": "ours", "error": "CUDA out of memory"})
        + '{"name": "ours bf16 + chan')  # killed while it printed the last line
    (tmp_path / "steps" / "bench_step_128.out").write_text(_lines(
        _step(128, "baseline", 800.0, "baseline"), _step(128, "ours bf16", 1000.0)))
    report = write_report(tmp_path).read_text()
    assert "| bench_data | skipped | 0 | 0 |" in report  # too little time left to start it
    assert "| bench_step_128 | 0 | 25 | 27 |" in report  # its limit clipped to the time left
    assert "CUDA tests: 11 passed in 58.20s" in report
    assert "| pfc | 256 | baseline | 1000 | 256.0 | 4.00 |  |" in report
    assert "| pfc | 256 | ours bf16 | 2500 | 102.4 | 4.00 | 2.50x |" in report
    assert "| pfc | 256 | ours fp32 | CUDA out of memory |  |  |  |" in report
    assert "| pfc | 128 | ours bf16 | 1000 | 128.0 | 2.00 | 1.25x |" in report
    assert "## Whole training step (`bench_step_128`)\n\ndevice: test\n\n| method |" in report
