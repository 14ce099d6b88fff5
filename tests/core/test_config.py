import pytest

from core.config import TrainConfig, load_config
from core.errors import ConfigError, DataError


@pytest.mark.parametrize("yaml_text, message", [
    ("batch_size: '16'\n", "batch_size (--batch-size): expected int, got '16'"),
    ("epochs: 1.7\n", "epochs (--epochs): expected int, got 1.7"),
    ("margin_combined: 0.3\n", "margin_combined (--margin-combined): expected a list of numbers"),
    ("compile: 'yes'\n", "compile (--compile): expected bool"),
    ("momentum: 1.0\n", "momentum (--momentum) must be in [0, 1)"),
    ("max_steps: -1\n", "max_steps (--max-steps) must be >= 0"),
    ("grad_clip: -1\n", "grad_clip (--grad-clip) must be >= 0.0"),
])
def test_yaml_values_are_checked_for_type_and_range(tmp_path, yaml_text, message):
    path = tmp_path / "config.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError) as error:
        load_config(path, {})
    assert message in str(error.value)


def test_yaml_numbers_and_a_single_val_file_are_accepted(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("lr: 1\nval: /data/lfw.bin\nmax_steps: null\nweight_decay: 5e-4\n")  # YAML reads 5e-4 as text
    config = load_config(path, {})
    assert config.lr == 1 and config.val == ["/data/lfw.bin"] and config.max_steps is None
    assert config.weight_decay == 5e-4


def test_tuples_from_the_python_api_become_lists():
    config = TrainConfig(margin_combined=(1.0, 0.3, 0.2), val=("a.bin",)).validate()
    assert config.margin_combined == [1.0, 0.3, 0.2] and config.val == ["a.bin"]


def test_an_option_of_another_method_is_an_error_naming_the_methods_options():
    with pytest.raises(ConfigError) as error:
        TrainConfig().replace(method="pfc", queue_size=0.2).validate()
    assert "--queue-size: not an option of --method pfc (Partial FC)" in str(error.value)
    assert "--sample-rate" in str(error.value)
    with pytest.raises(ConfigError, match="unknown config key"):
        TrainConfig().replace(queue_sise=0.2)


def test_method_options_are_checked_and_read_with_their_defaults(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("method: dcq\nqueue_size: 1e-1\nk_shot: 2\n")  # YAML reads 1e-1 as text
    config = load_config(path, {"dcq_momentum": 0.99})
    assert (config.options.queue_size, config.options.k_shot, config.options.dcq_momentum) == (0.1, 2, 0.99)
    assert config.options.identity_sampling == "image"  # the method's default
    path.write_text("method: dcq\nk_shot: 0\n")
    with pytest.raises(ConfigError, match=r"k_shot \(--k-shot\) must be in \[1, 63\], got 0"):
        load_config(path, {})


def test_a_saved_config_is_flat_complete_and_reads_back():
    config = TrainConfig().replace(method="dcq", queue_size=64, lr=0.05).validate()
    saved = config.to_dict()
    assert list(saved)[:6] == ["method", "queue_size", "dcq_momentum", "k_shot", "strict_k_shot", "identity_sampling"]
    assert "sample_rate" not in saved  # another method's option
    again = TrainConfig.from_dict(saved)
    assert again.to_dict() == saved and again.options == config.options


def test_the_recipe_fills_only_unset_loss_options():
    assert (TrainConfig(method="dcq").with_recipe().margin, TrainConfig(method="dcq").with_recipe().margin_m,
            TrainConfig(method="dcq").with_recipe().scale) == ("cosface", 0.3, 50.0)
    other_margin = TrainConfig(method="dcq", margin="arcface").with_recipe()
    assert (other_margin.margin, other_margin.margin_m, other_margin.scale) == ("arcface", None, 50.0)
    assert TrainConfig(method="pfc", scale=30.0).with_recipe().scale == 30.0


def test_resume_refuses_the_methods_fixed_options_and_allows_the_rest(tmp_path):
    import torch

    from core.config import resume_config

    run = tmp_path / "run"
    run.mkdir()
    saved = TrainConfig().replace(method="dcq", queue_size=0.1).validate()
    torch.save({"format": 3, "config": saved.to_dict(), "eval_backbone": {}, "world_size": 1}, run / "checkpoint.pt")
    with pytest.raises(ConfigError, match=r"--queue-size 0.5 \(the run has 0.1\)"):
        resume_config({"resume": str(run), "queue_size": 0.5})
    _, config = resume_config({"resume": str(run), "dcq_momentum": 0.99, "epochs": 20})
    assert config.options.dcq_momentum == 0.99 and config.epochs == 20 and config.options.queue_size == 0.1


def test_resuming_a_checkpoint_of_an_earlier_format_says_so(tmp_path):
    import torch

    from core.config import resume_config

    run = tmp_path / "run"
    run.mkdir()
    legacy = {**TrainConfig(method="pfc").to_dict(), "queue_size": 0.1}  # format 1 saved every method's keys
    torch.save({"config": legacy, "eval_backbone": {}}, run / "checkpoint.pt")
    with pytest.raises(DataError, match="checkpoint format 1, this one reads 3"):
        resume_config({"resume": str(run)})


@pytest.mark.parametrize("world, flags, expected", [
    (1, {}, {"batch_size": 128, "accumulate": 1}),  # 2 x 64 resumed on 1: the per-process batch doubles
    (4, {}, {"batch_size": 32, "accumulate": 1}),
    (1, {"accumulate": 2}, {"batch_size": 64, "accumulate": 2}),  # or accumulation makes it up
    (1, {"batch_size": 32}, {"batch_size": 32, "accumulate": 4}),
    (1, {"batch_size": 128, "accumulate": 1}, {"batch_size": 128, "accumulate": 1}),
])
def test_a_resumed_run_keeps_its_global_batch_on_any_number_of_processes(world, flags, expected):
    from core.config import resume_batch_split

    saved = TrainConfig().replace(batch_size=64, accumulate=1)
    assert resume_batch_split(saved, 2, world, flags) == expected


@pytest.mark.parametrize("world, flags, message", [
    (5, {}, "128 does not divide over 5 processes"),
    (3, {}, "does not divide over 3 processes"),
    (1, {"batch_size": 100}, "Give one of: --batch-size 128 --accumulate 1; --batch-size 64 --accumulate 2"),
    (2, {"batch_size": 64, "accumulate": 2}, "--batch-size 64 --accumulate 1; --batch-size 32 --accumulate 2"),
])
def test_a_split_that_cannot_keep_the_global_batch_is_refused_with_the_ones_that_can(world, flags, message):
    from core.config import resume_batch_split

    saved = TrainConfig().replace(batch_size=64, accumulate=1)
    with pytest.raises(ConfigError) as error:
        resume_batch_split(saved, 2, world, flags)
    assert "global batch is 128 images per step (64 x 1 accumulated x 2 processes)" in str(error.value)
    assert message in str(error.value)


@pytest.mark.parametrize("text", ["lr: .nan\n", "lr: .inf\n", "method: dcq\ndcq_momentum: .nan\n",
                                  "margin_m: -.inf\n"])
def test_numbers_that_are_not_finite_are_refused(tmp_path, text):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="must be a finite number"):
        load_config(path, {})
