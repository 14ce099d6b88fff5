"""The ClassSampler seam: every registered method, and a toy method defined here, through one protocol.

The toy is what a researcher's variant looks like: one module with its options, its
sampler and its ``SPEC`` (here a model-parallel full softmax whose class weights the
backbone's optimizer trains, as PartialFC_V2 does), plus one registry line, which the
``toy_registered`` fixture adds. Nothing else in the project learns its name, yet it gets
training, resume state, sharded checkpoints, evaluation and analysis.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

import core.methods
from core.center_store.sampling import class_shard
from core.config import TrainConfig
from core.data.batch import Batch
from core.distributed import DistributedContext, all_gather_no_grad, all_gather_with_grad
from core.loss import margin_loss_for
from core.method_spec import MethodSpec, Range, Statistic, option
from core.methods import all_methods, method_names
from core.sampler import ClassSampler, SamplerEnvironment, Selection, build_sampler
from tests.conftest import spawn_gloo

CLASSES, DIM, SIDE = 12, 8, 4


# -- the toy method ------------------------------------------------------------------------
@dataclass
class ToyOptions:
    init_scale: float = option(0.01, "Standard deviation of the initial class weights.",
                               allowed=Range(0.0, None, low_inclusive=False))


class ToySampler(ClassSampler):
    """Class weights ``[C_local, D]`` as a Parameter of the backbone's optimizer, sharded by class."""

    def __init__(self, options: ToyOptions, environment: SamplerEnvironment) -> None:
        super().__init__()
        context = environment.context
        self.world_size = context.world_size
        self.start, self.count = class_shard(environment.num_classes, context.rank, context.world_size)
        generator = torch.Generator().manual_seed(environment.seed)
        weights = torch.randn(environment.num_classes, environment.embedding_size, generator=generator)
        self.weight = nn.Parameter(weights[self.start:self.start + self.count] * options.init_scale)
        self.register_buffer("positive_updates", torch.zeros(self.count, dtype=torch.int64))

    def select(self, embeddings: torch.Tensor, batch: Batch) -> Selection:
        labels = batch.labels
        if self.world_size > 1:
            embeddings, labels = all_gather_with_grad(embeddings), all_gather_no_grad(labels)
        local = labels - self.start
        mine = (local >= 0) & (local < self.count)
        return Selection(embeddings, self.weight, torch.where(mine, local, -1), sharded_columns=self.world_size > 1,
                         state={"positives": local[mine]})

    def collect(self, selection: Selection) -> None:
        self.positive_updates.index_add_(0, selection.state["positives"],
                                         torch.ones_like(selection.state["positives"]))

    def step(self, lr: float) -> None:
        """The backbone's optimizer already moved the weights."""

    def extra_parameters(self) -> list[nn.Parameter]:
        return [self.weight]

    def sharded_state_names(self) -> list[str]:
        return ["weight", "positive_updates"]

    def shard_range(self) -> tuple[int, int]:
        return self.start, self.count

    def class_statistics(self) -> dict[str, torch.Tensor]:
        return {"positive_updates": self.positive_updates}


SPEC = MethodSpec(name="toy", title="Toy full softmax", summary="dense class weights in the backbone's optimizer.",
                  options=ToyOptions, sampler=f"{__name__}:ToySampler", recipe={"margin": "cosface", "scale": 16.0},
                  statistics=(Statistic("positive_updates", "batch rows of the class", role="positive"),))


@pytest.fixture
def toy_registered(monkeypatch):
    monkeypatch.setitem(core.methods.METHODS, "toy", __name__)


METHODS = [*method_names(), "toy"]


def _positive_statistic(spec: MethodSpec) -> str:
    return next(statistic.name for statistic in spec.statistics if statistic.role == "positive")


def _spec(name: str) -> MethodSpec:
    return SPEC if name == "toy" else core.methods.get_method(name)


# -- the protocol ---------------------------------------------------------------------------
def _backbone(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * SIDE * SIDE, DIM))


def _build(name: str, backbone: nn.Module, rank: int = 0, world_size: int = 1) -> ClassSampler:
    spec = _spec(name)
    options = spec.make_options({"queue_size": 16} if "queue_size" in spec.option_names() else {})
    environment = SamplerEnvironment(num_classes=CLASSES, num_images=100, embedding_size=DIM, backbone=backbone,
                                     device=torch.device("cpu"), context=DistributedContext(rank, world_size),
                                     seed=3)
    return build_sampler(spec, options, environment)


def _batch(sampler: ClassSampler, seed: int, rows: int = 6) -> Batch:
    generator = torch.Generator().manual_seed(seed)
    keys = sampler.batch_layout().key_images_per_row
    return Batch(torch.randn(rows, 3, SIDE, SIDE, generator=generator),
                 torch.randint(CLASSES, (rows,), generator=generator),
                 torch.randn(rows, keys, 3, SIDE, SIDE, generator=generator) if keys else None)


def _step(name: str, sampler: ClassSampler, backbone: nn.Module, batch: Batch) -> torch.Tensor:
    """select -> loss -> backward -> collect -> optimizer step -> the method's step, as the trainer runs it."""
    optimizer = torch.optim.SGD([*backbone.parameters(), *sampler.extra_parameters()], lr=0.1)
    optimizer.zero_grad()
    selection = sampler.select(backbone(batch.images), batch)
    loss = margin_loss_for(TrainConfig(method=name))(selection)
    loss.backward()
    sampler.collect(selection)
    optimizer.step()
    sampler.step(0.1)
    return loss.detach()


def _tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items() if isinstance(v, torch.Tensor)}


@pytest.mark.usefixtures("toy_registered")
@pytest.mark.parametrize("name", METHODS)
def test_a_step_trains_the_backbone_updates_the_method_and_counts_the_batch(name):
    backbone = _backbone()
    sampler = _build(name, backbone)
    batch = _batch(sampler, seed=1)
    network_before, state_before = _tensors(backbone), _tensors(sampler)
    loss = _step(name, sampler, backbone, batch)
    assert torch.isfinite(loss) and loss > 0
    assert any(not torch.equal(network_before[k], v) for k, v in _tensors(backbone).items())
    changed = [k for k, v in _tensors(sampler).items() if not torch.equal(state_before[k], v)]
    assert changed  # the method's own state moved
    statistics = sampler.class_statistics()
    spec = _spec(name)
    assert list(statistics) == [statistic.name for statistic in spec.statistics]
    positive = statistics[_positive_statistic(spec)]
    in_batch = torch.zeros(CLASSES, dtype=torch.bool)
    in_batch[batch.labels] = True
    assert (positive[in_batch] > 0).all() and (positive[~in_batch] == 0).all()


@pytest.mark.usefixtures("toy_registered")
@pytest.mark.parametrize("name", METHODS)
def test_state_dict_round_trip_continues_exactly(name):
    backbone = _backbone()
    first = _build(name, backbone)
    _step(name, first, backbone, _batch(first, seed=1))
    twin_backbone = copy.deepcopy(backbone)
    twin = _build(name, twin_backbone)
    twin.load_state_dict(first.state_dict())
    batch = _batch(first, seed=2)
    assert torch.equal(_step(name, first, backbone, batch), _step(name, twin, twin_backbone, batch))
    mine, theirs = _tensors(first), _tensors(twin)
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)


@pytest.mark.usefixtures("toy_registered")
@pytest.mark.parametrize("name", METHODS)
def test_evaluation_model_is_the_network_its_spec_names(name):
    backbone = _backbone()
    sampler = _build(name, backbone)
    model = sampler.evaluation_model(backbone)
    assert model(torch.randn(2, 3, SIDE, SIDE)).shape == (2, DIM)
    if _spec(name).evaluation_network == "backbone":
        assert model is backbone
    else:  # another network of the same architecture (DCQ: the momentum encoder), loadable as the backbone
        assert model is not backbone and model.state_dict().keys() == backbone.state_dict().keys()


def _shard_writer(rank, world_size, init_file, name, run_dir):
    import torch.distributed as dist

    from core.checkpoint import save_checkpoint

    core.methods.METHODS.setdefault("toy", __name__)  # this process's registry line for the toy
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        backbone = _backbone()
        sampler = _build(name, backbone, rank, world_size)
        whole = _batch(sampler, seed=1, rows=8)
        mine = slice(rank * 4, rank * 4 + 4)
        keys = None if whole.key_images is None else whole.key_images[mine]
        _step(name, sampler, backbone, Batch(whole.images[mine], whole.labels[mine], keys))
        torch.save(_tensors(sampler), f"{run_dir}/own-{rank}.pt")
        save_checkpoint(Path(run_dir), {"config": {"method": name}, "step": 1}, sampler, 1,
                        DistributedContext(rank, world_size))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("name", METHODS)
def test_a_checkpoint_written_by_two_processes_loads_into_one(tmp_path, name):
    from core.checkpoint import load_file, sampler_state_for

    spawn_gloo(_shard_writer, 2, tmp_path, name, str(tmp_path))
    state = load_file(tmp_path / "checkpoint.pt")
    own = [torch.load(tmp_path / f"own-{rank}.pt") for rank in range(2)]
    single = _build(name, _backbone())
    single.load_state_dict(sampler_state_for(tmp_path, state, 0, CLASSES))
    loaded = _tensors(single)
    sharded = set(single.sharded_state_names())
    assert sharded == set(state["sampler_shards"]["names"])
    for key, value in loaded.items():
        expected = torch.cat([part[key] for part in own]) if key in sharded else own[0][key]
        assert torch.equal(value, expected), key
    positive = _positive_statistic(_spec(name))
    assert single.class_statistics()[positive].sum() > 0  # both ranks' counts, reassembled


@pytest.mark.usefixtures("toy_registered")
@pytest.mark.parametrize("name", METHODS)
def test_train_eval_and_analyze_from_the_command_line(tiny_rec, tmp_path, name):
    import json

    import pandas as pd
    from click.testing import CliRunner

    from cli import main

    run, out = tmp_path / "run", tmp_path / "analysis"
    runner = CliRunner()
    flags = ["--queue-size", "4"] if "queue_size" in _spec(name).option_names() else []
    trained = runner.invoke(main, ["train", "--method", name, "--data", str(tiny_rec), "--out", str(run),
                                   "--backbone", "tiny", "--input-size", "16", "--embedding-size", "8",
                                   "--batch-size", "8", "--max-steps", "2", "--workers", "0", "--device", "cpu",
                                   "--val", str(tiny_rec / "val.bin"), "--quiet", *flags], catch_exceptions=False)
    assert trained.exit_code == 0, trained.output
    saved = json.loads((run / "metrics.json").read_text())["val"]
    evaluated = runner.invoke(main, ["eval", str(run), "--val", str(tiny_rec / "val.bin"), "--json"],
                              catch_exceptions=False)
    assert json.loads(evaluated.output)["val"]["accuracy"] == pytest.approx(saved["accuracy"])
    analysed = runner.invoke(main, ["analyze", "report", str(run), "--out", str(out), "--quiet"],
                             catch_exceptions=False)
    assert analysed.exit_code == 0, analysed.output
    names = [statistic.name for statistic in _spec(name).statistics]
    assert list(pd.read_csv(out / "longtail.csv").columns)[-len(names):] == names
    report = (out / "report.md").read_text()
    assert all(statistic.meaning in report for statistic in _spec(name).statistics)
    assert set(json.loads((out / "summary.json").read_text())) == {"conflict", "noise", "longtail"}


def test_every_registered_method_is_listed_and_the_toy_is_not_by_default():
    assert [spec.name for spec in all_methods()] == method_names() and "toy" not in method_names()
