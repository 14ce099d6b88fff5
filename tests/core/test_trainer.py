
import json

import numpy as np
import pytest
import torch

from core.config import TrainConfig
from core.errors import ConfigError, DataError, TrainingError
from core.methods import get_method
from core.trainer import Trainer, warmup_polynomial
from tests.conftest import assert_no_host_sync


def _config(root, **changes):
    base = dict(data=str(root), val=[str(root / "val.bin")], backbone="tiny", input_size=16, embedding_size=16,
                batch_size=8, epochs=2, lr=0.05, sample_rate=0.5, workers=0, checkpoint_every=0, log_every=1,
                seed=3, device="cpu")
    base.update(changes)
    if "sample_rate" not in get_method(base.get("method", TrainConfig().method)).option_names():
        del base["sample_rate"]  # Partial FC's option: an error with another method
    return TrainConfig().replace(**base)


def _weights(trainer):
    return {**{f"backbone.{k}": v.clone() for k, v in trainer.backbone.state_dict().items()},
            **{f"sampler.{k}": v.clone() for k, v in trainer.sampler.state_dict().items()
               if isinstance(v, torch.Tensor)}}


@pytest.mark.parametrize("center_dtype,amp", [("float32", "off"), ("bfloat16", "off"), ("float32", "fp16")])
def test_resumed_run_equals_straight_run(tiny_rec, tmp_path, center_dtype, amp):
    # bfloat16 centers round stochastically: the rounding stream must resume exactly too; fp16's loss scale too
    straight = Trainer(_config(tiny_rec, center_dtype=center_dtype, amp=amp), tmp_path / "straight", progress=False)
    assert straight.total_steps == 12  # 48 images / 8 per batch x 2 epochs
    straight.fit()
    assert straight.sampler.store.centers.dtype == getattr(torch, center_dtype)
    first = Trainer(_config(tiny_rec, max_steps=7, center_dtype=center_dtype, amp=amp), tmp_path / "resumed",
                    progress=False)
    first.fit()
    second = Trainer(_config(tiny_rec, center_dtype=center_dtype, amp=amp), tmp_path / "resumed", progress=False)
    second.resume(tmp_path / "resumed")
    if amp == "fp16":
        assert second.loss_scaler.state_dict() == first.loss_scaler.state_dict()
    assert second.step == 7
    second.fit()
    a, b = _weights(straight), _weights(second)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert straight.metrics["val"]["accuracy"] == second.metrics["val"]["accuracy"]


def test_run_directory_contents_and_metrics(tiny_rec, tmp_path):
    trainer = Trainer(_config(tiny_rec, epochs=1), tmp_path / "run", progress=False)
    metrics = trainer.fit()
    names = {p.name for p in (tmp_path / "run").iterdir()}
    assert {"checkpoint.pt", "config.yaml", "env.json", "log.csv", "metrics.json", "training.png"} <= names
    assert set(metrics["val"]) >= {"accuracy", "accuracy_std", "tar_at_far", "auc"}
    lines = (tmp_path / "run" / "log.csv").read_text().splitlines()
    assert lines[0] == "step,epoch,loss,lr,img_per_s,val_accuracy,val_accuracy_std"
    assert len(lines) == 1 + trainer.total_steps


def test_log_holds_each_validation_at_the_step_it_was_measured(tiny_rec, tmp_path):
    import pandas as pd

    trainer = Trainer(_config(tiny_rec, epochs=2, log_every=4), tmp_path / "run", progress=False)
    metrics = trainer.fit()
    log = pd.read_csv(tmp_path / "run" / "log.csv")
    assert list(log["step"]) == [4, 6, 8, 12]  # every 4th step, and the end of each epoch of 6 steps
    measured = log.dropna(subset=["val_accuracy"])
    assert list(measured["step"]) == [6, 12]
    final = measured.iloc[-1]
    assert final["val_accuracy"] == metrics["val"]["accuracy"]
    assert final["val_accuracy_std"] == metrics["val"]["accuracy_std"]


def test_a_resumed_run_keeps_the_validation_columns_of_its_earlier_rows(tiny_rec, tmp_path):
    import pandas as pd

    run = tmp_path / "run"
    Trainer(_config(tiny_rec, max_steps=6), run, progress=False).fit()
    before = pd.read_csv(run / "log.csv")
    resumed = Trainer(_config(tiny_rec, max_steps=8, val=[]), run, progress=False)
    resumed.resume(run)
    resumed.fit()
    after = pd.read_csv(run / "log.csv")
    assert list(after["step"]) == list(range(1, 9))
    assert after["val_accuracy"].notna().tolist() == [False] * 5 + [True, False, False]
    assert after["val_accuracy"][5] == before["val_accuracy"][5]


@pytest.mark.parametrize("figure_format, magic", [("png", b"\x89PNG"), ("svg", b"<?xml"), ("pdf", b"%PDF")])
def test_training_curves_are_drawn_in_the_format_asked_for(tiny_rec, tmp_path, figure_format, magic):
    Trainer(_config(tiny_rec, max_steps=2, figure_format=figure_format), tmp_path / "run", progress=False).fit()
    drawn = sorted(path.name for path in (tmp_path / "run").glob("training.*"))
    assert drawn == [f"training.{figure_format}"]
    assert (tmp_path / "run" / drawn[0]).read_bytes().startswith(magic)


def test_a_config_outside_the_choices_is_refused_by_name():
    with pytest.raises(ConfigError, match=r"figure_format \(--figure-format\) must be one of png, pdf, svg"):
        TrainConfig().replace(figure_format="jpg").validate()
    with pytest.raises(ConfigError, match=r"optimizer \(--optimizer\) must be one of sgd, adamw, got 'adamx'"):
        TrainConfig().replace(optimizer="adamx").validate()


def test_learning_rate_schedule_warms_up_and_decays():
    factor = warmup_polynomial(total_steps=10, warmup_steps=4, power=2.0)
    values = [factor(step) for step in range(10)]
    assert values[:4] == [0.2, 0.4, 0.6, 0.8]
    assert values[4] == 1.0 and values[9] == pytest.approx((1 - 5 / 6) ** 2)
    assert all(b < a for a, b in zip(values[4:], values[5:]))


def test_first_step_is_not_at_full_lr(tiny_rec, tmp_path):
    trainer = Trainer(_config(tiny_rec, warmup_epochs=0.0), tmp_path / "run", progress=False)
    assert trainer.scheduler.get_last_lr()[0] < trainer.config.lr


def test_gradient_accumulation_averages(tiny_rec, tmp_path):
    # Same 16 images as one batch or as 2 accumulated batches of 8: same update.
    # Eval-mode BatchNorm would differ, so compare the loss and sample-rate-1 centers after one step.
    whole = Trainer(_config(tiny_rec, batch_size=16, sample_rate=1.0, max_steps=1, grad_clip=0.0),
                    tmp_path / "a", progress=False)
    split = Trainer(_config(tiny_rec, batch_size=8, accumulate=2, sample_rate=1.0, max_steps=1, grad_clip=0.0),
                    tmp_path / "b", progress=False)
    for trainer in (whole, split):
        for module in trainer.backbone.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.eval()
        trainer.backbone.train = lambda mode=True, model=trainer.backbone: model  # keep BN in eval
    # Both draw the same 16-image permutation: batch_sampler order depends on seed and epoch only.
    loss_whole = whole.train_step(whole.batches())
    loss_split = split.train_step(split.batches())
    torch.testing.assert_close(loss_whole, loss_split)
    torch.testing.assert_close(whole.sampler.store.centers, split.sampler.store.centers)


def test_non_finite_loss_stops_and_names_the_step(tiny_rec, tmp_path):
    trainer = Trainer(_config(tiny_rec, lr=1e6, checkpoint_every=1, grad_clip=0.0), tmp_path / "run",
                      progress=False)
    with pytest.raises(TrainingError, match=r"step \d+: (the loss is not finite|non-finite weights)"):
        trainer.fit()
    # The kept checkpoint is a good one: its weights are finite.
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    assert all(torch.isfinite(v).all() for v in state["backbone"].values() if v.is_floating_point())


def test_resume_without_checkpoint(tiny_rec, tmp_path):
    trainer = Trainer(_config(tiny_rec), tmp_path / "run", progress=False)
    with pytest.raises(ConfigError, match="no checkpoint"):
        trainer.resume(tmp_path)


def test_batch_larger_than_dataset(tiny_rec, tmp_path):
    with pytest.raises(DataError, match="larger than the dataset"):
        Trainer(_config(tiny_rec, batch_size=100), tmp_path / "run", progress=False)


def test_unknown_data_format(tmp_path):
    bogus = tmp_path / "data.xyz"
    bogus.write_text("x")
    with pytest.raises(DataError, match="unknown format"):
        Trainer(_config(tmp_path, data=str(bogus), val=[]), tmp_path / "run", progress=False)


def test_unknown_config_key():
    with pytest.raises(ConfigError, match="unknown config key"):
        TrainConfig().replace(sample_rat=0.1)


@pytest.mark.parametrize("method", ["pfc", "dcq"])
def test_channels_last_trains_like_the_default_layout(tiny_rec, tmp_path, method):
    runs = {}
    for layout in (False, True):
        trainer = Trainer(_config(tiny_rec, method=method, channels_last=layout, max_steps=3, val=[]),
                          tmp_path / f"run-{layout}", progress=False)
        batches = trainer.batches()
        runs[layout] = [trainer.train_step(batches) for _ in range(3)], _weights(trainer)
    (losses_a, weights_a), (losses_b, weights_b) = runs[False], runs[True]
    torch.testing.assert_close(torch.stack(losses_a), torch.stack(losses_b), rtol=1e-4, atol=1e-5)
    for key in weights_a:
        torch.testing.assert_close(weights_a[key], weights_b[key], rtol=1e-3, atol=1e-4, msg=key)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="torch.compile is a CUDA lever; compiling on CPU takes "
                                                         "minutes per test")
def test_compiled_backbone_trains_like_eager(tiny_rec, tmp_path):
    losses = {}
    for compiled in (False, True):
        trainer = Trainer(_config(tiny_rec, device="cuda", amp="off", compile=compiled, max_steps=3, val=[]),
                          tmp_path / f"run-{compiled}", progress=False)
        batches = trainer.batches()
        losses[compiled] = torch.stack([trainer.train_step(batches) for _ in range(3)]).cpu()
    torch.testing.assert_close(losses[True], losses[False], rtol=1e-3, atol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="host syncs only exist on CUDA")
@pytest.mark.parametrize("changes", [dict(method="pfc", pfc_sampling="stratified"), dict(method="dcq")],
                         ids=["pfc-stratified", "dcq"])
def test_a_whole_training_step_never_waits_for_the_host(tiny_rec, tmp_path, changes):
    # Only the uniform Partial FC sampler syncs (by design); the data loader is left out by pre-fetching.
    trainer = Trainer(_config(tiny_rec, device="cuda", amp="bf16", val=[], **changes), tmp_path / "run",
                      progress=False)
    batches = trainer.batches()
    prefetched = [next(batches) for _ in range(2)]
    assert_no_host_sync(lambda: trainer.train_step(iter(prefetched[:1])),
                        lambda: trainer.train_step(iter(prefetched[1:])))


def test_resume_drops_log_rows_after_the_checkpoint_and_keeps_the_first_environment(tiny_rec, tmp_path):
    run = tmp_path / "run"
    Trainer(_config(tiny_rec, max_steps=5, val=[]), run, progress=False).fit()
    first_environment = json.loads((run / "env.json").read_text())
    with open(run / "log.csv", "a") as handle:  # an interrupted run logged two steps past its checkpoint
        handle.write("6,0,1.0,0.1,10.0\n7,0,1.0,0.1,10.0\n")
    resumed = Trainer(_config(tiny_rec, max_steps=8, val=[]), run, progress=False)
    resumed.resume(run)
    resumed.fit()
    steps = [int(line.split(",")[0]) for line in (run / "log.csv").read_text().splitlines()[1:]]
    assert steps == list(range(1, 9))
    environment = json.loads((run / "env.json").read_text())
    assert environment["argv"] == first_environment["argv"] and [r["step"] for r in environment["resumed"]] == [5]


def test_a_new_run_starts_its_log_anew(tiny_rec, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "log.csv").write_text("step,epoch,loss,lr,img_per_s\n3,0,9.0,0.1,1.0\n")  # a failed run's rows
    Trainer(_config(tiny_rec, max_steps=2, val=[]), run, progress=False).fit()
    assert [line.split(",")[0] for line in (run / "log.csv").read_text().splitlines()] == ["step", "1", "2"]


def test_training_data_given_as_val_fails_before_the_training_images_are_decoded(tiny_rec, tmp_path, monkeypatch):
    import core.trainer

    def decode_nothing(*args, **kwargs):
        raise AssertionError("the training images were decoded before --val was checked")

    monkeypatch.setattr(core.trainer, "prepare_dataset", decode_nothing)
    renamed = tmp_path / "pairs.bin"
    renamed.write_bytes((tiny_rec / "train.rec").read_bytes())
    for val, message in ((tiny_rec / "train.rec", r"a \.rec file is training data; --val takes a verification \.bin"),
                         (renamed, "pairs.bin: a RecordIO file \\(training data\\), not a verification .bin")):
        with pytest.raises(DataError, match=message):
            Trainer(_config(tiny_rec, val=[str(val)]), tmp_path / "run", progress=False)


def test_a_bad_val_file_fails_before_any_step(tiny_rec, tmp_path):
    corrupt = tmp_path / "corrupt.bin"
    corrupt.write_bytes((tiny_rec / "val.bin").read_bytes()[:100])
    for val, message in ((tmp_path / "missing.bin", "not found"), (corrupt, "corrupt.bin")):
        with pytest.raises(DataError, match=message):
            Trainer(_config(tiny_rec, val=[str(val)]), tmp_path / "run", progress=False)
        assert not (tmp_path / "run").exists()


def test_classes_without_images_are_announced(tmp_path, capsys):
    from core.data.recordio import write_insightface_rec
    from core.data.base import encode_image

    rng = np.random.default_rng(0)
    samples = [(label, encode_image(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))) for label in range(3)
               for _ in range(4)]
    write_insightface_rec(tmp_path / "data", samples, 3, image_size=(16, 16))
    (tmp_path / "data" / "property").write_text("5,16,16")  # edited by hand: 5 classes declared, 3 present
    trainer = Trainer(_config(tmp_path / "data", val=[]), tmp_path / "run", progress=False)
    assert trainer.num_classes == 5
    assert "2 of 5 classes have no images" in capsys.readouterr().err


@pytest.mark.parametrize("new_lr", [None, 0.2])
def test_a_resumed_run_follows_its_new_base_lr(tiny_rec, tmp_path, new_lr):
    import csv

    from core.config import resume_config

    def lrs(run):
        with open(run / "log.csv", newline="") as handle:
            return [float(row["lr"]) for row in csv.DictReader(handle)]

    straight = {}
    for lr in {0.05, new_lr or 0.05}:
        straight[lr] = tmp_path / f"straight-{lr}"
        Trainer(_config(tiny_rec, val=[], lr=lr), straight[lr], progress=False).fit()
    run = tmp_path / "run"
    Trainer(_config(tiny_rec, val=[], max_steps=5, checkpoint_every=5), run, progress=False).fit()
    run_dir, config = resume_config({"resume": str(run), "max_steps": 0, **({"lr": new_lr} if new_lr else {})})
    resumed = Trainer(config, run_dir, progress=False)
    resumed.resume(run_dir)
    resumed.fit()
    assert lrs(run)[:5] == lrs(straight[0.05])[:5]  # the first leg ran at the old rate
    assert lrs(run)[5:] == pytest.approx(lrs(straight[new_lr or 0.05])[5:], rel=1e-12)  # then the new one's schedule
