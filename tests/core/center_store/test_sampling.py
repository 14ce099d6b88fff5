import pytest
import torch

from core.center_store.sampling import class_shard, first_occurrence, init_centers, sample_without, stratified_columns


def test_sample_without_is_uniform_and_excludes():
    generator = torch.Generator().manual_seed(0)
    excluded = torch.tensor([0, 3, 4, 9])
    counts = torch.zeros(10)
    for _ in range(3000):
        drawn = sample_without(excluded, 10, 3, generator)
        assert drawn.unique().numel() == 3
        counts[drawn] += 1
    assert counts[excluded].sum() == 0
    free = counts[[1, 2, 5, 6, 7, 8]]
    # Each of the 6 free values is drawn with probability 1/2 per call: 1500 +- ~4 sigma.
    assert (free - 1500).abs().max() < 160


def test_stratified_columns_hold_every_positive_and_uniform_distinct_negatives():
    generator = torch.Generator().manual_seed(0)
    total, count = 23, 9
    local = torch.tensor([4, 4, 17, 30, -2, 0])  # 30 and -2 belong to other shards
    in_shard = (local >= 0) & (local < total)
    counts = torch.zeros(total)
    draws = 4000
    for _ in range(draws):
        index, positives = stratified_columns(local, in_shard, total, count, generator)
        assert index.numel() == count and torch.equal(index, torch.sort(index.unique()).values)
        assert positives.tolist() == [0, 4, 17, total, total, total]
        assert set(positives[:3].tolist()) <= set(index.tolist())
        counts[index] += 1
    assert (counts[[0, 4, 17]] == draws).all()
    free = counts[[c for c in range(total) if c not in (0, 4, 17)]]
    # each of the 20 free classes: probability 6 / 20 per draw -> 1200 +- ~4 sigma (29)
    assert (free - draws * 6 / 20).abs().max() < 120


def test_first_occurrence_points_every_copy_at_the_first():
    assert first_occurrence(torch.tensor([5, 3, 5, 7, 3, 5])).tolist() == [0, 1, 0, 3, 1, 0]
    values = torch.randint(20, (500,), generator=torch.Generator().manual_seed(0))
    expected = [values.tolist().index(v) for v in values.tolist()]
    assert first_occurrence(values).tolist() == expected


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="the GPU draws its own values"))])
def test_shards_cover_classes_and_init_is_shard_independent(device):
    shards = [class_shard(10, r, 3) for r in range(3)]
    assert shards == [(0, 4), (4, 3), (7, 3)]
    whole = init_centers(0, 10, 4, seed=5, device=torch.device(device))
    parts = torch.cat([init_centers(start, count, 4, seed=5, device=torch.device(device)) for start, count in shards])
    assert torch.equal(whole, parts) and whole.device.type == device
    # rows spanning two draw chunks, sharded across the chunk boundary
    rows = 1 << 16
    assert torch.equal(init_centers(rows - 3, 6, 4, seed=1, device=torch.device(device)),
                       torch.cat([init_centers(rows - 3, 3, 4, seed=1, device=torch.device(device)),
                                  init_centers(rows, 3, 4, seed=1, device=torch.device(device))]))
    assert abs(init_centers(0, 4000, 64, seed=0, device=torch.device(device)).std().item() - 0.01) < 5e-4
