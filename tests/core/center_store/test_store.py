"""The center store on its own: rows selected around the positives, sparse exact updates, counters."""

import copy

import pytest
import torch
import torch.nn.functional as F

from core.center_store.store import CenterStore
from core.loss import MarginSoftmaxLoss
from core.margins import build_margin
from tests.conftest import assert_no_host_sync


pytestmark = pytest.mark.usefixtures("float64_default")


def _num_sample(rate, num_classes):
    """What a method sampling ``rate`` of the classes asks the store for (Partial FC's rule)."""
    return int(rate * num_classes)


def _run_step(store, embeddings, labels, margin, num_sample, sampling="uniform", lr=0.1):
    selection = store.select(embeddings, labels, num_sample, sampling)
    loss = MarginSoftmaxLoss(margin)(selection)
    loss.backward()
    store.collect(selection)
    store.step(lr)
    return loss, selection


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_rate_one_equals_full_softmax(optimizer):
    torch.manual_seed(0)
    num_classes, dim, batch = 11, 6, 8
    margin = build_margin("arcface", scale=16.0)
    store = CenterStore(num_classes, (dim,), optimizer=optimizer, momentum=0.9, weight_decay=5e-4,
                        dtype=torch.float64)
    linear = torch.nn.Linear(dim, num_classes, bias=False)
    with torch.no_grad():
        linear.weight.copy_(store.centers)
    reference_optimizer = (torch.optim.SGD(linear.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
                           if optimizer == "sgd" else
                           torch.optim.AdamW(linear.parameters(), lr=0.1, weight_decay=5e-4))
    for _ in range(3):
        embeddings = torch.randn(batch, dim)
        labels = torch.randint(num_classes, (batch,))
        ours = embeddings.clone().requires_grad_(True)
        theirs = embeddings.clone().requires_grad_(True)
        loss, _ = _run_step(store, ours, labels, margin, _num_sample(1.0, num_classes))
        cosine = (F.normalize(theirs) @ F.normalize(linear.weight).t()).clamp(-1, 1)
        reference_loss = F.cross_entropy(margin(cosine, labels), labels)
        reference_optimizer.zero_grad()
        reference_loss.backward()
        reference_optimizer.step()
        torch.testing.assert_close(loss, reference_loss, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(ours.grad, theirs.grad, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(store.centers, linear.weight.detach(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_unsampled_centers_and_state_are_bit_identical(optimizer):
    torch.manual_seed(1)
    num_classes, dim = 200, 8
    num_sample = _num_sample(0.1, num_classes)
    store = CenterStore(num_classes, (dim,), optimizer=optimizer, dtype=torch.float64)
    margin = build_margin("cosface", scale=32.0)
    # A first step gives some rows non-zero optimizer state, so drift would show.
    _run_step(store, torch.randn(4, dim, requires_grad=True), torch.randint(num_classes, (4,)), margin, num_sample)
    before = {k: v.clone() for k, v in store.state_dict().items() if isinstance(v, torch.Tensor)}
    _, selection = _run_step(store, torch.randn(4, dim, requires_grad=True), torch.randint(num_classes, (4,)),
                             margin, num_sample)
    touched = torch.zeros(num_classes, dtype=torch.bool)
    touched[selection.state["index"]] = True
    assert touched.sum() == num_sample == 20
    after = store.state_dict()
    compared = set()
    for key, value in before.items():
        if value.ndim >= 1 and value.shape[0] == num_classes and "updates" not in key:
            compared.add(key)
            assert torch.equal(after[key][~touched], value[~touched]), key
            if key == "centers":
                assert not torch.equal(after[key][touched], value[touched])
    assert "centers" in compared and len(compared) >= 2  # the rows and at least one optimizer state buffer


def test_selection_keeps_positives_and_remaps_labels():
    store = CenterStore(100, (4,), seed=3)
    labels = torch.tensor([5, 99, 5, 0, 42])
    selection = store.select(torch.randn(5, 4), labels, _num_sample(0.2, 100))
    index = selection.state["index"]
    assert index.numel() == 20 and torch.equal(index, torch.sort(torch.unique(index)).values)
    assert torch.equal(index[selection.targets], labels)


def test_positives_only_when_they_exceed_the_sample():
    store = CenterStore(100, (4,))
    labels = torch.tensor([1, 2, 3, 4, 5, 1])
    selection = store.select(torch.randn(6, 4), labels, _num_sample(0.03, 100))
    assert torch.equal(selection.state["index"], torch.tensor([1, 2, 3, 4, 5]))


def test_stratified_store_trains_only_its_rows_and_counts_like_uniform():
    torch.manual_seed(3)
    margin = build_margin("cosface", scale=16.0)
    store = CenterStore(50, (6,), dtype=torch.float64)
    num_sample = _num_sample(0.2, 50)
    labels = torch.tensor([3, 3, 8, 41])
    before = store.centers.clone()
    _, selection = _run_step(store, torch.randn(4, 6, requires_grad=True), labels, margin, num_sample, "stratified")
    index = selection.state["index"]
    assert index.numel() == num_sample == 10 and {3, 8, 41} <= set(index.tolist())
    untouched = torch.ones(50, dtype=torch.bool)
    untouched[index] = False
    assert torch.equal(store.centers[untouched], before[untouched])
    assert not torch.equal(store.centers[index], before[index])
    expected_positive = torch.zeros(50, dtype=torch.int64)
    expected_positive[[3, 8, 41]] = 1
    assert torch.equal(store.positive_updates, expected_positive)
    assert torch.equal(store.negative_updates, (~untouched).long() - expected_positive)
    assert store.negative_updates.sum() == 7


def test_counters_count_positive_and_passive_updates():
    store = CenterStore(10, (4,), dtype=torch.float64)
    margin = build_margin("cosface")
    _run_step(store, torch.randn(3, 4, requires_grad=True), torch.tensor([1, 1, 2]), margin, _num_sample(1.0, 10))
    expected_negative = torch.ones(10, dtype=torch.int64)
    expected_negative[[1, 2]] = 0
    assert torch.equal(store.negative_updates, expected_negative)
    assert store.positive_updates.tolist() == [0, 1, 1, 0, 0, 0, 0, 0, 0, 0]


def test_accumulated_micro_batches_equal_one_batch():
    torch.manual_seed(2)
    margin = build_margin("arcface", scale=8.0)
    whole = CenterStore(30, (5,), dtype=torch.float64)
    split = CenterStore(30, (5,), dtype=torch.float64)
    num_sample = _num_sample(1.0, 30)
    embeddings, labels = torch.randn(8, 5), torch.randint(30, (8,))
    before = whole.centers.clone()
    _run_step(whole, embeddings.clone().requires_grad_(True), labels, margin, num_sample)
    for part in (slice(0, 4), slice(4, 8)):
        selection = split.select(embeddings[part].clone().requires_grad_(True), labels[part], num_sample)
        (MarginSoftmaxLoss(margin)(selection) / 2).backward()
        split.collect(selection)
    split.step(0.1)
    assert not torch.equal(whole.centers, before)
    torch.testing.assert_close(split.centers, whole.centers, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
@pytest.mark.parametrize("sampling", ["uniform", "stratified"])
def test_accumulated_sampled_micro_batches_update_each_touched_row_once(optimizer, sampling):
    """Two micro-batches sharing rows: the same step as summing their gradients over the union of rows."""
    torch.manual_seed(4)
    margin = build_margin("arcface", scale=8.0)
    store = CenterStore(40, (5,), optimizer=optimizer, dtype=torch.float64)
    num_sample = _num_sample(0.25, 40)
    for _ in range(2):  # non-zero momentum / moments first
        _run_step(store, torch.randn(6, 5, requires_grad=True), torch.randint(40, (6,)), margin, num_sample, sampling)
    reference = copy.deepcopy(store)
    for _ in range(2):
        selection = store.select(torch.randn(6, 5, requires_grad=True), torch.randint(40, (6,)), num_sample, sampling)
        (MarginSoftmaxLoss(margin)(selection) / 2).backward()
        store.collect(selection)
    pending = [(index.clone(), grad.clone()) for index, grad, _ in store._pending]
    store.step(0.1)
    shared = set(pending[0][0].tolist()) & set(pending[1][0].tolist())
    assert shared  # otherwise this test would not exercise repeated rows
    rows = torch.unique(torch.cat([index for index, _ in pending]))
    dense = torch.zeros(40, 5)
    for index, grad in pending:
        dense.index_add_(0, index, grad)
    reference.center_optimizer.update(reference.centers, rows, dense[rows], 0.1)
    torch.testing.assert_close(store.centers, reference.centers, rtol=1e-12, atol=1e-14)
    for name, buffer in reference.center_optimizer.named_buffers():
        torch.testing.assert_close(dict(store.center_optimizer.named_buffers())[name], buffer, rtol=1e-12,
                                   atol=1e-14)


def test_prototypes_start_independent_and_shard_independent():
    one = CenterStore(10, (5,), seed=2).centers
    three = CenterStore(10, (3, 5), seed=2).centers
    assert three.shape == (10, 3, 5) and torch.equal(three[:, 0], one)  # the first prototype: a one-center store's
    assert not torch.equal(three[:, 1], three[:, 0]) and not torch.equal(three[:, 2], three[:, 1])
    shards = [CenterStore(10, (3, 5), seed=2, rank=rank, world_size=3).centers for rank in range(3)]
    assert torch.equal(torch.cat(shards), three)


def test_rows_of_several_prototypes_score_a_class_by_its_best_one():
    """row_shape (3, D): three prototypes per class (sub-center ArcFace). A class's cosine is its best
    prototype's, only that prototype takes a gradient, and unsampled classes keep every prototype."""
    torch.manual_seed(5)
    num_classes, prototypes, dim, batch = 12, 3, 6, 5
    margin = build_margin("arcface", scale=16.0)
    store = CenterStore(num_classes, (prototypes, dim), momentum=0.9, weight_decay=5e-4, dtype=torch.float64)
    assert store.centers.shape == (num_classes, prototypes, dim)
    assert store.center_optimizer.momentum_buffer.shape == (num_classes, prototypes, dim)
    # the reference: the loss written out over a plain [C, 3, D] parameter, and torch's SGD
    weight = torch.nn.Parameter(store.centers.clone())
    reference_optimizer = torch.optim.SGD([weight], lr=0.1, momentum=0.9, weight_decay=5e-4)
    for _ in range(2):
        embeddings, labels = torch.randn(batch, dim), torch.randint(num_classes, (batch,))
        ours = embeddings.clone().requires_grad_(True)
        loss, selection = _run_step(store, ours, labels, margin, _num_sample(1.0, num_classes))
        assert selection.weights.shape == (num_classes, prototypes, dim)
        per_prototype = torch.einsum("bd,cpd->bcp", F.normalize(embeddings), F.normalize(weight, dim=-1))
        cosine, winner = per_prototype.max(dim=2)
        reference_loss = F.cross_entropy(margin(cosine.clamp(-1, 1), labels), labels)
        reference_optimizer.zero_grad()
        reference_loss.backward()
        # only a prototype that won a (row, class) pair has a gradient, each winner has one
        won = torch.zeros(num_classes, prototypes, dtype=torch.bool)
        won[torch.arange(num_classes).expand(batch, -1), winner] = True
        assert (~won).any() and won.any()
        has_grad = selection.weights.grad.abs().sum(dim=-1) > 0
        assert torch.equal(has_grad, won)
        torch.testing.assert_close(selection.weights.grad, weight.grad, rtol=1e-10, atol=1e-14)
        reference_optimizer.step()
        torch.testing.assert_close(loss, reference_loss, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(store.centers, weight.detach(), rtol=1e-10, atol=1e-12)
    assert store.centers.shape == (num_classes, prototypes, dim)

    # sampled: a class outside the selection keeps all three prototypes and their momentum bit for bit
    sampled = CenterStore(40, (prototypes, dim), dtype=torch.float64)
    _run_step(sampled, torch.randn(4, dim), torch.randint(40, (4,)), margin, 10)  # non-zero momentum first
    before = copy.deepcopy(sampled.state_dict())
    labels = torch.tensor([2, 2, 17, 33])
    _, selection = _run_step(sampled, torch.randn(4, dim), labels, margin, 10)
    index = selection.state["index"]
    assert index.numel() == 10 and {2, 17, 33} <= set(index.tolist())
    assert selection.weights.shape == (10, prototypes, dim)
    untouched = torch.ones(40, dtype=torch.bool)
    untouched[index] = False
    for key in ("centers", "center_optimizer.momentum_buffer"):
        assert torch.equal(sampled.state_dict()[key][untouched], before[key][untouched]), key
    assert not torch.equal(sampled.centers[index], before["centers"][index])
    assert torch.equal(sampled.positive_updates - before["positive_updates"],
                       torch.zeros(40, dtype=torch.int64).index_fill_(0, torch.tensor([2, 17, 33]), 1))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="host syncs only exist on CUDA")
@pytest.mark.parametrize("micro_batches", [1, 2])
@pytest.mark.parametrize("chunk_columns", [None, 4096])  # 4096: the ~10K-column selection takes the chunked loss
def test_stratified_step_never_waits_for_the_host(micro_batches, chunk_columns):
    device = torch.device("cuda")
    store = CenterStore(100_000, (64,), device=device, dtype=torch.float32)
    num_sample = _num_sample(0.1, 100_000)
    loss_fn = MarginSoftmaxLoss(build_margin("arcface"), chunk_columns=chunk_columns)
    embeddings = torch.randn(128, 64, device=device, dtype=torch.float32, requires_grad=True)
    labels = torch.randint(100_000, (128,), device=device)

    def step() -> None:
        for _ in range(micro_batches):  # two: the rows of both selections are merged without unique()
            selection = store.select(embeddings, labels, num_sample, "stratified")
            loss_fn(selection).backward()
            store.collect(selection)
        store.step(0.1)

    assert_no_host_sync(step, step)
