"""The registry: every method it lists describes itself completely, and listing them never imports torch."""

import subprocess
import sys
from pathlib import Path

import pytest

from core.errors import ConfigError
from core.method_options import options_by_name
from core.method_spec import load_reference
from core.methods import METHODS, all_methods, get_method, method_names

ROOT = Path(__file__).resolve().parents[2]


def test_listing_the_methods_and_their_options_imports_no_torch():
    code = ("import sys; from core.methods import all_methods; from core.config import TrainConfig; "
            "[s.option_infos() for s in all_methods()]; TrainConfig(method='dcq').validate(); "
            "print('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_an_unknown_method_is_an_error_listing_the_registered_ones():
    with pytest.raises(ConfigError, match=r"--method must be one of pfc, dcq.*got 'nope'"):
        get_method("nope")


@pytest.mark.parametrize("name", method_names())
def test_every_spec_is_complete_and_its_references_resolve(name):
    spec = get_method(name)
    assert spec.name == name and spec.title and spec.summary.endswith(".")
    assert callable(load_reference(spec.sampler))
    for hook in (spec.stored_centers, spec.noise_signals, spec.peer_step):
        assert hook is None or callable(load_reference(hook))
    defaults = spec.make_options({})  # the defaults pass the option's own checks
    for info in spec.option_infos():
        assert info.help and getattr(defaults, info.name) == info.default
    spec.make_options(spec.bench_options)
    roles = [statistic.role for statistic in spec.statistics]
    assert set(roles) <= {"positive", "negative", "other"} and roles.count("positive") == 1
    assert set(spec.recipe) <= {"margin", "margin_m", "scale"}


def test_an_option_two_methods_share_means_the_same_in_both():
    declared = {}
    for spec in all_methods():
        for info in spec.option_infos():
            declared.setdefault(info.name, []).append(info)
    shared = {name: infos for name, infos in declared.items() if len(infos) > 1}
    assert shared  # sub-center ArcFace takes Partial FC's center-store options
    for name, infos in shared.items():
        first = infos[0]
        meaning = (first.type, first.default, first.choices, first.allowed)
        assert all((i.type, i.default, i.choices, i.allowed) == meaning for i in infos), name
    by_flag = options_by_name()
    assert set(by_flag) == set(declared) and all(len(by_flag[name][1]) == len(declared[name]) for name in declared)


def test_a_registry_entry_must_name_a_spec_of_that_name(monkeypatch):
    monkeypatch.setitem(METHODS, "other", "partial_fc.spec")
    with pytest.raises(ConfigError, match="named 'pfc' but registered as 'other'"):
        get_method("other")
