"""arcface_torch configs as ``--config``: read without running them, mapped key by key.

The configs below are written out here from the keys and values insightface's
``recognition/arcface_torch/configs/`` files set (ms1mv3_r50, a WebFace12M flip-noise
Partial FC 0.1 + filter config, glint360k_mbf, a ViT one), in the same edict style.
"""

import shutil

import pytest
import yaml
from click.testing import CliRunner

from cli import main
from core.arcface_config import read_arcface_config
from core.errors import ConfigError

MS1MV3_R50 = """from easydict import EasyDict as edict

config = edict()
config.margin_list = (1.0, 0.5, 0.0)
config.network = "r50"
config.resume = False
config.output = None
config.embedding_size = 512
config.sample_rate = 1.0
config.fp16 = True
config.momentum = 0.9
config.weight_decay = 5e-4
config.batch_size = 128
config.lr = 0.2
config.verbose = 2000
config.dali = False

config.rec = "{rec}"
config.num_classes = 93431
config.num_image = 5179510
config.num_epoch = 25
config.warmup_epoch = 2
config.val_targets = ['lfw', 'cfp_fp', "agedb_30"]
"""

FLIP_PFC01_FILTER = """from easydict import EasyDict as edict
config = edict()
config.margin_list = (1.0, 0.0, 0.4)
config.network = "r50"
config.sample_rate = 0.1
config.interclass_filtering_threshold = 0.4
config.fp16 = True
config.optimizer = "sgd"
config.rec = "/train_tmp/WebFace12M_FLIP40"
config.num_epoch = 20
config.warmup_epoch = config.num_epoch // 10
config.val_targets = []
config.using_wandb = False
"""


def _write(tmp_path, text, name="config.py"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_every_key_of_an_ms1mv3_config_is_mapped(tmp_path):
    options, notes = read_arcface_config(_write(tmp_path, MS1MV3_R50.format(rec="/data/ms1m")))
    assert options == {
        "method": "pfc", "backbone": "iresnet50", "margin": "arcface", "margin_m": 0.5, "interclass_threshold": None,
        "sample_rate": 1.0, "amp": "auto", "embedding_size": 512, "batch_size": 128, "optimizer": "sgd", "lr": 0.2,
        "momentum": 0.9, "weight_decay": 5e-4, "accumulate": 1, "seed": 2048, "workers": 2, "log_every": 10,
        "val_every": 2000, "epochs": 25, "warmup_epochs": 2.0, "data": "/data/ms1m",
        "val": ["lfw", "cfp_fp", "agedb_30"]}  # optimizer, gradient_acc, seed ...: arcface_torch's base.py defaults
    assert any("not used here: dali, num_classes, num_image" in note for note in notes)


def test_cosface_filtering_and_arithmetic_on_earlier_keys(tmp_path):
    options, notes = read_arcface_config(_write(tmp_path, FLIP_PFC01_FILTER))
    assert (options["margin"], options["margin_m"]) == ("cosface", 0.4)
    assert (options["sample_rate"], options["interclass_threshold"], options["warmup_epochs"]) == (0.1, 0.4, 2.0)
    assert "val" not in options  # no targets: none asked for
    assert any("using_wandb" in note for note in notes)


@pytest.mark.parametrize("line, message", [
    ('config.network = "vit_t_dp005_mask0"', "network 'vit_t_dp005_mask0' has no counterpart here"),
    ("config.resume = True", "resume = True; continue a run with --resume RUN instead"),
    ("config.mask_ratio = 0.1", "mask_ratio: no counterpart here, and they may change training"),
    ("config.margin_list = (1.0, 0.3, 0.2)", None),  # combined margins are mapped, not refused
    ("config.lr = float('nan')", "float('nan')\" is not a value this reader evaluates"),
    ("print('hello')", "only `config.KEY = VALUE` lines are read"),
])
def test_what_cannot_be_mapped_is_refused_by_name(tmp_path, line, message):
    path = _write(tmp_path, "from easydict import EasyDict as edict\nconfig = edict()\n" + line + "\n")
    if message is None:
        assert read_arcface_config(path)[0]["margin_combined"] == [1.0, 0.3, 0.2]
        return
    with pytest.raises(ConfigError) as error:
        read_arcface_config(path)
    assert message in str(error.value) and str(path) in str(error.value)


def test_a_config_that_would_run_code_is_never_run(tmp_path):
    marker = tmp_path / "PWNED"
    path = _write(tmp_path, f"import os\nos.system('touch {marker}')\nconfig = edict()\n")
    with pytest.raises(ConfigError, match="only `config.KEY = VALUE` lines are read"):
        read_arcface_config(path)
    assert not marker.exists()


def test_an_ms1mv3_config_trains_on_the_tiny_set_and_its_resolved_config_names_every_key(tiny_rec, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_rec, data)
    for name in ("lfw", "cfp_fp", "agedb_30"):  # insightface keeps its .bin files beside train.rec
        shutil.copy(data / "val.bin", data / f"{name}.bin")
    config = _write(tmp_path, MS1MV3_R50.format(rec=data), "ms1mv3_r50.py")
    run = tmp_path / "run"
    result = CliRunner().invoke(main, ["train", "--config", str(config), "--backbone", "tiny", "--input-size", "16",
                                       "--embedding-size", "16", "--batch-size", "8", "--max-steps", "2",
                                       "--workers", "0", "--device", "cpu", "--out", str(run), "--quiet"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    resolved = yaml.safe_load((run / "config.yaml").read_text())
    assert {key: resolved[key] for key in ("method", "margin", "margin_m", "sample_rate", "amp", "optimizer", "lr",
                                           "momentum", "weight_decay", "accumulate", "seed", "log_every",
                                           "val_every", "epochs", "warmup_epochs", "data")} == {
        "method": "pfc", "margin": "arcface", "margin_m": 0.5, "sample_rate": 1.0, "amp": "auto", "optimizer": "sgd",
        "lr": 0.2, "momentum": 0.9, "weight_decay": 5e-4, "accumulate": 1, "seed": 2048, "log_every": 10,
        "val_every": 2000, "epochs": 25, "warmup_epochs": 2.0, "data": str(data)}
    assert resolved["backbone"] == "tiny" and resolved["batch_size"] == 8  # the flags swapped them
    assert resolved["val"] == ["lfw", "cfp_fp", "agedb_30"]
    for name in ("lfw", "cfp_fp", "agedb_30"):  # found beside the data and evaluated
        assert f"{name}: accuracy" in result.output


def test_a_val_name_that_is_not_beside_the_data_is_named(tiny_rec, tmp_path):
    result = CliRunner().invoke(main, ["train", "--data", str(tiny_rec), "--val", "lfw", "--out", str(tmp_path / "r"),
                                       "--input-size", "16", "--workers", "0", "--device", "cpu", "--quiet"])
    assert result.exit_code == 2
    assert f"--val lfw: neither a file nor {tiny_rec / 'lfw.bin'}" in result.output
