import numpy as np
import pytest

from core.data.arrays import IMAGES_FILE, LABELS_FILE, ArrayDataset, write_arrays
from core.data.loader import open_dataset, prepare_dataset
from core.errors import DataError


def test_arrays_round_trip_through_open_dataset(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (7, 4, 4, 3), dtype=np.uint8)
    labels = np.array([0, 0, 1, 2, 2, 2, 1])
    write_arrays(tmp_path, images, labels)
    dataset = open_dataset(tmp_path)
    assert isinstance(dataset, ArrayDataset) and dataset.num_classes == 3 and len(dataset) == 7
    assert np.array_equal(dataset.load_image(4), images[4]) and dataset.source_of(4) == {"record": 5}
    assert np.array_equal(dataset.class_counts(), [2, 2, 3])
    prepared = prepare_dataset(tmp_path, 4, progress=False)  # cached at the stored size: no resize
    assert np.array_equal(prepared.load_image(6), images[6])


@pytest.mark.parametrize("case,message", [
    ("float images", "expected uint8 images"),
    ("short labels", "expected 7 integer labels"),
    ("negative label", "label -1 at row 3"),
    ("pickled", "not a readable numpy array"),
])
def test_bad_arrays_name_the_file_and_what_was_expected(tmp_path, case, message):
    images = np.zeros((7, 4, 4, 3), dtype=np.float32 if case == "float images" else np.uint8)
    labels = np.zeros(6 if case == "short labels" else 7, dtype=np.int64)
    labels[3] = -1 if case == "negative label" else 0
    np.save(tmp_path / IMAGES_FILE, images)
    if case == "pickled":  # an object array needs pickle to load: refused, never run
        np.save(tmp_path / LABELS_FILE, np.array([{"a": 1}] * 7, dtype=object), allow_pickle=True)
    else:
        np.save(tmp_path / LABELS_FILE, labels)
    with pytest.raises(DataError, match=message):
        ArrayDataset(tmp_path)
