import numpy as np
import pytest
from PIL import Image

from core.data.pairs import read_pairs
from core.errors import DataError


def write_people(root, people=("Ann_Lee", "Bo_Ma", "Cy_Oh"), per_person=3, size=24, seed=0):
    """One folder per person, LFW's names: Ann_Lee/Ann_Lee_0001.jpg ..."""
    rng = np.random.default_rng(seed)
    for person_index, person in enumerate(people):
        (root / person).mkdir(parents=True)
        for number in range(1, per_person + 1):
            pixels = np.full((size, size, 3), 40 * (person_index + 1), dtype=np.float64)
            pixels += rng.normal(0, 10, pixels.shape)
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(root / person / f"{person}_{number:04d}.png")
    return root


PAIRS = "2\t2\nAnn_Lee\t1\t2\nBo_Ma 1 3\nAnn_Lee\t3\tCy_Oh\t1\n\nBo_Ma 2 Cy_Oh 3\n"


def test_pairs_name_their_images_in_order(tmp_path):
    images = write_people(tmp_path / "lfw")
    (tmp_path / "pairs.txt").write_text(PAIRS)
    paths, same = read_pairs(tmp_path / "pairs.txt", images)
    assert [p.relative_to(images).as_posix() for p in paths] == [
        "Ann_Lee/Ann_Lee_0001.png", "Ann_Lee/Ann_Lee_0002.png", "Bo_Ma/Bo_Ma_0001.png", "Bo_Ma/Bo_Ma_0003.png",
        "Ann_Lee/Ann_Lee_0003.png", "Cy_Oh/Cy_Oh_0001.png", "Bo_Ma/Bo_Ma_0002.png", "Cy_Oh/Cy_Oh_0003.png"]
    assert same.tolist() == [True, True, False, False]


@pytest.mark.parametrize("line, message", [
    ("Ann_Lee 1\n", r"pairs.txt line 2: expected 'name n1 n2' \(same person\) or 'name1 n1 name2 n2'"),
    ("Ann_Lee 1 x\n", r"pairs.txt line 2: image number 'x' of Ann_Lee is not a whole number"),
    ("Ann_Lee 1 9\n", r"pairs.txt line 2: image 9 of Ann_Lee not found \(looked for .*Ann_Lee_0009.jpg"),
])
def test_a_bad_line_is_named_with_its_number(tmp_path, line, message):
    images = write_people(tmp_path / "lfw")
    (tmp_path / "pairs.txt").write_text("1 1\n" + line)
    with pytest.raises(DataError, match=message):
        read_pairs(tmp_path / "pairs.txt", images)
