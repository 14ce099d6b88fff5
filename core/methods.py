"""The registry of training methods: ``--method NAME`` -> the package whose ``spec.py`` describes it.

A new method (a Partial FC or DCQ variant) is one package with a ``spec.py`` holding
``SPEC = MethodSpec(...)``, plus one line here. Nothing else in the project names a
method: the command line, config checks, analysis, export, benchmarks and the
experiment grid all read the spec. Importing this module, or a spec, never imports torch.
"""

from __future__ import annotations

import importlib

from core.errors import ConfigError
from core.method_spec import MethodSpec

METHODS: dict[str, str] = {
    "pfc": "partial_fc.spec",
    "dcq": "dcq.spec",
    "subcenter": "subcenter.spec",
}


def method_names() -> list[str]:
    return list(METHODS)


def get_method(name: str) -> MethodSpec:
    """The spec of ``--method name``; a ConfigError listing the methods when it is not one."""
    if name not in METHODS:
        raise ConfigError(f"--method must be one of {', '.join(METHODS)}; got {name!r}")
    spec = importlib.import_module(METHODS[name]).SPEC
    if spec.name != name:
        raise ConfigError(f"{METHODS[name]}.SPEC is named {spec.name!r} but registered as {name!r}")
    return spec


def all_methods() -> list[MethodSpec]:
    return [get_method(name) for name in METHODS]
