import json

from benchmarks.suite_report import write_report


def _lines(*records):
    return "device: test\n" + "".join(json.dumps(record) + "\n" for record in records)


def test_the_report_pairs_each_figure_with_its_baseline_from_the_same_run(tmp_path):
    (tmp_path / "machine.txt").write_text("NVIDIA H200\n")
    (tmp_path / "steps.jsonl").write_text('{"step": "bench_pfc", "rc": 0, "seconds": 40}\n'
                                          '{"step": "bench_step", "rc": 124, "seconds": 150}\n')
    (tmp_path / "bench_pfc.out").write_text(_lines(
        {"variant": "triton", "classes": 1000000, "center_dtype": "float32", "step_ms": 2.5, "peak_gib": 5.0},
        {"variant": "torch", "classes": 1000000, "center_dtype": "float32", "step_ms": 5.0, "peak_gib": 6.0},
        {"variant": "dense", "classes": 1000000, "center_dtype": "float32", "step_ms": 10.0, "peak_gib": 8.0},
        {"variant": "triton", "classes": 10000000, "center_dtype": "float32", "step_ms": 12.0, "peak_gib": 41.0},
        {"variant": "torch", "classes": 10000000, "center_dtype": "float32", "step_ms": 30.0, "peak_gib": 44.0},
        {"variant": "dense", "classes": 10000000, "center_dtype": "float32", "error": "CUDA out of memory"}))
    report = write_report(tmp_path).read_text()
    assert "| 1,000,000 | float32 | 2.50 | 5.00 | 4.00x | 5.00 | 6.00 | 2.00x | 10.00 | 8.00 |" in report
    assert "| 10,000,000 | float32 | 12.00 | 41.00 |  | 30.00 | 44.00 |  | – | – |" in report  # no baseline
    assert "| bench_step | 124 | 150 |" in report  # timed out: listed with its exit code
    assert "## Whole training step (`bench_step`)\n\n\n(no figures" in report
