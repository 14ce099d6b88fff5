import json

import pytest
from click.testing import CliRunner

from cli import main
from core.data import recordio
from core.data.recordio import RecordIOReader


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.mark.parametrize("command", [["make-synthetic"], ["inspect"]])
def test_every_data_command_has_help(command):
    result = _run("data", *command, "--help")
    assert result.exit_code == 0 and "Usage:" in result.output


def test_inspect_dataset_and_bin_json(tiny_rec):
    dataset = json.loads(_run("data", "inspect", tiny_rec, "--json").output)
    assert dataset == {"num_images": 48, "num_classes": 6, "records": 55, "records_checked": 55}
    pairs = json.loads(_run("data", "inspect", tiny_rec / "val.bin", "--json").output)
    assert pairs == {"num_pairs": 20, "num_positive_pairs": 10}


def test_inspect_plot_writes_png(tiny_rec, tmp_path):
    result = _run("data", "inspect", tiny_rec, "--plot", tmp_path / "hist.png")
    assert "images_per_class_median: 8.0" in result.output
    assert (tmp_path / "hist.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for name in ("hist.txt", "hist"):  # a PNG under another name, or under none, is refused
        refused = CliRunner().invoke(main, ["data", "inspect", str(tiny_rec), "--plot", str(tmp_path / name)])
        assert refused.exit_code == 2 and "ending in .png" in refused.output
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
