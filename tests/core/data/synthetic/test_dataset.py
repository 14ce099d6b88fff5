"""The rendered dataset: determinism, recorded ground truth, held-out pairs, safe replacement."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from core.data.recordio import RecordDataset, unpack_record
from core.data.synthetic import dataset
from core.data.synthetic.dataset import SyntheticConfig, load_ground_truth, make_synthetic_dataset
from core.data.verification_bin import load_verification_pairs, read_verification_bin
from core.errors import ConfigError, DataError

TINY = SyntheticConfig(identities=12, heldout_identities=8, min_images=2, max_images=8, flip_noise=0.1,
                       split=0.25, val_pairs=24, tail_max_images=4, tail_min_identities=2, seed=3)
FILES = ["train.rec", "train.idx", "property", "val.bin", "val_tail.bin", "ground_truth.json", "preview.png"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("synthetic") / "tiny"
    summary = make_synthetic_dataset(root, TINY, progress=False, workers=1)
    return root, summary


def _bytes(root: Path, name: str) -> bytes:
    return (root / name).read_bytes()


def test_writes_every_file_and_a_consistent_summary(tiny):
    root, summary = tiny
    for name in FILES:
        assert (root / name).is_file(), name
    assert summary["num_classes"] == TINY.identities + round(TINY.split * TINY.identities)
    assert summary["num_split_pairs"] == round(TINY.split * TINY.identities)
    assert summary["num_flipped"] == round(TINY.flip_noise * summary["num_images"])
    assert summary["val_pairs"] == TINY.val_pairs
    leftovers = [p.name for p in root.parent.iterdir() if p.name != root.name]
    assert leftovers == [], "temporary folders must not outlive the generation"


def test_same_seed_is_byte_identical_whatever_the_workers(tiny, tmp_path):
    root, _ = tiny
    again = tmp_path / "again"
    make_synthetic_dataset(again, TINY, progress=False, workers=2)
    for name in FILES:
        assert _bytes(root, name) == _bytes(again, name), name


def test_different_seed_gives_different_data(tiny, tmp_path):
    root, _ = tiny
    other = tmp_path / "other"
    make_synthetic_dataset(other, replace(TINY, seed=TINY.seed + 1), progress=False, workers=1)
    assert _bytes(root, "train.rec") != _bytes(other, "train.rec")
    assert _bytes(root, "val.bin") != _bytes(other, "val.bin")


def test_label_noise_options_do_not_change_identities_or_images(tiny, tmp_path):
    root, _ = tiny
    clean = tmp_path / "clean"
    make_synthetic_dataset(clean, replace(TINY, flip_noise=0.0, split=0.0), progress=False, workers=1)
    noisy_gt, clean_gt = load_ground_truth(root), load_ground_truth(clean)
    assert noisy_gt["identities"] == clean_gt["identities"]
    assert _bytes(root, "val.bin") == _bytes(clean, "val.bin")
    # the same person's images are the same bytes, only their labels/order differ
    noisy, plain = RecordDataset(root), RecordDataset(clean)
    payload = {}
    for ds, gt in ((noisy, noisy_gt), (plain, clean_gt)):
        images = {}
        for i, key in enumerate(ds.image_keys):
            ident = gt["samples"]["identity"][i]
            index = gt["samples"]["image_index"][i]
            images[(ident, index)] = unpack_record(ds.reader.read(int(key)))[1]
        payload[id(ds)] = images
    assert payload[id(noisy)] == payload[id(plain)]


def test_ground_truth_matches_the_records(tiny):
    root, summary = tiny
    gt = load_ground_truth(root)
    ds = RecordDataset(root)
    n = len(ds)
    counts = gt["counts"]
    assert counts["num_images"] == n == summary["num_images"]
    assert counts["num_classes"] == ds.num_classes
    assert counts["images_per_label"] == np.bincount(ds.labels, minlength=ds.num_classes).tolist()
    assert sum(counts["images_per_identity"]) == n
    assert list(ds.image_keys) == list(range(1, n + 1))
    label_identity = np.asarray(gt["label_identity"])
    true_label = np.asarray(gt["samples"]["true_label"])
    identity = np.asarray(gt["samples"]["identity"])
    assert np.array_equal(label_identity[true_label], identity)

    flipped = gt["flipped"]
    assert len(flipped["key"]) == counts["num_flipped"] > 0
    keys = np.asarray(flipped["key"])
    rows = keys - 1
    assert np.array_equal(ds.labels[rows], flipped["label"]), "flipped keys carry the given label in the rec"
    assert np.all(np.asarray(flipped["true_label"]) != np.asarray(flipped["label"]))
    assert np.array_equal(true_label[rows], flipped["true_label"])
    assert np.array_equal(identity[rows], flipped["identity"])
    assert np.all(label_identity[np.asarray(flipped["label"])] != np.asarray(flipped["identity"])), \
        "a flip never lands on another label of the same person"
    clean = np.ones(n, dtype=bool)
    clean[rows] = False
    assert np.array_equal(ds.labels[clean], true_label[clean]), "only the recorded images are mislabelled"


def test_split_pairs_are_one_person_under_two_labels(tiny):
    root, _ = tiny
    gt = load_ground_truth(root)
    ds = RecordDataset(root)
    pairs = gt["split_pairs"]
    assert len(pairs) == gt["counts"]["num_split_pairs"] == round(TINY.split * TINY.identities)
    identity = np.asarray(gt["samples"]["identity"])
    true_label = np.asarray(gt["samples"]["true_label"])
    params = {entry["id"]: entry["params"] for entry in gt["identities"]}
    for original, extra in pairs:
        assert original < TINY.identities <= extra < ds.num_classes
        assert gt["label_identity"][extra] == original
        for label in (original, extra):
            correct = true_label == label
            assert correct.any(), f"label {label} has correctly labelled images"
            assert set(identity[correct]) == {original}, "both labels hold images of the same person"
        assert params[original]["hair_style"], "the person's appearance is recorded once, for both labels"


def test_dataset_counts_are_long_tailed(tiny):
    root, _ = tiny
    counts = np.asarray(load_ground_truth(root)["counts"]["images_per_identity"])
    assert counts.min() >= TINY.min_images and counts.max() <= TINY.max_images
    assert len(set(counts.tolist())) > 1


def test_val_pairs_are_balanced_and_held_out(tiny):
    root, _ = tiny
    gt = load_ground_truth(root)
    images, issame = load_verification_pairs(root / "val.bin")
    assert images.shape == (2 * TINY.val_pairs, TINY.image_size, TINY.image_size, 3)
    assert issame.sum() == len(issame) // 2 == TINY.val_pairs // 2
    heldout = set(gt["heldout"]["identities"])
    training = set(gt["label_identity"])
    assert heldout and not heldout & training
    for name in ("val", "val_tail"):
        info = gt[name]
        a, b = np.asarray(info["identity_a"]), np.asarray(info["identity_b"])
        same = np.asarray(info["issame"])
        assert set(a) | set(b) <= heldout
        assert np.array_equal(a == b, same)
        pairs = set(zip(info["identity_a"], info["image_a"], info["identity_b"], info["image_b"]))
        assert len(pairs) == len(same) == info["pairs"], "pairs are distinct"
    tail_ids = set(gt["val_tail"]["identities"])
    per_identity = dict(zip(gt["heldout"]["identities"], gt["heldout"]["images_per_identity"]))
    assert all(per_identity[i] <= TINY.tail_max_images for i in tail_ids)
    assert set(gt["val_tail"]["identity_a"]) | set(gt["val_tail"]["identity_b"]) <= tail_ids
    _, tail_same = read_verification_bin(root / "val_tail.bin")
    assert tail_same.sum() * 2 == len(tail_same) == gt["val_tail"]["pairs"]
    # no held-out image appears in training
    ds = RecordDataset(root)
    train_bytes = {unpack_record(ds.reader.read(int(k)))[1] for k in ds.image_keys}
    val_bytes, _ = read_verification_bin(root / "val.bin")
    assert not train_bytes & set(val_bytes)


def test_preview_and_images_look_right(tiny):
    root, _ = tiny
    from PIL import Image

    with Image.open(root / "preview.png") as preview:
        assert preview.width > 4 * TINY.image_size and preview.height >= TINY.image_size
    image = RecordDataset(root).load_image(0)
    assert image.shape == (112, 112, 3) and image.dtype == np.uint8
    assert image.std() > 10, "a rendered face, not a blank"


def test_refuses_to_replace_foreign_data_and_replaces_its_own(tiny, tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="refusing"):
        make_synthetic_dataset(foreign, TINY, progress=False, workers=1)
    assert (foreign / "notes.txt").read_text() == "mine"
    small = replace(TINY, identities=4, heldout_identities=2, val_pairs=4, split=0.0, flip_noise=0.0)
    target = tmp_path / "own"
    make_synthetic_dataset(target, small, progress=False, workers=1)
    make_synthetic_dataset(target, replace(small, seed=9), progress=False, workers=1)
    assert load_ground_truth(target)["seed"] == 9
    assert sorted(p.name for p in tmp_path.iterdir()) == ["foreign", "own"]
    (target / "counts.png").write_bytes(b"a user's plot")  # kept beside an earlier synthetic set: not replaced
    with pytest.raises(DataError, match="counts.png, which regenerating would delete"):
        make_synthetic_dataset(target, small, progress=False, workers=1)
    assert load_ground_truth(target)["seed"] == 9 and (target / "counts.png").read_bytes() == b"a user's plot"


def test_interrupted_generation_leaves_nothing(tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise RuntimeError("interrupted")

    monkeypatch.setattr(dataset, "write_verification_bin", fail)
    small = replace(TINY, identities=4, heldout_identities=2, val_pairs=4, split=0.0, flip_noise=0.0)
    with pytest.raises(RuntimeError, match="interrupted"):
        make_synthetic_dataset(tmp_path / "broken", small, progress=False, workers=1)
    assert list(tmp_path.iterdir()) == []


def test_bad_options_fail_early_with_the_option_name(tmp_path):
    for bad, name in [(replace(TINY, flip_noise=1.5), "flip_noise"), (replace(TINY, split=-0.1), "split"),
                      (replace(TINY, min_images=5, max_images=3), "min_images"),
                      (replace(TINY, identities=1), "identities")]:
        with pytest.raises(ConfigError, match=name):
            make_synthetic_dataset(tmp_path / "x", bad, progress=False, workers=1)
    with pytest.raises(ConfigError, match="flip_noise"):
        make_synthetic_dataset(tmp_path / "x", replace(TINY, min_images=2, max_images=2, flip_noise=0.9),
                               progress=False, workers=1)
    assert not (tmp_path / "x").exists()


def test_load_ground_truth(tmp_path):
    assert load_ground_truth(tmp_path) is None
    (tmp_path / "ground_truth.json").write_text("{not json")
    with pytest.raises(DataError, match="ground_truth.json"):
        load_ground_truth(tmp_path)
    (tmp_path / "ground_truth.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(DataError, match="format"):
        load_ground_truth(tmp_path)


NOISY_SHAPES = replace(TINY, identities=16, renderer="shapes", flip_noise=0.15, flip_target="lookalike",
                       open_set=0.1, seed=5)


@pytest.fixture(scope="module")
def noisy_shapes(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic") / "shapes"
    make_synthetic_dataset(root, NOISY_SHAPES, progress=False, workers=1)
    return root


def test_open_set_images_are_recorded_as_noise_of_people_outside_the_set(noisy_shapes):
    gt = load_ground_truth(noisy_shapes)
    ds = RecordDataset(noisy_shapes)
    counts = gt["counts"]
    kinds = np.asarray(gt["flipped"]["kind"])
    open_rows = np.asarray(gt["flipped"]["key"])[kinds == "open_set"] - 1
    assert len(open_rows) == counts["num_open_set"] == round(0.1 * sum(counts["images_per_identity"]))
    assert (kinds == "lookalike").sum() == counts["num_flipped"] > 0 and set(kinds) == {"lookalike", "open_set"}
    assert counts["num_images"] == len(ds) == sum(counts["images_per_identity"]) + counts["num_open_set"]
    samples = gt["samples"]
    assert np.all(np.asarray(samples["true_label"])[open_rows] == -1)
    outsiders = {entry["id"] for entry in gt["identities"] if entry["role"] == "open_set"}
    assert set(np.asarray(samples["identity"])[open_rows]) <= outsiders
    assert not outsiders & set(gt["heldout"]["identities"]) and min(outsiders) >= NOISY_SHAPES.identities
    assert np.array_equal(ds.labels[open_rows], np.asarray(gt["flipped"]["label"])[kinds == "open_set"])
    clean = np.ones(len(ds), dtype=bool)
    clean[np.asarray(gt["flipped"]["key"]) - 1] = False
    assert np.array_equal(ds.labels[clean], np.asarray(samples["true_label"])[clean])


def test_lookalike_flips_go_to_the_identities_that_look_most_alike(noisy_shapes):
    gt = load_ground_truth(noisy_shapes)
    kinds = np.asarray(gt["flipped"]["kind"])
    flips = kinds == "lookalike"
    given_identity = np.asarray(gt["label_identity"])[np.asarray(gt["flipped"]["label"])[flips]]
    own = np.asarray(gt["flipped"]["identity"])[flips]
    params = [entry["params"] for entry in gt["identities"] if entry["role"] == "train"]
    # badges come in families of four look-alikes: a look-alike flip stays in the family far more often than chance
    same_family = np.mean([params[a]["family"] == params[b]["family"] for a, b in zip(own, given_identity)])
    assert np.all(given_identity != own)
    assert same_family > 0.8 > 3 / (NOISY_SHAPES.identities - 1)


def test_shapes_identities_come_in_families_of_lookalikes():
    from core.data.synthetic.shapes import FAMILY_SIZE, draw_badge_params

    first, sibling, stranger = (draw_badge_params(0, 1, i) for i in (0, 1, FAMILY_SIZE))
    assert first["family"] == sibling["family"] != stranger["family"]
    assert first["body"] == sibling["body"] and first != sibling
    assert draw_badge_params(0, 1, 0) == first  # deterministic from (seed, stream, index)


def test_lookalike_neighbours_are_the_nearest_rows():
    looks = np.array([[10.0], [200.0], [20.0], [190.0], [100.0]])
    nearest = dataset.nearest_identities(looks, neighbours=2)
    assert nearest.tolist() == [[2, 4], [3, 4], [0, 4], [1, 4], [2, 0]]


def test_new_options_fail_early_with_their_names(tmp_path):
    for bad, name in [(replace(TINY, renderer="cartoon"), "renderer"),
                      (replace(TINY, flip_target="any"), "flip_target"), (replace(TINY, open_set=1.0), "open_set")]:
        with pytest.raises(ConfigError, match=name):
            make_synthetic_dataset(tmp_path / "x", bad, progress=False, workers=1)
