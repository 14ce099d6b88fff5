"""Command-line flags for every registered method's options, made from the method specs.

A method's options dataclass is the only place its flags are declared: ``train`` (and
``bench step``) take ``--method`` from the registry and one flag per option of any
method. An option two methods share (sub-center ArcFace takes Partial FC's
``--sample-rate``) is one flag. Which flags fit the chosen method is checked with the
config, so ``--queue-size`` with ``--method pfc`` is an error that names DCQ's options.
"""

from __future__ import annotations

from typing import Any, Callable

import click

from core.method_spec import OptionInfo
from core.methods import all_methods, method_names


def _method_help() -> str:
    return " ".join(f"{spec.name} ({spec.title}): {spec.summary}" for spec in all_methods())


class MethodName(click.Choice):
    """``--method``'s choices, read from the registry each time a value is checked, so click never refuses
    a method the registry knows (one registered after this module was imported included)."""

    def __init__(self) -> None:
        super().__init__([])

    @property
    def choices(self) -> tuple[str, ...]:
        return tuple(method_names())

    @choices.setter
    def choices(self, value: Any) -> None:  # click.Choice.__init__ assigns it; the registry is the source
        pass


def method_choice(**settings: Any) -> Callable:
    """``--method``, its choices from the registry (``help`` goes before the list of methods)."""
    help_text = " ".join(part for part in (settings.pop("help", ""), _method_help()) if part)
    return click.option("--method", type=MethodName(), help=help_text, **settings)


def options_by_name() -> dict[str, tuple[OptionInfo, list[str]]]:
    """Every method option once: its description and the titles of the methods that take it."""
    found: dict[str, tuple[OptionInfo, list[str]]] = {}
    for spec in all_methods():
        for info in spec.option_infos():
            if info.name in found and found[info.name][0].type is not info.type:
                raise TypeError(f"option {info.name}: {spec.name} declares it as {info.type.__name__}, another "
                                f"method as {found[info.name][0].type.__name__}")
            found.setdefault(info.name, (info, []))[1].append(spec.title)
    return found


def _click_option(info: OptionInfo, titles: list[str]) -> Callable:
    text = f"{', '.join(titles)}: {info.help} (default {info.default})"
    if info.type is bool:
        return click.option(f"{info.flag}/--no-{info.flag[2:]}", info.name, default=None, help=text)
    kind = click.Choice(list(info.choices)) if info.choices else info.type
    return click.option(info.flag, info.name, type=kind, default=None, help=text)


def method_option_flags(function: Callable) -> Callable:
    """Decorate a click command with one flag per method option (unset: None)."""
    for info, titles in reversed(list(options_by_name().values())):
        function = _click_option(info, titles)(function)
    return function
