"""Method options checked from their declaration: types, choices and ranges, with messages naming the flag."""

import math
from dataclasses import dataclass

import pytest

from core.errors import ConfigError
from core.method_spec import MethodSpec, Range, option


@dataclass
class _Options:
    rate: float = option(0.5, "A rate.", allowed=Range(0.0, 1.0, low_inclusive=False))
    count: int = option(3, "A count.", allowed=Range(1), fixed_on_resume=True)
    mode: str = option("a", "A mode.", choices=("a", "b"))
    strict: bool = option(False, "A switch.")


SPEC = MethodSpec(name="example", title="Example", summary="x.", options=_Options, sampler="x:y")


@pytest.mark.parametrize("value, inside", [(0.0, False), (1e-9, True), (1.0, True), (1.5, False),
                                           (math.nan, False), (-math.inf, False)])
def test_range_bounds(value, inside):
    assert Range(0.0, 1.0, low_inclusive=False).contains(value) is inside


def test_range_describes_itself():
    assert Range(0.0, 1.0, low_inclusive=False).describe() == "in (0, 1]"
    assert Range(1).describe() == ">= 1"
    assert Range(0.0, None, low_inclusive=False).describe() == "> 0"
    assert Range(None, 1.0, high_inclusive=False).describe() == "< 1"


@pytest.mark.parametrize("values, message", [
    ({"rate": "0.1"}, "rate (--rate): expected a number, got '0.1'"),
    ({"rate": 0.0}, "rate (--rate) must be in (0, 1], got 0.0"),
    ({"count": 2.5}, "count (--count): expected int, got 2.5"),
    ({"count": True}, "count (--count): expected int, got True"),
    ({"count": 0}, "count (--count) must be >= 1, got 0"),
    ({"mode": "c"}, "mode (--mode) must be one of a, b; got 'c'"),
    ({"strict": 1}, "strict (--strict): expected bool, got 1"),
    ({"queue_size": 4}, "--queue-size: not an option of --method example (Example); its options are --rate, "
                        "--count, --mode, --strict"),
])
def test_bad_values_name_the_option(values, message):
    with pytest.raises(ConfigError) as error:
        SPEC.make_options(values)
    assert message in str(error.value)


def test_values_and_defaults_make_the_options():
    options = SPEC.make_options({"rate": 1, "mode": "b"})
    assert (options.rate, options.count, options.mode, options.strict) == (1, 3, "b", False)
    assert SPEC.fixed_on_resume() == ("count",)
    assert [info.flag for info in SPEC.option_infos()] == ["--rate", "--count", "--mode", "--strict"]
