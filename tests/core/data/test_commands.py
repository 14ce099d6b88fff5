import json

import pytest
from click.testing import CliRunner

from cli import main
from core.data import recordio
from core.data.recordio import RecordIOReader


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.mark.parametrize("command", [["make-synthetic"], ["inspect"], ["make-rec"], ["make-bin"], ["make-ijb"]])
def test_every_data_command_has_help(command):
    result = _run("data", *command, "--help")
    assert result.exit_code == 0 and "Usage:" in result.output


def _text_fields(output: str) -> dict[str, str]:
    return dict(line.split(": ", 1) for line in output.splitlines())


@pytest.mark.parametrize("name", ["", "val.bin"])
def test_inspect_json_carries_every_field_the_text_shows(tiny_rec, name):
    path = tiny_rec / name if name else tiny_rec
    as_json = json.loads(_run("data", "inspect", path, "--json").output)
    as_text = _text_fields(_run("data", "inspect", path).output)
    assert {key: str(value) for key, value in as_json.items()} == as_text
    expected = ({"num_pairs": 20, "num_positive_pairs": 10, "num_images": 40} if name else
                {"num_images": 48, "num_classes": 6, "records": 55, "records_checked": 55, "empty_classes": 0})
    assert expected.items() <= as_json.items()


@pytest.mark.parametrize("suffix, magic", [(".png", b"\x89PNG\r\n\x1a\n"), (".pdf", b"%PDF"), (".svg", b"<?xml")])
def test_inspect_plot_takes_its_format_from_the_suffix(tiny_rec, tmp_path, suffix, magic):
    result = _run("data", "inspect", tiny_rec, "--plot", tmp_path / f"hist{suffix}")
    assert "images_per_class_median: 8.0" in result.output
    assert (tmp_path / f"hist{suffix}").read_bytes().startswith(magic)


def test_inspect_plot_refuses_a_file_name_that_names_no_figure_format(tiny_rec, tmp_path):
    for name in ("hist.txt", "hist"):
        refused = CliRunner().invoke(main, ["data", "inspect", str(tiny_rec), "--plot", str(tmp_path / name)])
        assert refused.exit_code == 2 and "ending in .png, .pdf, .svg" in refused.output
    assert not (tmp_path / "hist.txt").exists()


def test_a_histogram_of_a_bin_is_refused_not_skipped(tiny_rec, tmp_path):
    result = CliRunner().invoke(main, ["data", "inspect", str(tiny_rec / "val.bin"), "--plot", str(tmp_path / "h.png")])
    assert result.exit_code == 2 and "holds verification pairs, not classes" in result.output


def test_inspect_reports_how_many_records_it_checked(tiny_rec):
    result = _run("data", "inspect", tiny_rec)
    assert "records: 55\nrecords_checked: 55\n" in result.output


def test_inspect_fails_on_a_corrupt_record_magic(tiny_rec, monkeypatch):
    # Opening reads headers of only 2 images here, so the failure must come from inspect's own check.
    monkeypatch.setattr(recordio, "_ID_SAMPLE", 2)
    offset = RecordIOReader(tiny_rec / "train.rec", tiny_rec / "train.idx").offset_of(20)
    data = bytearray((tiny_rec / "train.rec").read_bytes())
    data[offset : offset + 4] = b"JUNK"
    (tiny_rec / "train.rec").write_bytes(bytes(data))
    result = CliRunner().invoke(main, ["data", "inspect", str(tiny_rec), "--json"])
    assert result.exit_code == 2
    message = f"train.rec: record 20: bad magic 0x4B4E554A at byte offset {offset} (expected 0xCED7230A"
    assert message in result.output and result.output.count("\n") == 1
