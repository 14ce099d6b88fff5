import pytest
import torch
import torch.nn.functional as F

from core.errors import ConfigError
from core.loss import MarginSoftmaxLoss
from core.margins import build_margin
from partial_fc.sampler import (PartialFCSampler, class_shard, first_occurrence, init_centers, sample_without,
                                stratified_columns)



@pytest.fixture(autouse=True)
def float64_by_default():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def _run_step(sampler, embeddings, labels, margin, lr=0.1):
    selection = sampler.select(embeddings, labels, {})
    loss = MarginSoftmaxLoss(margin)(selection)
    loss.backward()
    sampler.collect(selection)
    sampler.step(lr)
    return loss, selection


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_rate_one_equals_full_softmax(optimizer):
    torch.manual_seed(0)
    num_classes, dim, batch = 11, 6, 8
    margin = build_margin("arcface", scale=16.0)
    sampler = PartialFCSampler(num_classes, dim, sample_rate=1.0, optimizer=optimizer, momentum=0.9,
                               weight_decay=5e-4, dtype=torch.float64)
    linear = torch.nn.Linear(dim, num_classes, bias=False)
    with torch.no_grad():
        linear.weight.copy_(sampler.centers)
    reference_optimizer = (torch.optim.SGD(linear.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
                           if optimizer == "sgd" else
                           torch.optim.AdamW(linear.parameters(), lr=0.1, weight_decay=5e-4))
    for _ in range(3):
        embeddings = torch.randn(batch, dim)
        labels = torch.randint(num_classes, (batch,))
        ours = embeddings.clone().requires_grad_(True)
        theirs = embeddings.clone().requires_grad_(True)
        loss, _ = _run_step(sampler, ours, labels, margin)
        cosine = (F.normalize(theirs) @ F.normalize(linear.weight).t()).clamp(-1, 1)
        reference_loss = F.cross_entropy(margin(cosine, labels), labels)
        reference_optimizer.zero_grad()
        reference_loss.backward()
        reference_optimizer.step()
        torch.testing.assert_close(loss, reference_loss, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(ours.grad, theirs.grad, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(sampler.centers, linear.weight.detach(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_unsampled_centers_and_state_are_bit_identical(optimizer):
    torch.manual_seed(1)
    num_classes, dim = 200, 8
    sampler = PartialFCSampler(num_classes, dim, sample_rate=0.1, optimizer=optimizer, dtype=torch.float64)
    margin = build_margin("cosface", scale=32.0)
    # A first step gives some rows non-zero optimizer state, so drift would show.
    _run_step(sampler, torch.randn(4, dim, requires_grad=True), torch.randint(num_classes, (4,)), margin)
    before = {k: v.clone() for k, v in sampler.state_dict().items() if isinstance(v, torch.Tensor)}
    _, selection = _run_step(sampler, torch.randn(4, dim, requires_grad=True), torch.randint(num_classes, (4,)),
                             margin)
    touched = torch.zeros(num_classes, dtype=torch.bool)
    touched[selection.state["index"]] = True
    assert touched.sum() == sampler.num_sample == 20
    after = sampler.state_dict()
    for key, value in before.items():
        if value.ndim >= 1 and value.shape[0] == num_classes and "updates" not in key:
            assert torch.equal(after[key][~touched], value[~touched]), key
            if key == "centers":
                assert not torch.equal(after[key][touched], value[touched])


def test_selection_keeps_positives_and_remaps_labels():
    sampler = PartialFCSampler(100, 4, sample_rate=0.2, seed=3)
    labels = torch.tensor([5, 99, 5, 0, 42])
    selection = sampler.select(torch.randn(5, 4), labels, {})
    index = selection.state["index"]
    assert index.numel() == 20 and torch.equal(index, torch.sort(torch.unique(index)).values)
    assert torch.equal(index[selection.targets], labels)


def test_positives_only_when_they_exceed_the_sample():
    sampler = PartialFCSampler(100, 4, sample_rate=0.03)
    labels = torch.tensor([1, 2, 3, 4, 5, 1])
    selection = sampler.select(torch.randn(6, 4), labels, {})
    assert torch.equal(selection.state["index"], torch.tensor([1, 2, 3, 4, 5]))


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


def test_stratified_sampler_trains_only_its_rows_and_counts_like_uniform():
    torch.manual_seed(3)
    margin = build_margin("cosface", scale=16.0)
    sampler = PartialFCSampler(50, 6, sample_rate=0.2, sampling="stratified", dtype=torch.float64)
    labels = torch.tensor([3, 3, 8, 41])
    before = sampler.centers.clone()
    _, selection = _run_step(sampler, torch.randn(4, 6, requires_grad=True), labels, margin)
    index = selection.state["index"]
    assert index.numel() == sampler.num_sample == 10 and {3, 8, 41} <= set(index.tolist())
    untouched = torch.ones(50, dtype=torch.bool)
    untouched[index] = False
    assert torch.equal(sampler.centers[untouched], before[untouched])
    assert not torch.equal(sampler.centers[index], before[index])
    expected_positive = torch.zeros(50, dtype=torch.int64)
    expected_positive[[3, 8, 41]] = 1
    assert torch.equal(sampler.positive_updates, expected_positive)
    assert torch.equal(sampler.negative_updates, (~untouched).long() - expected_positive)
    assert sampler.negative_updates.sum() == 7


def test_counters_count_positive_and_passive_updates():
    sampler = PartialFCSampler(10, 4, sample_rate=1.0, dtype=torch.float64)
    margin = build_margin("cosface")
    _run_step(sampler, torch.randn(3, 4, requires_grad=True), torch.tensor([1, 1, 2]), margin)
    expected_negative = torch.ones(10, dtype=torch.int64)
    expected_negative[[1, 2]] = 0
    assert torch.equal(sampler.negative_updates, expected_negative)
    assert sampler.positive_updates.tolist() == [0, 1, 1, 0, 0, 0, 0, 0, 0, 0]


def test_accumulated_micro_batches_equal_one_batch():
    torch.manual_seed(2)
    margin = build_margin("arcface", scale=8.0)
    whole = PartialFCSampler(30, 5, sample_rate=1.0, dtype=torch.float64)
    split = PartialFCSampler(30, 5, sample_rate=1.0, dtype=torch.float64)
    embeddings, labels = torch.randn(8, 5), torch.randint(30, (8,))
    _run_step(whole, embeddings.clone().requires_grad_(True), labels, margin)
    for part in (slice(0, 4), slice(4, 8)):
        selection = split.select(embeddings[part].clone().requires_grad_(True), labels[part], {})
        (MarginSoftmaxLoss(margin)(selection) / 2).backward()
        split.collect(selection)
    split.step(0.1)
    torch.testing.assert_close(split.centers, whole.centers, rtol=1e-12, atol=1e-14)


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


def test_bad_sample_rate_or_sampling():
    with pytest.raises(ConfigError, match="--sample-rate"):
        PartialFCSampler(10, 4, sample_rate=0.0)
    with pytest.raises(ConfigError, match="--pfc-sampling must be uniform or stratified"):
        PartialFCSampler(10, 4, sample_rate=0.5, sampling="topk")


def test_first_occurrence_points_every_copy_at_the_first():
    assert first_occurrence(torch.tensor([5, 3, 5, 7, 3, 5])).tolist() == [0, 1, 0, 3, 1, 0]
    values = torch.randint(20, (500,), generator=torch.Generator().manual_seed(0))
    expected = [values.tolist().index(v) for v in values.tolist()]
    assert first_occurrence(values).tolist() == expected


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
@pytest.mark.parametrize("sampling", ["uniform", "stratified"])
def test_accumulated_sampled_micro_batches_update_each_touched_row_once(optimizer, sampling):
    """Two micro-batches sharing rows: the same step as summing their gradients over the union of rows."""
    import copy

    torch.manual_seed(4)
    margin = build_margin("arcface", scale=8.0)
    sampler = PartialFCSampler(40, 5, sample_rate=0.25, optimizer=optimizer, dtype=torch.float64, sampling=sampling)
    for _ in range(2):  # non-zero momentum / moments first
        _run_step(sampler, torch.randn(6, 5, requires_grad=True), torch.randint(40, (6,)), margin)
    reference = copy.deepcopy(sampler)
    for _ in range(2):
        selection = sampler.select(torch.randn(6, 5, requires_grad=True), torch.randint(40, (6,)), {})
        (MarginSoftmaxLoss(margin)(selection) / 2).backward()
        sampler.collect(selection)
    pending = [(index.clone(), grad.clone()) for index, grad in sampler._pending]
    sampler.step(0.1)
    shared = set(pending[0][0].tolist()) & set(pending[1][0].tolist())
    assert shared  # otherwise this test would not exercise repeated rows
    rows = torch.unique(torch.cat([index for index, _ in pending]))
    dense = torch.zeros(40, 5)
    for index, grad in pending:
        dense.index_add_(0, index, grad)
    reference.center_optimizer.update(reference.centers, rows, dense[rows], 0.1)
    torch.testing.assert_close(sampler.centers, reference.centers, rtol=1e-12, atol=1e-14)
    for name, buffer in reference.center_optimizer.named_buffers():
        torch.testing.assert_close(dict(sampler.center_optimizer.named_buffers())[name], buffer, rtol=1e-12,
                                   atol=1e-14)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="host syncs only exist on CUDA")
@pytest.mark.parametrize("micro_batches", [1, 2])
@pytest.mark.parametrize("chunk_columns", [None, 4096])  # 4096: the ~10K-column selection takes the chunked loss
def test_stratified_step_never_waits_for_the_host(micro_batches, chunk_columns):
    device = torch.device("cuda")
    sampler = PartialFCSampler(100_000, 64, sample_rate=0.1, sampling="stratified", device=device,
                               dtype=torch.float32)
    loss_fn = MarginSoftmaxLoss(build_margin("arcface"), chunk_columns=chunk_columns)
    embeddings = torch.randn(128, 64, device=device, dtype=torch.float32, requires_grad=True)
    labels = torch.randint(100_000, (128,), device=device)

    def step() -> None:
        for _ in range(micro_batches):  # two: the rows of both selections are merged without unique()
            selection = sampler.select(embeddings, labels, {})
            loss_fn(selection).backward()
            sampler.collect(selection)
        sampler.step(0.1)

    step()  # warm-up: lazy initialisations may sync
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
