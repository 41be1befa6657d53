"""bench_admission's own logic: its variants' syntax and its table (the runs need a server)."""

from __future__ import annotations

import argparse

import pytest

from loadtests.bench_admission import _variant, markdown


def test_a_variant_is_a_name_and_a_json_object() -> None:
    assert _variant('start32={"limits": {"initial_in_flight": 32}}') == (
        "start32",
        {"limits": {"initial_in_flight": 32}},
    )
    for bad in ("start32", "=1", "x={", "x=[1]"):
        with pytest.raises(argparse.ArgumentTypeError):
            _variant(bad)


def test_the_table_gives_each_try_of_each_rate() -> None:
    def step(rate: float, refused: int, p99: float) -> dict[str, object]:
        return {"offered_rate": rate, "statuses": {"200": 10, "503": refused}, "p99_ms": p99}

    runs = [
        {
            "variant": "default",
            "repeat": 0,
            "steps": [step(3000, 0, 5.04), step(3000, 2, 6.0), step(4000, 40, 8.8)],
            "after": {"limit": 49.0},
        }
    ]
    table = markdown(runs, [3000, 4000])
    assert "| default, 1 | 0 (5.0), 2 (6.0) | 40 (8.8) | 49 |" in table
