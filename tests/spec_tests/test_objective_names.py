"""An objective by its key (`latency_ms@local`) or, where one objective measures the metric, by
its plain name (`latency_ms`), as a user writes it: what ask/tell reports and tells go through."""

from __future__ import annotations

import re

import pytest

from edgetune.errors import InvalidSpecError
from edgetune.spec import JobSpec

ONE_LATENCY = JobSpec(name="x", objectives=[{"name": "accuracy"}, {"name": "latency_ms"}])
TWO_LATENCIES = JobSpec(name="x", objectives=[
    {"name": "accuracy"}, {"name": "latency_ms"}, {"name": "latency_ms", "device": "pi"},
])


def test_a_plain_name_stands_for_the_one_objective_that_measures_it() -> None:
    assert ONE_LATENCY.objective_key("latency_ms") == "latency_ms@local"
    assert ONE_LATENCY.objective_key("latency_ms@local") == "latency_ms@local"
    assert ONE_LATENCY.objective_key("accuracy") == "accuracy"
    assert TWO_LATENCIES.objective_key("latency_ms@pi") == "latency_ms@pi"


def test_values_by_either_name_come_back_by_key_in_the_objectives_order() -> None:
    # The README's ask/tell example tells {"accuracy": ..., "latency_ms": ...}.
    assert ONE_LATENCY.objective_values({"latency_ms": 3.5, "accuracy": 0.9}) == {
        "accuracy": 0.9, "latency_ms@local": 3.5,
    }
    assert list(ONE_LATENCY.objective_values({"latency_ms@local": 3.5, "accuracy": 0.9})) == [
        "accuracy", "latency_ms@local",
    ]
    assert TWO_LATENCIES.objective_values(
        {"latency_ms@pi": 9.0, "accuracy": 0.9, "latency_ms@local": 3.5}
    ) == {"accuracy": 0.9, "latency_ms@local": 3.5, "latency_ms@pi": 9.0}
    # A pruned or failed trial need not give every objective.
    assert ONE_LATENCY.objective_values({"latency_ms": 3.5}, every=False) == {
        "latency_ms@local": 3.5
    }
    assert ONE_LATENCY.objective_values({}, every=False) == {}


def test_a_name_several_objectives_share_is_refused_naming_them() -> None:
    rule = ("'latency_ms' is ambiguous: 2 objectives measure it; name one of "
            "latency_ms@local, latency_ms@pi")
    with pytest.raises(InvalidSpecError, match=re.escape(rule)) as info:
        TWO_LATENCIES.objective_key("latency_ms")
    assert info.value.field == "values"
    with pytest.raises(InvalidSpecError, match=re.escape(rule)) as info:
        TWO_LATENCIES.objective_values({"accuracy": 0.9, "latency_ms": 3.5}, every=False)


@pytest.mark.parametrize(
    ("values", "rule"),
    [
        ({"accuracy": 0.9}, "; missing: latency_ms@local"),
        ({"accuracy": 0.9, "latency_ms": 1.0, "f1": 2.0}, "; not an objective: f1"),
        ({"accuracy": 0.9, "latency_ms": 1.0, "latency_ms@local": 2.0},
         "; given twice: latency_ms and latency_ms@local"),
        ({"latency_ms@pi": 1.0}, "; missing: accuracy, latency_ms@local; not an objective: "
                                 "latency_ms@pi"),
    ],
)
def test_missing_unknown_and_repeated_objectives_are_named(
    values: dict[str, float], rule: str
) -> None:
    with pytest.raises(InvalidSpecError) as info:
        ONE_LATENCY.objective_values(values)
    assert info.value.field == "values"
    assert info.value.message == (
        "give one value per objective (accuracy, latency_ms@local; a metric's plain name "
        "will do where one objective measures it)" + rule
    )


def test_an_unknown_name_is_refused_naming_the_objectives() -> None:
    with pytest.raises(InvalidSpecError, match=re.escape(
        "'size_bytes' is not an objective of the job; its objectives: accuracy, "
        "latency_ms@local"
    )):
        ONE_LATENCY.objective_key("size_bytes", field="objectives")
