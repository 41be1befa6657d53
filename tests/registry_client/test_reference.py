"""References as MLflow users write them."""

from __future__ import annotations

import pytest

from registry_client import InvalidReferenceError, ModelRef


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("models:/fraud@champion", ModelRef("fraud", alias="champion")),
        ("models:/fraud/3", ModelRef("fraud", version="3")),
        ("models:/fraud/latest", ModelRef("fraud", alias="latest")),
        ("models:/fraud", ModelRef("fraud", alias="latest")),
        ("models:/Wine classifier@champion", ModelRef("Wine classifier", alias="champion")),
        ("models:/Wine%20classifier/2", ModelRef("Wine classifier", version="2")),
        ("models:/100%25 sure@a", ModelRef("100% sure", alias="a")),
        ("Wine classifier (v2)@champion", ModelRef("Wine classifier (v2)", alias="champion")),
        ("team@wine@champion", ModelRef("team@wine", alias="champion")),
        ("team@wine/4", ModelRef("team@wine", version="4")),
        ("O'Brien's model", ModelRef("O'Brien's model", alias="latest")),
    ],
)
def test_mlflow_forms_parse(text: str, expected: ModelRef) -> None:
    assert ModelRef.parse(text) == expected
    # the bare form of a parsed reference parses back to it
    assert ModelRef.parse(str(expected)) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("models:/fraud/Production", "stages are not supported"),
        ("models:/m-0123abcd", "logged model id"),
        ("models:/a:b@c", "cannot hold '/' or ':'"),
        ("models:/..@c", "reads as another path"),
        ("models:/fraud@", "not a valid alias"),
        ("models:/fraud@bad alias", "not a valid alias"),
        ("a\tb", "not printable"),
        ("m" * 129 + "@champion", "at most 128 characters"),
        ("\u00e9" * 128 + "@champion", "255 bytes"),
        ("models:/m/" + "9" * 200, "at most 128 characters"),
    ],
)
def test_bad_references_say_why(text: str, message: str) -> None:
    with pytest.raises(InvalidReferenceError, match=message):
        ModelRef.parse(text)
