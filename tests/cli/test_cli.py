import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli import main

TRAIN_FLAGS = ["--backbone", "tiny", "--input-size", "16", "--embedding-size", "16", "--batch-size", "8",
               "--epochs", "1", "--workers", "0", "--quiet", "--device", "cpu"]


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.mark.parametrize("command", [[], ["train"], ["eval"], ["export"], ["embed"], ["analyze"], ["experiment"],
                                     ["data"], ["bench"]])
def test_every_command_has_help(command):
    result = _run(*command, "--help")
    assert result.exit_code == 0
    assert "Usage:" in result.output and "--help" in result.output


def test_train_then_eval_reproduces_metrics(tiny_rec, tmp_path):
    run = tmp_path / "run"
    result = _run("train", "--method", "pfc", "--data", tiny_rec, "--val", tiny_rec / "val.bin", "--out", run,
                  *TRAIN_FLAGS)
    assert result.exit_code == 0, result.output
    assert "val: accuracy" in result.output and f"python cli.py eval {run}" in result.output
    saved = json.loads((run / "metrics.json").read_text())
    evaluated = json.loads(_run("eval", run, "--val", tiny_rec / "val.bin", "--json").output)
    assert evaluated["val"]["accuracy"] == pytest.approx(saved["val"]["accuracy"])
    assert evaluated["val"]["tar_at_far"] == pytest.approx(saved["val"]["tar_at_far"])


def test_config_file_and_flag_precedence(tiny_rec, tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("sample_rate: 0.5\nlr: 0.01\n")
    run = tmp_path / "run"
    result = _run("train", "--config", config, "--lr", "0.02", "--data", tiny_rec, "--out", run, "--max-steps", 1,
                  *TRAIN_FLAGS)
    assert result.exit_code == 0, result.output
    import yaml
    resolved = yaml.safe_load((run / "config.yaml").read_text())
    assert resolved["sample_rate"] == 0.5 and resolved["lr"] == 0.02 and resolved["margin"] == "arcface"


@pytest.mark.parametrize("args, message", [
    (["--data", "/nonexistent/data"], "no such file"),
    (["--resume", "{tmp}"], "no checkpoint found"),
    (["--config", "{tmp}/bad.yaml"], "unknown key(s) sample_rat"),
    (["--config", "{tmp}/typed.yaml"], "epochs (--epochs): expected int, got 'ten'"),
    (["--data", "{tmp}/empty"], "no identity sub-folders"),
    (["--data", "{tmp}/one"], "holds 1 class"),
    (["--lr", "-1"], "lr (--lr) must be > 0.0"),
    (["--log-every", "0"], "log_every (--log-every) must be >= 1"),
    (["--out", "{tmp}/afile/run"], "afile"),  # an OSError (not a directory) is one line too
])
def test_bad_input_prints_one_clear_line(tmp_path, args, message):
    (tmp_path / "bad.yaml").write_text("sample_rat: 0.1\n")
    (tmp_path / "typed.yaml").write_text("epochs: ten\n")
    (tmp_path / "empty").mkdir()
    (tmp_path / "afile").write_text("")
    for index in range(2):
        from PIL import Image
        (tmp_path / "one" / "only").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (16, 16), (index * 90, 0, 0)).save(tmp_path / "one" / "only" / f"{index}.png")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    if "--out" not in args:
        args += ["--out", str(tmp_path / "run")]
    result = CliRunner().invoke(main, ["train", *args, "--quiet", "--input-size", "16", "--workers", "0"])
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_the_detection_benchmark_takes_one_scale(tmp_path):
    result = CliRunner().invoke(main, ["experiment", "detection", "--quick", "--held-out",
                                       "--out", str(tmp_path / "d")])
    assert result.exit_code == 2 and "--quick and --held-out are two different scales" in result.output
    assert not (tmp_path / "d").exists()


def test_an_option_of_another_method_is_refused_naming_the_methods_own(tmp_path):
    result = CliRunner().invoke(main, ["train", "--method", "pfc", "--queue-size", "4", "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "--queue-size: not an option of --method pfc" in result.output
    assert "--sample-rate" in result.output and not (tmp_path / "r").exists()


def test_refuses_to_overwrite_a_run(tiny_rec, tmp_path):
    run = tmp_path / "run"
    _run("train", "--data", tiny_rec, "--out", run, "--max-steps", 1, *TRAIN_FLAGS)
    result = CliRunner().invoke(main, ["train", "--data", str(tiny_rec), "--out", str(run), *TRAIN_FLAGS])
    assert result.exit_code == 2 and "already holds a run" in result.output


@pytest.fixture(scope="module")
def dcq_run(tmp_path_factory):
    from tests.conftest import write_tiny_rec

    root = tmp_path_factory.mktemp("dcq")
    run = root / "run"
    _run("train", "--method", "dcq", "--data", write_tiny_rec(root / "tiny"), "--out", run, "--queue-size", 10,
         *TRAIN_FLAGS)
    return run


@pytest.mark.parametrize("name, flags", [("model.pt", []), ("model.onnx", []), ("graph", ["--format", "onnx"])])
def test_export_reproduces_the_evaluation_network_and_prints_how_to_load_it(dcq_run, tmp_path, monkeypatch, name,
                                                                            flags):
    import numpy as np
    import torch

    from core.export import ONNX_TOLERANCE
    from core.models import load_model

    result = _run("export", dcq_run, "--out", tmp_path / name, *flags)
    assert result.exit_code == 0, result.output
    loaded = load_model(dcq_run, torch.device("cpu"))
    reference, size = loaded.network, loaded.input_size
    images = torch.randn(5, 3, size, size)  # a batch size the export never saw
    hint = result.output.split("Load it with: ")[1].strip()
    namespace = {"images": images.numpy()}
    monkeypatch.chdir(Path(__file__).resolve().parents[2])  # the hint is run from the project's root, as printed
    exec(hint, namespace)  # the hint works as printed
    if "onnx" in name + " ".join(flags):
        difference = float(result.output.split("matches PyTorch to ")[1].split(" ")[0])
        assert difference <= ONNX_TOLERANCE
        np.testing.assert_allclose(namespace["embeddings"], reference(images).detach().numpy(), atol=ONNX_TOLERANCE)
    else:
        torch.testing.assert_close(namespace["model"](images), reference(images))


def test_an_onnx_name_never_holds_a_pytorch_pickle(dcq_run, tmp_path):
    result = CliRunner().invoke(main, ["export", str(dcq_run), "--out", str(tmp_path / "model.onnx"),
                                       "--format", "state_dict"])
    assert result.exit_code == 2 and "an .onnx file would hold a PyTorch state_dict" in result.output
    assert not (tmp_path / "model.onnx").exists()


def test_strict_k_shot_rejects_small_identities(tmp_path):
    from tests.conftest import write_tiny_rec

    data = write_tiny_rec(tmp_path / "one-each", classes=20, per_class=1, with_val=False)
    result = CliRunner().invoke(main, ["train", "--method", "dcq", "--data", str(data), "--strict-k-shot",
                                       "--queue-size", "5", "--out", str(tmp_path / "run"), *TRAIN_FLAGS])
    assert result.exit_code == 2 and "--k-shot 1 (strict)" in result.output


def test_resume_keeps_the_run_it_continues(tiny_rec, tmp_path):
    run = tmp_path / "run"
    _run("train", "--data", tiny_rec, "--out", run, "--max-steps", 2, *TRAIN_FLAGS)
    before = (run / "checkpoint.pt").read_bytes()
    cases = [(["--out", tmp_path / "branch"], "a resumed run continues in its own directory"),
             (["--config", tmp_path / "any.yaml"], "--config cannot be combined with --resume"),
             (["--embedding-size", "32"], "--embedding-size 32 (the run has 16)"),
             (["--method", "dcq"], "--method dcq (the run has pfc)")]
    (tmp_path / "any.yaml").write_text("lr: 0.5\n")
    for extra, message in cases:
        result = CliRunner().invoke(main, ["train", "--resume", str(run), *[str(a) for a in extra], "--quiet"])
        assert result.exit_code == 2 and message in result.output, result.output
    assert (run / "checkpoint.pt").read_bytes() == before and not (tmp_path / "branch").exists()
    # the checkpoint file itself names the run too, and the same data named another way is the same data
    result = _run("train", "--resume", run / "checkpoint.pt", "--max-steps", 4, "--data", f"{tiny_rec}/", "--quiet")
    assert result.exit_code == 0 and "for 4 steps" in result.output, result.output
    finished = CliRunner().invoke(main, ["train", "--resume", str(run), "--quiet"])
    assert finished.exit_code == 2 and "already finished its 4 steps; give --max-steps beyond" in finished.output
    result = _run("train", "--resume", run, "--max-steps", 0, "--quiet")  # 0 lifts the cap: on to the end
    assert result.exit_code == 0 and "for 6 steps" in result.output, result.output


def test_a_truncated_checkpoint_is_one_line_naming_the_file(tiny_rec, tmp_path):
    run = tmp_path / "run"
    _run("train", "--data", tiny_rec, "--out", run, "--max-steps", 1, *TRAIN_FLAGS)
    data = (run / "checkpoint.pt").read_bytes()
    (run / "checkpoint.pt").write_bytes(data[: len(data) // 2])
    for command in (["train", "--resume", str(run)], ["eval", str(run), "--val", str(tiny_rec / "val.bin")],
                    ["export", str(run), "--out", str(tmp_path / "m.pt")]):
        result = CliRunner().invoke(main, command)
        assert result.exit_code == 2 and f"{run / 'checkpoint.pt'}: cannot read checkpoint" in result.output
        assert "Traceback" not in result.output


def test_an_error_raised_in_a_loader_worker_prints_its_own_message():
    from cli import _one_line
    from core.errors import DataError

    raised = DataError("Caught DataError in DataLoader worker process 0.\nOriginal Traceback (most recent call "
                       "last):\n  File \"x.py\", line 1, in f\ncore.errors.DataError: /d/3.jpg: image file not found\n")
    assert _one_line(raised) == "/d/3.jpg: image file not found"
    assert _one_line(DataError("plain message")) == "plain message"


def test_export_never_replaces_the_runs_own_files(tiny_rec, tmp_path):
    run = tmp_path / "run"
    _run("train", "--data", tiny_rec, "--out", run, "--max-steps", 1, *TRAIN_FLAGS)
    before = (run / "checkpoint.pt").read_bytes()
    for target in ["checkpoint.pt", "config.yaml", next(run.glob("sampler-*.pt")).name]:
        result = CliRunner().invoke(main, ["export", str(run), "--out", str(run / target)])
        assert result.exit_code == 2 and "a file of the run" in result.output, result.output
    assert (run / "checkpoint.pt").read_bytes() == before
    assert _run("export", run, "--out", run / "model.pt").exit_code == 0  # a new file beside them is fine
    online = CliRunner().invoke(main, ["export", str(run), "--out", str(tmp_path / "online.pt"), "--online"])
    assert online.exit_code == 2 and "is a pfc run" in online.output  # only DCQ has a second encoder


def test_weights_that_do_not_fit_their_config_are_one_line(tiny_rec, tmp_path):
    import torch

    run = tmp_path / "run"
    _run("train", "--data", tiny_rec, "--out", run, "--max-steps", 1, *TRAIN_FLAGS)
    state = torch.load(run / "checkpoint.pt", weights_only=False)
    state["config"]["embedding_size"] = 32  # trained with 16
    torch.save(state, tmp_path / "edited.pt")
    for command in (["eval", str(tmp_path / "edited.pt"), "--val", str(tiny_rec / "val.bin")],
                    ["export", str(tmp_path / "edited.pt"), "--out", str(tmp_path / "model.pt")]):
        result = CliRunner().invoke(main, command)
        assert result.exit_code == 2 and "edited.pt: its weights do not fit" in result.output
        assert "features.weight is [16] in the file but [32] in the network" in result.output
        assert "Traceback" not in result.output and result.output.count("\n") == 1
    assert not (tmp_path / "model.pt").exists()


def test_eval_reports_every_val_file_even_when_names_repeat(tiny_rec, tmp_path):
    import shutil

    run = tmp_path / "run"
    _run("train", "--data", tiny_rec, "--out", run, "--max-steps", 2, *TRAIN_FLAGS)
    other = tmp_path / "other" / "val.bin"
    other.parent.mkdir()
    shutil.copy(tiny_rec / "val.bin", other)
    both = json.loads(_run("eval", run, "--val", tiny_rec / "val.bin", "--val", other, "--json").output)
    alone = json.loads(_run("eval", run, "--val", tiny_rec / "val.bin", "--json").output)
    assert set(both) == {f"{tiny_rec.name}/val", "other/val"}
    for name in both:
        assert both[name]["accuracy"] == pytest.approx(alone["val"]["accuracy"])


def test_non_finite_weights_and_one_sided_pairs_are_errors_naming_their_file(tiny_rec, tmp_path):
    import pickle

    import torch

    from core.data.verification_bin import write_verification_bin

    run = tmp_path / "run"
    _run("train", "--data", tiny_rec, "--out", run, "--max-steps", 1, *TRAIN_FLAGS)
    state = torch.load(run / "checkpoint.pt", weights_only=False)
    state["eval_backbone"]["fc.weight"][0, 0] = float("nan")
    torch.save(state, tmp_path / "nan.pt")
    for command in (["eval", str(tmp_path / "nan.pt"), "--val", str(tiny_rec / "val.bin")],
                    ["export", str(tmp_path / "nan.pt"), "--out", str(tmp_path / "model.pt")]):
        result = CliRunner().invoke(main, command)
        assert result.exit_code == 2 and "nan.pt: non-finite weights in fc.weight" in result.output
    with open(tiny_rec / "val.bin", "rb") as handle:
        images, issame = pickle.load(handle)
    write_verification_bin(tmp_path / "same.bin", images, [True] * len(issame))
    result = CliRunner().invoke(main, ["eval", str(run), "--val", str(tmp_path / "same.bin")])
    assert result.exit_code == 2 and f"{tmp_path / 'same.bin'}: ROC needs both same and different" in result.output


def test_every_config_key_is_a_flag_and_the_help_shows_its_default():
    from core.config import TrainConfig, config_keys

    train = main.commands["train"]
    flags = {param.name for param in train.params} | {"compile"}  # --compile's parameter is compile_backbone
    assert set(config_keys()) <= flags
    text = " ".join(_run("train", "--help").output.split())
    assert f"Epochs the schedule spans. (default {TrainConfig.epochs})" in text
    assert f"(default {TrainConfig.momentum})" in text and "(default 0.3)" in text  # shared, and a method's
    assert all(param.help for param in train.params if param.name not in ("quiet",))
