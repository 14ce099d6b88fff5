import numpy as np
import pytest
from click.testing import CliRunner

from cli import main
from core.data.folder import FolderDataset
from core.data.recordio import RecordDataset
from core.data.verification_bin import read_verification_bin
from core.errors import ConfigError
from tests.core.data.test_pairs import PAIRS, write_people


def _invoke(*args):
    result = CliRunner().invoke(main, [*map(str, args)])
    assert result.exit_code == 0, result.output
    return result.output


def test_make_rec_packs_a_folder_that_reads_back_image_for_image(tmp_path):
    folder = write_people(tmp_path / "faces")
    output = _invoke("data", "make-rec", "--data", folder, "--out", tmp_path / "packed", "--quiet")
    assert "Wrote 9 images of 3 classes (24x24)" in output
    source, packed = FolderDataset(folder), RecordDataset(tmp_path / "packed")
    assert packed.num_classes == 3 and packed.labels.tolist() == sorted(source.labels.tolist())
    order = np.argsort(source.labels, kind="stable")
    for position, index in enumerate(order):  # PNG bytes go in as they are: the same pixels come out
        assert np.array_equal(packed.load_image(position), source.load_image(int(index)))


def test_make_rec_never_writes_over_a_set(tmp_path):
    from core.data.packing import pack_rec

    folder = write_people(tmp_path / "faces")
    pack_rec(folder, tmp_path / "packed", progress=False)
    before = (tmp_path / "packed" / "train.rec").read_bytes()
    with pytest.raises(ConfigError, match="exists and is not an empty directory"):
        pack_rec(folder, tmp_path / "packed", progress=False)
    assert (tmp_path / "packed" / "train.rec").read_bytes() == before


def test_make_bin_round_trips_and_evaluates_like_the_pairs_it_came_from(tmp_path):
    import json

    import torch

    from core.backbones import build_backbone

    images = write_people(tmp_path / "lfw")
    # PAIRS, then 16 more: 20 pairs for the 10 folds of the protocol
    people = ("Ann_Lee", "Bo_Ma", "Cy_Oh")
    lines = [f"{people[i % 3]} {1 + i % 3} {2 + i % 2 + (i % 3 == 1)}" if i % 2 == 0 else
             f"{people[i % 3]} {1 + i % 3} {people[(i + 1) % 3]} {1 + (i // 2) % 3}" for i in range(16)]
    (tmp_path / "pairs.txt").write_text(PAIRS + "\n".join(lines) + "\n")
    _invoke("data", "make-bin", "--pairs", tmp_path / "pairs.txt", "--images", images, "--out", tmp_path / "mine.bin")
    encoded, same = read_verification_bin(tmp_path / "mine.bin")
    assert same.tolist()[:4] == [True, True, False, False] and len(same) == 20
    assert encoded[0] == (images / "Ann_Lee" / "Ann_Lee_0001.png").read_bytes()
    torch.manual_seed(0)
    torch.save(build_backbone("tiny", 8, 16).state_dict(), tmp_path / "w.pth")
    model = [tmp_path / "w.pth", "--backbone", "tiny", "--input-size", 16, "--json", "--device", "cpu"]
    from_bin = json.loads(_invoke("eval", *model, "--val", tmp_path / "mine.bin"))["mine"]
    from_pairs = json.loads(_invoke("eval", *model, "--pairs", tmp_path / "pairs.txt", "--images", images))["pairs"]
    assert from_bin == from_pairs


def test_eval_wants_something_to_evaluate_on(tmp_path):
    result = CliRunner().invoke(main, ["eval", str(tmp_path), "--pairs", str(tmp_path / "p.txt")])
    assert result.exit_code == 2 and "--pairs and --images go together" in result.output
    result = CliRunner().invoke(main, ["eval", str(tmp_path)])
    assert result.exit_code == 2
    assert "give --val FILE.bin (repeatable), --pairs pairs.txt --images DIR, or --ijb DIR" in result.output


def test_make_rec_refuses_an_image_of_another_size_naming_it(tmp_path):
    from PIL import Image

    from core.data.packing import pack_rec
    from core.errors import DataError

    folder = write_people(tmp_path / "faces")
    odd = folder / "Bo_Ma" / "Bo_Ma_0002.png"
    Image.new("RGB", (30, 30)).save(odd)
    with pytest.raises(DataError, match=r"Bo_Ma_0002.png: 30x30 pixels, but the set's first image is 24x24"):
        pack_rec(folder, tmp_path / "packed", progress=False)
    assert not (tmp_path / "packed").exists() or not any((tmp_path / "packed").iterdir())
    with pytest.raises(ConfigError, match="exists and is not an empty directory"):
        pack_rec(folder, folder, progress=False)  # into the data itself


def test_make_bin_refuses_a_set_evaluation_would_refuse(tmp_path):
    from core.data.packing import write_pairs_bin
    from core.errors import DataError

    images = write_people(tmp_path / "lfw")
    (tmp_path / "same.txt").write_text("Ann_Lee 1 2\nBo_Ma 1 2\nCy_Oh 1 3\n")
    with pytest.raises(DataError, match="3 pairs, 3 of one person; verification needs at least 10 pairs"):
        write_pairs_bin(tmp_path / "same.txt", images, tmp_path / "same.bin")
    assert not (tmp_path / "same.bin").exists()
