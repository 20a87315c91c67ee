"""The typed-configuration checker: every kind of bad value is one UsageError line naming the key."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from harness.errors import UsageError
from harness.engine.schema import check, option


@dataclass(frozen=True)
class Inner:
    rate: float = option(0.5, min=0.0, max=1.0)


@dataclass(frozen=True)
class Example:
    steps: int = option(4, min=1)
    name: str = "x"
    flag: bool = False
    kind: Literal["a", "b"] = "a"
    maybe: int | None = None
    prompts: list[str] = field(default_factory=list)
    times: tuple[int, ...] | None = None
    weights: dict[str, float] = field(default_factory=dict)
    inner: Inner = field(default_factory=Inner)
    mode: str = option("fast", choices=("fast", "slow"))


def test_good_values_build_the_dataclass_with_their_types():
    built = check(Example, {"steps": 8, "flag": True, "maybe": None, "prompts": ["a red circle"],
                            "times": [750, 500], "weights": {"w": 1}, "inner": {"rate": 1}, "kind": "b"}, "x")
    assert built.steps == 8 and built.times == (750, 500) and built.weights == {"w": 1.0}
    assert built.inner.rate == 1.0 and isinstance(built.inner.rate, float)
    assert check(Example, None, "x") == Example()


@pytest.mark.parametrize("values,message", [
    ({"stepz": 3}, "x.stepz is not an option: did you mean 'steps'"),
    ({"steps": True}, "x.steps=True is not an integer"),
    ({"steps": 2.5}, "x.steps=2.5 is not an integer"),
    ({"steps": "abc"}, "x.steps='abc' is not an integer"),
    ({"steps": 0}, "x.steps=0 is out of range; use a value >= 1"),
    ({"flag": 1}, "x.flag=1 is not a switch"),
    ({"kind": "c"}, "x.kind='c' is not one of 'a', 'b'"),
    ({"prompts": "a red circle bouncing"}, "was given the string 'a red circle bouncing'"),
    ({"prompts": [1]}, "x.prompts[0]=1 is not text"),
    ({"times": [750.5]}, "x.times[0]=750.5 is not an integer"),
    ({"weights": {"w": float("nan")}}, "x.weights.w=nan is not a finite number"),
    ({"inner": {"rate": 2}}, "x.inner.rate=2.0 is out of range; use a value in [0.0, 1.0]"),
    ({"inner": {"rat": 2}}, "x.inner.rat is not an option"),
    ({"mode": "medium"}, "x.mode='medium' is not one of 'fast', 'slow'"),
    ({"maybe": "3"}, "x.maybe='3' is not an integer"),
])
def test_bad_values_are_one_line_naming_the_key(values, message):
    with pytest.raises(UsageError) as info:
        check(Example, values, "x")
    assert message in str(info.value) and "\n" not in str(info.value)


def test_a_missing_required_key_and_a_non_mapping_are_named():
    @dataclass
    class Required:
        path: str

    with pytest.raises(UsageError, match="x.path is missing"):
        check(Required, {}, "x")
    with pytest.raises(UsageError, match="not a mapping"):
        check(Required, [1, 2], "x")
