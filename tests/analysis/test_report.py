import numpy as np
import pandas as pd

from analysis.groundtruth import conflict_positives, noise_positives
from analysis.plots import pr_curves
from analysis.report import Report, format_value


def test_report_renders_the_same_blocks_to_markdown_and_html(tmp_path):
    report = Report(title="Title <x>")
    report.heading("Section")
    report.paragraph("uses `code` & <angle brackets>")
    report.figures({"pairs": 12345, "share": 0.123456, "flagged": True})
    report.table(pd.DataFrame({"label": [3, 1], "similarity": [0.9, 0.5], "path": ["a|b", "c"]}), "Top", max_rows=1)
    pr_curves([("noise", np.array([1.0, 0.5]), np.array([0.0, 1.0]), 0.75, 0.1)], tmp_path / "pr.png")
    report.image(tmp_path / "pr.png", "A curve")
    html_path, md_path = report.write(tmp_path)
    markdown, html = md_path.read_text(), html_path.read_text()
    assert "# Title <x>" in markdown and "<title>Title &lt;x&gt;</title>" in html
    assert "&lt;angle brackets&gt;" in html and "<code>code</code>" in html
    assert "| pairs | 12,345 |" in markdown and "| share | 0.1235 |" in markdown and "| flagged | yes |" in markdown
    assert "Top (top 1 of 2 rows)" in markdown and "| 3 | 0.9 | a\\|b |" in markdown and "| 1 |" not in markdown
    assert "![A curve](pr.png)" in markdown and '<img src="pr.png"' in html
    assert (tmp_path / "pr.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically, no leftovers


def test_format_value():
    assert format_value(1234567) == "1,234,567" and format_value(1234567, group=False) == "1234567"
    assert format_value(0.5) == "0.5" and format_value(0.0) == "0" and format_value(1e-6) == "1e-06"
    assert format_value(float("nan")) == "" and format_value(None) == "" and format_value(np.False_) == "no"


def test_ground_truth_matching():
    image_truth = {"flipped": {"key": [2, 5]}, "split_pairs": [[1, 4], [0, 3]]}
    positive = noise_positives(image_truth, 4, records=np.array([1, 2, 3, 5]))
    assert positive.tolist() == [False, True, False, True]
    assert noise_positives(image_truth, 4, records=None) is None
    embedding_truth = {"flipped": {"index": [0, 3]}}
    assert noise_positives(embedding_truth, 4).tolist() == [True, False, False, True]
    hit, total = conflict_positives(image_truth, np.array([4, 0, 1]), np.array([1, 2, 3]), 5)
    assert hit.tolist() == [True, False, False] and total == 2
