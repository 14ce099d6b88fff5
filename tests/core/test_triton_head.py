"""The fused Triton head against the float64 torch path (kernels interpreted on the CPU without a GPU)."""

import pytest
import torch

from core.center_store.row_optimizers import RowSGD
from core.center_store.sampling import first_occurrence
from core.center_store.store import CenterStore
from core.errors import ConfigError
from core.loss import MarginSoftmaxLoss
from core.margins import build_margin
from core.sampler import Selection

triton_head = pytest.importorskip("core.triton_head")
pytest.importorskip("triton")

MARGINS = {
    "arcface": build_margin("arcface", 16.0),
    "arcface-straight-through": build_margin("arcface", 16.0, straight_through=True),
    "cosface": build_margin("cosface", 16.0),
    "combined": build_margin("combined", 16.0, combined=(1.1, 0.3, 0.1)),
    "interclass-filter": build_margin("arcface", 16.0, interclass_threshold=0.2),
}


def _placeholder(rows, dim):
    return torch.zeros(()).expand(rows, dim).detach().requires_grad_(True)


@pytest.mark.parametrize("margin", MARGINS.values(), ids=MARGINS.keys())
@pytest.mark.parametrize("sampled", [True, False], ids=["sampled-rows", "all-rows"])
def test_loss_gradients_and_margins_equal_the_float64_torch_path(margin, sampled):
    generator = torch.Generator().manual_seed(0)
    # not multiples of the 16-wide tiles: padding is exercised; the embedding takes three chunks, and the columns
    # (300 or 600) two or three splits of the embeddings' gradient
    batch, classes, dim = 21, 600, 40
    embeddings = torch.randn(batch, dim, generator=generator, dtype=torch.float64)
    table = torch.randn(classes, dim, generator=generator) * 0.1
    rows = torch.randperm(classes, generator=generator)[:300].sort().values if sampled else None
    columns = classes if rows is None else rows.numel()
    targets = torch.randint(columns, (batch,), generator=generator)
    targets[3] = -1  # a row whose class another rank holds: no target column here
    fused_embeddings = embeddings.float().requires_grad_(True)
    row_gradient = _placeholder(columns, dim)
    record = {}
    loss = triton_head.fused_margin_cross_entropy(fused_embeddings, row_gradient, table, rows, targets, margin,
                                                  record=record)
    loss.backward()

    reference_embeddings = embeddings.clone().requires_grad_(True)
    weights = (table if rows is None else table[rows]).double().requires_grad_(True)
    reference = MarginSoftmaxLoss(margin, chunk_columns=None)
    reference.record_margins = True
    # the torch path's loss for a row without a target column, as a model-parallel rank sees it
    logits = reference.logits(Selection(reference_embeddings, weights, targets))
    lse = torch.logsumexp(logits, dim=1)
    given = torch.where(targets >= 0, logits.gather(1, targets.clamp(min=0)[:, None])[:, 0], 0.0)
    expected = (lse - given).mean()
    expected.backward()
    torch.testing.assert_close(loss.double(), expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(fused_embeddings.grad.double(), reference_embeddings.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(row_gradient.grad.double(), weights.grad, rtol=1e-5, atol=1e-5)
    target = torch.where(targets >= 0, record["target_cosine"], -2.0).clamp(min=-2.0)
    margins = target.double() - record["best_other"].double()
    torch.testing.assert_close(margins, reference.last_margins.double(), rtol=0, atol=1e-6)
    has_other = reference.last_other_classes >= 0
    assert torch.equal(record["columns"][has_other], reference.last_other_classes[has_other])


@pytest.mark.parametrize("sampled", [True, False], ids=["sampled-rows", "all-rows"])
def test_a_backward_in_column_blocks_equals_one_in_a_single_block(monkeypatch, sampled):
    generator = torch.Generator().manual_seed(1)
    batch, classes, dim = 19, 300, 24
    table = torch.randn(classes, dim, generator=generator)
    rows = torch.randperm(classes, generator=generator)[:200].sort().values if sampled else None
    columns = classes if rows is None else rows.numel()
    embeddings = torch.randn(batch, dim, generator=generator)
    targets = torch.randint(columns, (batch,), generator=generator)
    targets[:3] = torch.tensor([-1, 0, columns - 1])  # another rank's class, and the first and the last column
    gradients = {}
    for block in (1 << 18, 64):  # one block, then 4 or 5 blocks, the last one partial
        monkeypatch.setattr(triton_head, "BACKWARD_COLUMNS", block)
        leaf = embeddings.clone().requires_grad_(True)
        row_gradient = _placeholder(columns, dim)
        triton_head.fused_margin_cross_entropy(leaf, row_gradient, table, rows, targets,
                                               build_margin("arcface", 16.0)).backward()
        gradients[block] = (leaf.grad, row_gradient.grad)
    for whole, blocked in zip(gradients[1 << 18], gradients[64]):
        torch.testing.assert_close(blocked, whole, rtol=1e-5, atol=1e-7)


def _two_micro_batches(kernel, storage_dtype=None):
    torch.manual_seed(4)
    store = CenterStore(40, (6,), dtype=torch.float32, head_kernel=kernel, storage_dtype=storage_dtype)
    loss = MarginSoftmaxLoss(build_margin("arcface", 8.0), chunk_columns=None)
    indices = []
    for _ in range(2):
        selection = store.select(torch.randn(6, 6, requires_grad=True), torch.randint(40, (6,)), 10)
        (loss(selection) / 2).backward()
        store.collect(selection)
        indices.append(selection.state["index"])
    store.step(0.1)
    return store, indices


def test_a_row_sampled_by_two_micro_batches_is_updated_once_as_the_torch_path_does():
    fused, indices = _two_micro_batches("triton")
    plain, _ = _two_micro_batches("torch")
    assert set(indices[0].tolist()) & set(indices[1].tolist())  # a shared row
    torch.testing.assert_close(fused.centers, plain.centers, rtol=1e-5, atol=1e-6)
    # both paths are float32; a momentum entry of 0.035 left by cancellation differed by 1.9e-6 on one machine
    torch.testing.assert_close(fused.center_optimizer.momentum_buffer, plain.center_optimizer.momentum_buffer,
                               rtol=1e-5, atol=1e-5)
    assert torch.equal(fused.positive_updates, plain.positive_updates)
    assert torch.equal(fused.negative_updates, plain.negative_updates)


def test_fused_sgd_writes_only_the_given_rows_and_equals_row_sgd():
    generator = torch.Generator().manual_seed(1)
    table, momentum = torch.randn(50, 12, generator=generator), torch.randn(50, 12, generator=generator)
    rows = torch.tensor([3, 7, 3, 20, 49, 7])
    leaders = first_occurrence(rows)
    grad = torch.randn(6, 12, generator=generator)
    grad = torch.zeros_like(grad).index_add_(0, leaders, grad)[leaders]  # every copy carries the summed gradient
    reference = RowSGD((50, 12), 0.9, 5e-4)
    reference.momentum_buffer.copy_(momentum)
    expected = table.clone()
    reference.update(expected, rows, grad, 0.1, leaders)
    fused_table, fused_momentum = table.clone(), momentum.clone()
    triton_head.sgd_rows(fused_table, fused_momentum, rows, grad, 0.1, 0.9, 5e-4, generator, leaders)
    torch.testing.assert_close(fused_table, expected, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(fused_momentum, reference.momentum_buffer, rtol=1e-6, atol=1e-7)
    untouched = torch.ones(50, dtype=torch.bool)
    untouched[rows] = False
    assert torch.equal(fused_table[untouched], table[untouched])
    assert torch.equal(fused_momentum[untouched], momentum[untouched])


def test_fused_sgd_rounds_bf16_stochastically_without_bias():
    """200 updates of 1/8 of a bf16 step each: round-to-nearest would never move the rows, stochastic rounding
    moves them by the float32 amount on average; each result is one of its two bf16 neighbours."""
    table = torch.ones(16, 12, dtype=torch.bfloat16)
    momentum = torch.zeros(16, 12, dtype=torch.bfloat16)
    grad = torch.full((16, 12), 2.0 ** -7 / 8 / 0.5)  # lr 0.5 x grad = 1/8 of bf16's step at 1.0
    generator = torch.Generator().manual_seed(2)
    for _ in range(200):
        before = table.float()
        triton_head.sgd_rows(table, momentum, None, grad, 0.5, 0.0, 0.0, generator)
        step = table.float() - before
        assert ((step == 0) | (step == -(2.0 ** -7)) | (step == -(2.0 ** -8))).all()  # a bf16 step below 1 or at it
    mean = table.float().mean().item()
    assert abs(mean - (1.0 - 200 * 2.0 ** -7 / 8)) < 0.01, mean


def test_a_fused_store_trains_like_the_torch_store():
    margin = build_margin("arcface", 8.0)
    stores = {kernel: CenterStore(30, (8,), seed=3, head_kernel=kernel) for kernel in ("torch", "triton")}
    generator = torch.Generator().manual_seed(5)
    for _ in range(3):
        embeddings, labels = torch.randn(10, 8, generator=generator), torch.randint(30, (10,), generator=generator)
        for store in stores.values():
            store.generator.manual_seed(7)  # the same negatives for both
            selection = store.select(embeddings.clone().requires_grad_(True), labels, 12)
            MarginSoftmaxLoss(margin, chunk_columns=None)(selection).backward()
            store.collect(selection)
            store.step(0.2)
    torch.testing.assert_close(stores["triton"].centers, stores["torch"].centers, rtol=1e-5, atol=1e-6)


def test_head_kernel_choice():
    cpu = torch.device("cpu")
    assert triton_head.resolve_head_kernel("auto", cpu, (8,)) == "torch"  # auto: triton on CUDA only
    assert triton_head.resolve_head_kernel("auto", torch.device("cuda"), (3, 8)) == "torch"
    with pytest.raises(ConfigError, match="one center per class"):
        triton_head.resolve_head_kernel("triton", cpu, (3, 8))
    with pytest.raises(ConfigError, match="--head-kernel must be one of"):
        triton_head.resolve_head_kernel("cuda", cpu, (8,))


def test_triton_head_without_a_gpu_or_interpreter_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ConfigError, match="needs Triton and a CUDA GPU"):
        triton_head.resolve_head_kernel("triton", torch.device("cpu"), (8,))


def test_training_with_the_triton_head_follows_the_torch_head(tiny_rec, tmp_path):
    from core.trainer import Trainer
    from tests.core.test_trainer import _config

    runs = {}
    for kernel in ("torch", "triton"):
        trainer = Trainer(_config(tiny_rec, head_kernel=kernel, amp="off"), tmp_path / kernel, progress=False)
        assert trainer.sampler.store.head_kernel == kernel
        batches = trainer.batches()
        runs[kernel] = (torch.stack([trainer.train_step(batches) for _ in range(4)]), trainer)
    (losses, fused), (expected, plain) = runs["triton"], runs["torch"]
    torch.testing.assert_close(losses, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fused.sampler.store.centers, plain.sampler.store.centers, rtol=1e-4, atol=1e-5)
    # the training dynamics come from the kernel's best other column
    torch.testing.assert_close(fused.dynamics.margin_sum, plain.dynamics.margin_sum, rtol=1e-4, atol=1e-5)
    assert torch.equal(fused.dynamics.visits, plain.dynamics.visits)
