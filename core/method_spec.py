"""What a training method says about itself, so that nothing outside its package has to know it.

A method package (``partial_fc/``, ``dcq/``, a researcher's variant) defines one
``MethodSpec`` in a torch-free ``spec.py``: its options (a dataclass whose fields carry
defaults, types, allowed values and help), the loss recipe it defaults to, the sampler
builder, the per-class statistics its sampler records and what they mean, and the
network it is evaluated with. The command line, config validation, resume checks,
analysis, export, benchmarks and the experiment grid all read this object; the
registry in ``core/methods.py`` lists the packages.

Builders and analysis hooks are named as ``"module:function"`` strings and imported
only when used, so listing the methods (``--help``, config checks) never imports torch.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from core.errors import ConfigError


@dataclass(frozen=True)
class Range:
    """Allowed values of a numeric option; ``None`` leaves that side open."""

    low: Optional[float] = None
    high: Optional[float] = None
    low_inclusive: bool = True
    high_inclusive: bool = True

    def contains(self, value: float) -> bool:
        if isinstance(value, float) and math.isnan(value):
            return False
        if self.low is not None and (value < self.low or (value == self.low and not self.low_inclusive)):
            return False
        return not (self.high is not None and (value > self.high or (value == self.high and not self.high_inclusive)))

    def describe(self) -> str:
        low = "" if self.low is None else f"{'[' if self.low_inclusive else '('}{self.low:g}"
        high = "" if self.high is None else f"{self.high:g}{']' if self.high_inclusive else ')'}"
        if low and high:
            return f"in {low}, {high}"
        if low:
            return f"{'>=' if self.low_inclusive else '>'} {self.low:g}"
        return f"{'<=' if self.high_inclusive else '<'} {self.high:g}"


def option(default: Any, help: str, *, choices: Optional[tuple[str, ...]] = None, allowed: Optional[Range] = None,
           fixed_on_resume: bool = False) -> Any:
    """A field of a method's options dataclass: its default plus what the CLI and the checks need.

    ``fixed_on_resume``: the option shapes saved state or the data order (a queue's length,
    the store's dtype), so a resumed run may not change it.
    """
    return field(default=default, metadata={"help": help, "choices": choices, "allowed": allowed,
                                            "fixed_on_resume": fixed_on_resume})


@dataclass(frozen=True)
class OptionInfo:
    """One method option as the command line and the config checks see it."""

    name: str
    type: Any  # float, int, str or bool
    default: Any
    help: str
    choices: Optional[tuple[str, ...]]
    allowed: Optional[Range]
    fixed_on_resume: bool

    @property
    def flag(self) -> str:
        return option_flag(self.name)


@dataclass(frozen=True)
class Statistic:
    """A per-class counter a sampler records, named in the checkpoint so analysis can plot it.

    ``role``: ``positive`` (steps the class was a positive), ``negative`` (steps the class
    stood as a negative column) or ``other``. ``updates_weights``: whether standing as a
    negative moved a trained class weight, i.e. whether a ``negative`` count is a count of
    passive updates (Partial FC's centers) or only of exposure (DCQ's queue entries,
    which are generated, never trained).
    """

    name: str
    meaning: str
    role: str = "other"
    updates_weights: bool = False


@dataclass(frozen=True)
class MethodSpec:
    """Everything the rest of the project needs to know about one method."""

    name: str  # the --method value
    title: str  # for reports and help
    summary: str  # one sentence for --help, after "name (title):"
    options: type  # a dataclass of ``option(...)`` fields
    sampler: str  # "module:function" (options, SamplerEnvironment) -> ClassSampler
    recipe: dict[str, Any] = field(default_factory=dict)  # defaults of shared loss options (margin, margin_m, scale)
    statistics: tuple[Statistic, ...] = ()
    evaluation_network: str = "backbone"  # what evaluation and export use; not "backbone": --online is meaningful
    stored_centers: Optional[str] = None  # "module:function" (tables, embeddings, labels) -> [C, D] centers
    noise_signals: Optional[str] = None  # "module:function" (tables, embeddings, labels) -> list of NoiseSignal
    peer_step: Optional[str] = None  # "module:Class": the peer's training step that `bench step` compares with
    bench_options: dict[str, Any] = field(default_factory=dict)  # option values the benchmarks default to
    # option values under which the loss is the exact full softmax (analyze crossval's reference models train so);
    # None: the method has no such setting
    full_softmax_options: Optional[dict[str, Any]] = None

    def option_infos(self) -> list[OptionInfo]:
        hints = typing.get_type_hints(self.options)
        return [OptionInfo(name=item.name, type=hints[item.name], default=item.default, help=item.metadata["help"],
                           choices=item.metadata["choices"], allowed=item.metadata["allowed"],
                           fixed_on_resume=item.metadata["fixed_on_resume"])
                for item in dataclasses.fields(self.options)]

    def option_names(self) -> list[str]:
        return [item.name for item in dataclasses.fields(self.options)]

    def make_options(self, values: dict[str, Any]) -> Any:
        """The options dataclass from ``values`` (defaults for the rest), checked for names, types and ranges."""
        infos = {info.name: info for info in self.option_infos()}
        unknown = sorted(set(values) - set(infos))
        if unknown:
            raise ConfigError(f"{', '.join(map(option_flag, unknown))}: not an option of --method {self.name}"
                              f" ({self.title}); its options are "
                              f"{', '.join(map(option_flag, infos)) or 'none'}")
        for name, value in values.items():
            check_option_value(infos[name], value)
        return self.options(**values)

    def fixed_on_resume(self) -> tuple[str, ...]:
        return tuple(info.name for info in self.option_infos() if info.fixed_on_resume)


def check_option_value(info: OptionInfo, value: Any) -> None:
    """A ConfigError naming the option when ``value`` has the wrong type or lies outside what it allows."""
    where = f"{info.name} ({info.flag})"
    if info.type is bool:
        valid = isinstance(value, bool)
    elif info.type is int:
        valid = isinstance(value, int) and not isinstance(value, bool)
    elif info.type is float:
        valid = isinstance(value, (int, float)) and not isinstance(value, bool)
    else:
        valid = isinstance(value, info.type)
    if not valid:
        raise ConfigError(f"{where}: expected {'a number' if info.type is float else info.type.__name__}, "
                          f"got {value!r}")
    if info.type is float and not math.isfinite(value):
        raise ConfigError(f"{where} must be a finite number, got {value}")
    if info.choices is not None and value not in info.choices:
        raise ConfigError(f"{where} must be one of {', '.join(info.choices)}; got {value!r}")
    if info.allowed is not None and not info.allowed.contains(value):
        raise ConfigError(f"{where} must be {info.allowed.describe()}, got {value}")


def load_reference(reference: str) -> Callable[..., Any]:
    """The object a ``"module:name"`` string names, imported now."""
    module_name, _, attribute = reference.partition(":")
    return getattr(importlib.import_module(module_name), attribute)


def option_flag(name: str) -> str:
    """The command-line flag of a config key: ``sample_rate`` -> ``--sample-rate``."""
    return "--" + name.replace("_", "-")
