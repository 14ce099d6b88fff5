import pytest

from core.config import TrainConfig, load_config
from core.errors import ConfigError


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
