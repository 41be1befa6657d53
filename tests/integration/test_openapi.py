"""End-to-end: schemathesis against the live gateway with its OpenAPI document (docs/openapi.yaml).

The Open Inference Protocol's paths and the gateway's own (predict, metrics, the operator API),
with requests built from the document and beyond it: no answer is 5xx (the served model never
fails here), every error is ``{"error": "..."}``, and successful answers match the document.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error, response_schema_conformance

from tests._support import GatewayProcess, demo_gateway

pytestmark = pytest.mark.e2e

DOCUMENT = Path(__file__).parents[2] / "docs" / "openapi.yaml"
TOKEN = "schemathesis-token"
schema = schemathesis.openapi.from_path(DOCUMENT)


@pytest.fixture(scope="module")
def gateway(
    demo_registry_template: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    with demo_gateway(tmp_path_factory.mktemp("openapi"), demo_registry_template, TOKEN) as gw:
        yield gw


@schemathesis.check
def errors_are_json_objects(
    ctx: schemathesis.CheckContext, response: schemathesis.Response, case: schemathesis.Case[Any]
) -> bool | None:
    """Every 4xx/5xx answer is ``{"error": "<text>"}`` (HEAD answers have no body)."""
    if response.status_code < 400 or case.method.upper() == "HEAD":
        return None
    doc = orjson.loads(response.content)
    if not isinstance(doc, dict) or not isinstance(doc.get("error"), str):
        raise AssertionError(f"{response.status_code} answer is not {{'error': ...}}: {doc!r}")
    return True


@schema.parametrize()
@settings(
    max_examples=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_api_conforms(case: schemathesis.Case[Any], gateway: GatewayProcess) -> None:
    response = case.call(
        base_url=gateway.url, headers={"authorization": f"Bearer {TOKEN}"}, timeout=30
    )
    case.validate_response(
        response,
        checks=[not_a_server_error, errors_are_json_objects, response_schema_conformance],
    )
