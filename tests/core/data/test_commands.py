import json

import pytest
from click.testing import CliRunner

from cli import main


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.mark.parametrize("command", [["make-synthetic"], ["inspect"]])
def test_every_data_command_has_help(command):
    result = _run("data", *command, "--help")
    assert result.exit_code == 0 and "Usage:" in result.output


def test_inspect_dataset_and_bin_json(tiny_rec):
    dataset = json.loads(_run("data", "inspect", tiny_rec, "--json").output)
    assert dataset == {"num_images": 48, "num_classes": 6}
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
