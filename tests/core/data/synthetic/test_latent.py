import json

import numpy as np
import pytest

from core.data.arrays import ArrayDataset
from core.data.synthetic import load_ground_truth
from core.data.synthetic.latent import LatentConfig, identity_codes, make_latent_dataset, render
from core.data.verification_bin import load_verification_pairs
from core.errors import ConfigError


def _config(**changes):
    return LatentConfig(**{**dict(identities=120, heldout_identities=30, val_pairs=60, seed=3), **changes})


def test_counts_pairs_and_files_follow_the_config(tmp_path):
    summary = make_latent_dataset(tmp_path / "d", _config())
    dataset = ArrayDataset(tmp_path / "d")
    truth = load_ground_truth(tmp_path / "d")
    counts = np.asarray(truth["counts"]["images_per_identity"])
    assert len(counts) == 120 and counts.min() >= 2 and counts.max() <= 40
    assert len(dataset) == counts.sum() == summary["num_images"] and dataset.num_classes == 120
    assert np.array_equal(dataset.class_counts(), counts)  # clean: every label is its identity
    assert dataset.images.shape[1:] == (8, 8, 3)
    images, issame = load_verification_pairs(tmp_path / "d" / "val.bin")
    assert len(issame) == 60 and sum(issame) == 30 and images.shape == (120, 8, 8, 3)
    assert truth["kind"] == "latent" and truth["val"]["pairs"] == 60


def test_observations_are_mirror_symmetric_so_the_trainers_flip_changes_nothing():
    observations = render(np.random.default_rng(0).standard_normal((5, 16)).astype(np.float32), 8)
    assert np.array_equal(observations, observations[:, :, ::-1])


def test_families_are_look_alikes_and_codes_nest_as_the_class_count_grows():
    config = _config(identities=400)
    codes = identity_codes(config, 400, 1)
    assert np.array_equal(identity_codes(config, 100, 1), codes[:100])  # 10^3 identities are the first of 10^4's
    distance = np.linalg.norm(codes[:, None] - codes[None], axis=2)
    family = np.arange(400) // config.family_size
    same = (family[:, None] == family[None]) & ~np.eye(400, dtype=bool)
    # spread 0.5 around a center, centers spread 1: family members sit about half as far apart as strangers
    assert distance[same].mean() < 0.6 * distance[~same & ~np.eye(400, dtype=bool)].mean()


def test_noise_ground_truth_is_exact(tmp_path):
    make_latent_dataset(tmp_path / "d", _config(flip_noise=0.1, split=0.2, open_set=0.05, flip_target="lookalike"))
    truth = load_ground_truth(tmp_path / "d")
    dataset = ArrayDataset(tmp_path / "d")
    flipped = truth["flipped"]
    kinds = np.asarray(flipped["kind"])
    keys = np.asarray(flipped["key"])
    assert np.array_equal(dataset.labels[keys - 1], flipped["label"])  # the given labels are the stored ones
    true_label = np.asarray(truth["samples"]["true_label"])
    assert np.array_equal(true_label[keys - 1], flipped["true_label"])
    assert (kinds == "open_set").sum() == truth["counts"]["num_open_set"] > 0
    assert np.all(np.asarray(flipped["true_label"])[kinds == "open_set"] == -1)
    lookalike = kinds == "lookalike"
    assert lookalike.sum() == truth["counts"]["num_flipped"] > 0
    label_identity = np.asarray(truth["label_identity"])
    given = label_identity[np.asarray(flipped["label"])[lookalike]]
    family_size = truth["config"]["family_size"]
    assert np.all(given // family_size == np.asarray(flipped["identity"])[lookalike] // family_size)
    split = np.asarray(truth["split_pairs"])
    assert len(split) == truth["counts"]["num_split_pairs"] == round(0.2 * 120)
    assert np.all(label_identity[split[:, 1]] == split[:, 0])
    assert dataset.num_classes == 120 + len(split)


def test_the_same_config_gives_the_same_bytes(tmp_path):
    for name in ("a", "b"):
        make_latent_dataset(tmp_path / name, _config(flip_noise=0.05))
    for file in ("images.npy", "labels.npy", "val.bin"):
        assert (tmp_path / "a" / file).read_bytes() == (tmp_path / "b" / file).read_bytes()
    assert json.loads((tmp_path / "a" / "ground_truth.json").read_text()) == json.loads(
        (tmp_path / "b" / "ground_truth.json").read_text())


@pytest.mark.parametrize("change,message", [({"side": 7}, "latent.side must be even"),
                                             ({"family_spread": 0.0}, "family_spread must be > 0"),
                                             ({"flip_target": "nearest"}, "flip_target must be one of")])
def test_bad_options_are_named(tmp_path, change, message):
    with pytest.raises(ConfigError, match=message):
        make_latent_dataset(tmp_path / "d", _config(**change))
