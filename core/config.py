"""The training configuration: one dataclass, YAML in, the resolved copy saved with every run.

Precedence is defaults < ``--config`` YAML < command-line flags. Unknown YAML keys are
an error rather than silently ignored, because a misspelt key would otherwise train a
different model than the one the researcher asked for.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from core.errors import ConfigError


@dataclass
class TrainConfig:
    # what to train
    method: str = "pfc"
    data: str = "synthetic"
    val: list[str] = field(default_factory=list)
    backbone: str = "tiny"
    embedding_size: int = 512
    input_size: Optional[int] = None  # None: the backbone's default
    # the softmax
    sample_rate: float = 0.3  # insightface uses 0.2-0.3 for large sets; at 0.1 the default set samples no negatives
    margin: Optional[str] = None  # None: the method's recipe (pfc: arcface s=64; dcq: cosface 0.3, s=50)
    margin_m: Optional[float] = None  # None: 0.5 for arcface, 0.4 for cosface
    margin_combined: list[float] = field(default_factory=lambda: [1.0, 0.3, 0.2])
    scale: Optional[float] = None
    straight_through: bool = False
    interclass_threshold: Optional[float] = None
    center_dtype: str = "float32"  # Partial FC center store + optimizer state; bfloat16 halves it (20M+ classes)
    pfc_sampling: str = "uniform"  # uniform: exactly uniform negatives; stratified: fixed shapes, no host sync
    # optimisation
    epochs: int = 12
    max_steps: Optional[int] = None  # stop early (tests, benchmarks); the schedule still spans `epochs`
    batch_size: int = 128
    accumulate: int = 1
    lr: float = 0.1
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: float = 1.0
    lr_power: float = 2.0
    grad_clip: float = 5.0
    amp: str = "auto"  # auto: bf16 autocast on CUDA, off on CPU
    channels_last: bool = False  # NHWC convolutions (faster with bf16 on tensor cores)
    compile: bool = False  # torch.compile the backbone (pays off on CUDA after a minute of compiling)
    # DCQ
    queue_size: float = 0.1  # < 1: fraction of the classes; >= 1: number of entries
    dcq_momentum: float = 0.999
    k_shot: int = 1
    strict_k_shot: bool = False  # error (instead of repeating images) when an identity has < k + 1 images
    identity_sampling: str = "image"  # image | category
    # the run
    out: Optional[str] = None
    resume: Optional[str] = None
    device: str = "auto"
    seed: int = 0
    workers: int = 2
    cache_images: str = "auto"  # auto | on | off: keep decoded, resized images in memory
    checkpoint_every: int = 500
    log_every: int = 20
    val_every: int = 0  # 0: at the end of every epoch
    # the embedded synthetic default
    synthetic_identities: int = 600
    flip_noise: float = 0.05
    split: float = 0.05

    def replace(self, **changes: Any) -> "TrainConfig":
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ConfigError(f"unknown config key(s): {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def config_keys() -> list[str]:
    return [f.name for f in dataclasses.fields(TrainConfig)]


def load_config(path: Optional[str | Path], overrides: dict[str, Any]) -> TrainConfig:
    """Defaults, then the YAML file, then ``overrides`` (flags the user actually gave)."""
    config = TrainConfig()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"--config {path}: file not found")
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"--config {path}: not valid YAML ({exc})") from exc
        if not isinstance(values, dict):
            raise ConfigError(f"--config {path}: expected a mapping of keys to values")
        unknown = sorted(set(values) - set(config_keys()))
        if unknown:
            raise ConfigError(f"--config {path}: unknown key(s) {', '.join(unknown)}; "
                              f"valid keys are {', '.join(config_keys())}")
        config = config.replace(**values)
    return config.replace(**{k: v for k, v in overrides.items() if v is not None})


def save_config(config: TrainConfig, path: Path) -> None:
    from core.io import atomic_write_text
    atomic_write_text(path, yaml.safe_dump(config.to_dict(), sort_keys=False))
