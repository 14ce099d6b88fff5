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


def test_markdown_bold_and_code_render_as_html_with_everything_else_escaped():
    report = Report(title="t")
    report.paragraph("**Warning:** 3 < 4 & **<b>not a tag</b>** `**kept**` ** lone")
    report.bullets(["**a**b"])
    html = report.to_html()
    assert ("<p><b>Warning:</b> 3 &lt; 4 &amp; <b>&lt;b&gt;not a tag&lt;/b&gt;</b> <code>**kept**</code> ** lone</p>"
            in html)
    assert "<li><b>a</b>b</li>" in html
    assert "**Warning:** 3 < 4" in report.to_markdown()  # Markdown keeps its own markup


def test_columns_empty_in_every_shown_row_are_left_out_and_named():
    frame = pd.DataFrame({"label": [1, 2, 3], "center_norm": [np.nan, np.nan, 2.5], "path": ["", "", "x"],
                          "record": pd.array([pd.NA, pd.NA, 7], dtype="Int64"), "flagged": [False, False, True],
                          "zero": [0.0, 0.0, 0.0]})
    report = Report(title="t")
    report.table(frame, "Classes", max_rows=2)
    report.table(frame, "All classes")
    markdown = report.to_markdown()
    assert "Classes (top 2 of 3 rows; empty here, not shown: center_norm, path, record)" in markdown
    assert "| label | flagged | zero |\n| --- | --- | --- |\n| 1 | no | 0 |\n| 2 | no | 0 |" in markdown
    assert "| label | center_norm | path | record | flagged | zero |" in markdown  # row 3 fills them
    assert "<th>center_norm</th>" in report.to_html() and "not shown" not in markdown.split("All classes")[1]
    empty = Report(title="t")
    empty.table(frame.head(0), "No rows")
    assert "No rows\n\n(no rows)" in empty.to_markdown()


def test_a_pdf_figure_is_embedded_in_html_and_linked_in_markdown(tmp_path):
    report = Report(title="t")
    pr_curves([("noise", np.array([1.0, 0.5]), np.array([0.0, 1.0]), 0.75, 0.1)], tmp_path / "pr.pdf")
    report.image(tmp_path / "pr.pdf", "A curve")
    html_path, md_path = report.write(tmp_path)
    assert (tmp_path / "pr.pdf").read_bytes().startswith(b"%PDF")
    assert '<object data="pr.pdf" type="application/pdf"' in html_path.read_text()
    assert "[pr.pdf](pr.pdf)" in md_path.read_text() and "![" not in md_path.read_text()
