"""Class sums and means: the block-wise float64 accumulation against a direct reference."""

import numpy as np

from analysis.centers import class_means, class_sums


def test_class_sums_in_blocks_match_a_direct_sum_on_a_memory_map(tmp_path):
    rng = np.random.default_rng(0)
    embeddings = np.lib.format.open_memmap(tmp_path / "emb.npy", mode="w+", dtype=np.float32, shape=(100, 6))
    embeddings[:] = rng.normal(size=(100, 6))
    labels = rng.integers(0, 9, size=100)
    labels[labels == 4] = 5  # class 4 has no samples
    expected = np.zeros((10, 6))
    np.add.at(expected, labels, embeddings.astype(np.float64))
    for rows in (7, 100, 1000):  # a block size that does not divide the rows, exactly all, more than all
        np.testing.assert_allclose(class_sums(embeddings, labels, 10, chunk_rows=rows), expected, rtol=1e-6, atol=1e-6)
    means = class_means(embeddings, labels, 10)
    assert (means.vectors[[4, 9]] == 0).all() and not means.present[[4, 9]].any()
    np.testing.assert_allclose(means.vectors[5], embeddings[labels == 5].mean(axis=0), rtol=1e-5)
