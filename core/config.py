"""The training configuration: one dataclass, YAML in, the resolved copy saved with every run.

Precedence is defaults < ``--config`` YAML < command-line flags. Unknown YAML keys are
an error rather than silently ignored, because a misspelt key would otherwise train a
different model than the one the researcher asked for.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from core.errors import ConfigError
from core.figures import FIGURE_FORMATS
from core.method_spec import MethodSpec, option_flag
from core.methods import all_methods, get_method


@dataclass
class TrainConfig:
    # what to train
    method: str = "pfc"
    data: str = "synthetic"
    val: list[str] = field(default_factory=list)
    backbone: str = "tiny"
    embedding_size: int = 512
    input_size: Optional[int] = None  # None: the backbone's default
    init: Optional[str] = None  # start the backbone from a run's model or bare weights; the head starts fresh
    # the softmax
    margin: Optional[str] = None  # None: the method's recipe (pfc: arcface s=64; dcq: cosface 0.3, s=50)
    margin_m: Optional[float] = None  # None: 0.5 for arcface, 0.4 for cosface
    margin_combined: list[float] = field(default_factory=lambda: [1.0, 0.3, 0.2])
    scale: Optional[float] = None
    straight_through: bool = False
    interclass_threshold: Optional[float] = None
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
    amp: str = "auto"  # auto: bf16 autocast on CUDA, off on CPU; fp16: float16 autocast + loss scaling
    channels_last: bool = False  # NHWC convolutions (faster with bf16 on tensor cores)
    compile: bool = False  # torch.compile the backbone (pays off on CUDA after a minute of compiling)
    record_dynamics: bool = True  # each sample's margin over training, for analyze's noise ranking (core/dynamics.py)
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
    figure_format: str = "png"  # png | pdf | svg: the training curves' file
    # the embedded synthetic default
    synthetic_identities: int = 600
    flip_noise: float = 0.05
    split: float = 0.05

    # The method's own options (see its spec.py), by name: flat keys in YAML and on the command line. It
    # holds the values given; `options` fills in the method's defaults. Saved configs hold them all.
    method_options: dict[str, Any] = field(default_factory=dict)

    @property
    def spec(self) -> MethodSpec:
        return get_method(self.method)

    @property
    def options(self) -> Any:
        """The method's options dataclass: the values given, the method's defaults for the rest, checked."""
        return self.spec.make_options(self.method_options)

    def validate(self) -> "TrainConfig":
        """Types (YAML gives strings as readily as numbers) and ranges, before anything is built or written."""
        hints = typing.get_type_hints(TrainConfig)
        for item in dataclasses.fields(self):
            if item.name == "method_options":
                continue
            value = getattr(self, item.name)
            if isinstance(value, tuple) and typing.get_origin(hints[item.name]) is list:
                value = list(value)  # the Python API may pass tuples; saved configs hold lists
                setattr(self, item.name, value)
            if not _matches(value, hints[item.name]):
                raise ConfigError(f"{_option(item.name)}: expected {_describe(hints[item.name])}, got {value!r}")
        for name in _FLOAT_KEYS:
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise ConfigError(f"{_option(name)} must be a finite number, got {value}")
        for name, low, inclusive in _LOWER_BOUNDS:
            value = getattr(self, name)
            if value is not None and (value < low or (value == low and not inclusive)):
                raise ConfigError(f"{_option(name)} must be {'>=' if inclusive else '>'} {low}, got {value}")
        for name, allowed in CHOICES.items():
            value = getattr(self, name)
            if value is not None and value not in allowed:
                raise ConfigError(f"{_option(name)} must be one of {', '.join(allowed)}, got {value!r}")
        if not 0.0 <= self.momentum < 1.0:
            raise ConfigError(f"{_option('momentum')} must be in [0, 1), got {self.momentum}")
        self.options  # the method exists and its options fit it
        return self

    def replace(self, **changes: Any) -> "TrainConfig":
        """A copy with ``changes``: shared keys, or options of the (new) method by their flat names."""
        shared = {key: value for key, value in changes.items() if key in _SHARED_KEYS}
        given = {key: value for key, value in changes.items() if key not in _SHARED_KEYS}
        unknown = set(given) - set(all_option_names())
        if unknown:
            raise ConfigError(f"unknown config key(s): {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **shared, method_options={**self.method_options, **given})

    def with_recipe(self) -> "TrainConfig":
        """Unset loss options (None) from the method's recipe; a margin other than the recipe's keeps only
        its scale (the recipe's margin_m belongs to the recipe's margin)."""
        recipe = self.spec.recipe
        if self.margin is not None and self.margin != recipe.get("margin"):
            recipe = {key: value for key, value in recipe.items() if key == "scale"}
        return self.replace(**{key: value for key, value in recipe.items() if getattr(self, key) is None})

    def to_dict(self) -> dict[str, Any]:
        """Flat, as YAML and flags give it: the shared keys with the method's options (all of them) after ``method``."""
        shared = {item.name: getattr(self, item.name) for item in dataclasses.fields(self)
                  if item.name != "method_options"}
        options = dataclasses.asdict(self.options)
        return {"method": shared.pop("method"), **options, **shared}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        """The inverse of ``to_dict`` (a saved config.yaml or a checkpoint's config)."""
        return cls().replace(**values)


# The keys that name one of a few choices: the flags offer these, and a config file is held to them.
CHOICES = {"margin": ("arcface", "cosface", "combined"), "optimizer": ("sgd", "adamw"),
           "amp": ("auto", "bf16", "fp16", "off"), "cache_images": ("auto", "on", "off"),
           "figure_format": FIGURE_FORMATS}

# (key, bound, bound allowed): the options whose range is simple enough to state here.
_LOWER_BOUNDS = (("batch_size", 1, True), ("epochs", 1, True), ("accumulate", 1, True), ("lr", 0.0, False),
                 ("weight_decay", 0.0, True), ("grad_clip", 0.0, True), ("warmup_epochs", 0.0, True),
                 ("lr_power", 0.0, False), ("max_steps", 0, True), ("workers", 0, True),
                 ("checkpoint_every", 0, True), ("log_every", 1, True), ("val_every", 0, True),
                 ("embedding_size", 1, True), ("synthetic_identities", 2, True))


_SHARED_KEYS = frozenset(item.name for item in dataclasses.fields(TrainConfig)) - {"method_options"}
_FLOAT_KEYS = {name for name, hint in typing.get_type_hints(TrainConfig).items() if hint in (float, Optional[float])}


def all_option_names() -> list[str]:
    """Every option of every registered method (a key is unknown only when no method takes it)."""
    return sorted({name for spec in all_methods() for name in spec.option_names()})


def _option(name: str) -> str:
    return f"{name} ({option_flag(name)})"


def _matches(value: Any, hint: Any) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union:
        return any(_matches(value, arg) for arg in args)
    if hint is type(None):
        return value is None
    if origin is list:
        return isinstance(value, list) and all(_matches(v, args[0]) for v in value)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union:
        return " or ".join(_describe(arg) for arg in args)
    if origin is list:
        return "a list of " + ("numbers" if args[0] is float else "strings" if args[0] is str else _describe(args[0]))
    return "null" if hint is type(None) else ("a number" if hint is float else hint.__name__)


def config_keys() -> list[str]:
    """The keys a config may hold: the shared ones and every method's options (which fit the method is
    checked with the rest of the config)."""
    return sorted(_SHARED_KEYS) + all_option_names()


def load_config(path: Optional[str | Path], overrides: dict[str, Any]) -> TrainConfig:
    """Defaults, then the config file (YAML, or an arcface_torch ``.py``), then ``overrides`` (flags given)."""
    values = {} if path is None else _read_config_file(Path(path))
    values = {**values, **{k: v for k, v in overrides.items() if v is not None}}
    method = values.get("method", TrainConfig.method)
    float_keys = _FLOAT_KEYS | {info.name for info in get_method(method).option_infos() if info.type is float}
    for key in float_keys & set(values):  # PyYAML reads 5e-4 (no dot) as a string
        if isinstance(values[key], str):
            try:
                values[key] = float(values[key])
            except ValueError:
                pass  # validate() names the key and the value
    return TrainConfig().replace(**values).validate()


def _read_config_file(path: Path) -> dict[str, Any]:
    """A config file's keys: YAML, or an arcface_torch Python config read without running it."""
    if not path.is_file():
        raise ConfigError(f"--config {path}: file not found")
    if path.suffix == ".py":
        from core.arcface_config import read_arcface_config

        values, notes = read_arcface_config(path)
        for note in notes:
            print(f"note: --config {path}: {note}", file=sys.stderr)
        return values
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
    if isinstance(values.get("val"), str):  # one file written as a string rather than a list
        values["val"] = [values["val"]]
    return values


# What a resumed run cannot change: the model, the data and its order, and the shapes of the
# saved state; the method adds its own (``fixed_on_resume`` options). Schedule and runtime
# options (--epochs, --max-steps, --lr, --val, --device, --workers, logging, checkpointing) may change.
RESUME_FIXED_KEYS = ("method", "data", "backbone", "embedding_size", "input_size", "optimizer", "seed",
                     "synthetic_identities", "flip_noise", "split")


def resume_config(options: dict[str, Any]) -> tuple[Path, TrainConfig]:
    """The run directory and config of ``options['resume']``, with the flags that may change applied."""
    from core.checkpoint import check_resumable, read_checkpoint

    if options.get("init") is not None:
        raise ConfigError(f"--init {options['init']}: a resumed run continues from its checkpoint; --init starts a "
                          "new run's backbone")
    checkpoint, state = read_checkpoint(options["resume"])
    check_resumable(checkpoint, state)  # before its config is read: an older layout names other keys
    run_dir = checkpoint.parent
    if options.get("out") is not None and Path(options["out"]).resolve() != run_dir.resolve():
        raise ConfigError(f"--out {options['out']}: a resumed run continues in its own directory ({run_dir}); "
                          "copy that directory first to branch the run")
    saved = TrainConfig.from_dict(state["config"])
    fixed = RESUME_FIXED_KEYS + saved.spec.fixed_on_resume()
    changed = [f"{option_flag(key)} {options[key]} (the run has {_saved_value(saved, key)})"
               for key in fixed if key in options and _differs(key, options[key], saved)]
    if changed:
        raise ConfigError(f"--resume {run_dir}: {'; '.join(changed)}. A resumed run keeps its method, model, data "
                          "and batch layout; train a new run to change them")
    split = resume_batch_split(saved, state["world_size"], int(os.environ.get("WORLD_SIZE", "1")), options)
    return run_dir, saved.replace(**{**options, **split, "resume": str(run_dir), "out": str(run_dir)}).validate()


def resume_batch_split(saved: TrainConfig, saved_world: int, world: int, options: dict[str, Any]) -> dict[str, int]:
    """``batch_size`` and ``accumulate`` that give ``world`` processes the run's global batch.

    The global batch (images per optimizer step) is what a resumed run keeps: its schedule,
    its data order and its updates follow from it, not from how it is split. Unless the
    flags say otherwise the accumulation stays and the per-process batch absorbs the change.
    """
    global_batch = saved.batch_size * saved.accumulate * saved_world
    accumulate = options.get("accumulate")
    batch = options.get("batch_size")
    if accumulate is None and batch is None:
        accumulate = saved.accumulate
    if batch is None and accumulate is not None and global_batch % (accumulate * world) == 0:
        batch = global_batch // (accumulate * world)
    elif accumulate is None and batch is not None and global_batch % (batch * world) == 0:
        accumulate = global_batch // (batch * world)
    if batch is None or accumulate is None or batch * accumulate * world != global_batch:
        working = [f"--batch-size {global_batch // (a * world)} --accumulate {a}" for a in range(1, 17)
                   if global_batch % (a * world) == 0]
        raise ConfigError(f"--resume: the run's global batch is {global_batch} images per step ({saved.batch_size} "
                          f"x {saved.accumulate} accumulated x {saved_world} processes); {world} process(es) "
                          f"cannot keep it with the flags given. "
                          + (f"Give one of: {'; '.join(working)}" if working else
                             f"{global_batch} does not divide over {world} processes"))
    return {"batch_size": batch, "accumulate": accumulate}


def _saved_value(saved: TrainConfig, key: str) -> Any:
    return getattr(saved, key) if key in _SHARED_KEYS else getattr(saved.options, key)


def _differs(key: str, given: Any, saved: TrainConfig) -> bool:
    """Whether a flag really changes the run: paths compare resolved, the input size as the model uses it."""
    had = _saved_value(saved, key)
    if key == "data" and given != "synthetic" and had != "synthetic":
        return Path(given).expanduser().resolve() != Path(had).expanduser().resolve()
    if key == "input_size":
        from core.backbones import default_input_size
        return given != (had or default_input_size(saved.backbone))
    return given != had


def save_config(config: TrainConfig, path: Path) -> None:
    from core.io import atomic_write_text
    atomic_write_text(path, yaml.safe_dump(config.to_dict(), sort_keys=False))
