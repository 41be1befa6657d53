from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaConsumer
from prometheus_client import CollectorRegistry

from gateway.feedback import FeedbackService
from gateway.feedback_client import read_feedback_csv
from gateway.http import create_app
from gateway.http.endpoints import LARGE_BODY_BYTES
from gateway.settings import load_settings
from monitors.broker import EmbeddedBroker
from monitors.feedback import (
    MAX_FUTURE_S,
    MAX_LABEL_MAGNITUDE,
    MAX_LABEL_ROWS,
    MAX_REQUEST_ID_CHARS,
    MAX_SOURCE_CHARS,
    FeedbackRecord,
    decode_feedback,
)
from tests._models import register_classes_version


@asynccontextmanager
async def gateway(registry: Path, tmp_path: Path, **kw: Any) -> AsyncIterator[httpx.AsyncClient]:
    if "routes" not in kw:
        kw["models"] = [{"name": "breast_cancer", "ref": "breast_cancer@champion"}]
    settings = load_settings(
        registry__root=registry,
        registry__poll_interval_s=60,
        feedback__spool_dir=str(tmp_path / "feedback-spool"),
        **kw,
    )
    app = create_app(settings, metrics_registry=CollectorRegistry())
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            yield client


async def read_feedback(bootstrap: str, expected: int) -> list[FeedbackRecord]:
    consumer = AIOKafkaConsumer(
        "model-feedback", bootstrap_servers=bootstrap, auto_offset_reset="earliest"
    )
    await consumer.start()
    records: list[FeedbackRecord] = []
    try:
        async with asyncio.timeout(60):
            while len(records) < expected:
                batches = await consumer.getmany(timeout_ms=200)
                for messages in batches.values():
                    for message in messages:
                        got, problems = decode_feedback(
                            message.value or b"", message.timestamp / 1000
                        )
                        assert problems == []
                        assert message.key == b"breast_cancer"
                        records.extend(got)
    finally:
        await consumer.stop()
    return records


async def test_feedback_is_checked_answered_202_and_logged_to_its_topic(
    demo_registry: Path, tmp_path: Path, broker: EmbeddedBroker
) -> None:
    options = {
        "feature_log__enabled": True,
        "feature_log__bootstrap_servers": broker.bootstrap_servers,
        "feature_log__spool_dir": str(tmp_path / "log-spool"),
        "feedback__enabled": True,
    }
    async with gateway(demo_registry, tmp_path, **options) as client:
        url = "/v2/models/breast_cancer/feedback"
        one = await client.post(url, json={"id": "r1", "label": "benign", "time": 5.0})
        assert one.status_code == 202
        assert one.json() == {"accepted": 1}
        bulk = await client.post(
            url,
            json={"items": [{"id": "r2", "row": 1, "label": 0},
                            {"id": "r3", "labels": {"label": 1}, "source": "crm"}]},
        )  # fmt: skip
        assert bulk.status_code == 202
        assert bulk.json() == {"accepted": 2}
        bad = {
            "not json": b"{",
            "a list": b"[1]",
            "no items": b'{"items": []}',
            "unknown class": b'{"id": "r", "label": "tumour"}',
            "class index out of range": b'{"id": "r", "label": 2}',
            "probabilities are not labels": b'{"id": "r", "labels": {"probabilities": 1}}',
            "unknown output": b'{"id": "r", "labels": {"score": 1}}',
            "both forms": b'{"id": "r", "label": 1, "labels": {"label": 1}}',
            "negative row": b'{"id": "r", "row": -1, "label": 1}',
            "no id": b'{"label": 1}',
            "unknown key": b'{"id": "r", "label": 1, "weight": 2}',
            "source not text": b'{"id": "r", "label": 1, "source": 5}',
            "an id no request has": b'{"id": "%s", "label": 1}' % (b"r" * 257),
            "a time a day ahead": b'{"id": "r", "label": 1, "time": %f}' % (time.time() + 86400),
            "a time at the end of time": b'{"id": "r", "label": 1, "time": 1e308}',
            # a row of 2**63 or more stopped the monitor's join for good (sqlite integers)
            "a row no integer column holds": b'{"id": "r", "row": 9223372036854775808, "label": 1}',
            "a row past any record": b'{"id": "r", "row": %d, "label": 1}' % MAX_LABEL_ROWS,
            # a record the broker refuses for its size: dead-lettered after the 202
            "a source that is a document": b'{"id": "r", "label": 1, "source": "%s"}'
            % (b"s" * 257),
            "a bulk body with what applies to no item": b'{"items": [{"id": "r", "label": 1}], '
            b'"source": "crm"}',
            # the monitor keeps the first label of a row: the second would vanish
            "a row labelled twice, differently": b'{"items": [{"id": "r", "label": "benign"}, '
            b'{"id": "r", "label": 0}]}',
        }
        for case, body in bad.items():
            response = await client.post(url, content=body)
            assert response.status_code == 400, case
            assert "error" in response.json(), case
        half = await client.post(url, content=b'{"id": "r", "label": 1.5}')
        assert half.json()["error"] == "item 0: class index 1.5 is not a whole number"
        ahead = await client.post(url, content=bad["a time a day ahead"])
        assert "s ahead of this clock" in ahead.json()["error"]
        twice = await client.post(url, content=bad["a row labelled twice, differently"])
        assert twice.json()["error"] == "item 1: row 0 of id 'r' has other labels in item 0"
        second_bad = await client.post(url, json={"items": [{"id": "ok", "label": 1}, {"id": 3}]})
        assert second_bad.status_code == 400
        assert second_bad.json()["error"].startswith("item 1:")
        unknown = await client.post("/v2/models/nope/feedback", json={"id": "r", "label": 1})
        assert unknown.status_code == 404
        metrics = (await client.get("/metrics")).text
        assert (
            'gateway_feedback_items_total{model="breast_cancer",outcome="accepted"} 3.0' in metrics
        )
    records = await read_feedback(broker.bootstrap_servers, 3)
    assert [(r["request_id"], r["row"], r["labels"]) for r in records] == [
        # a class index is logged as its name (the demo model's classes are malignant, benign):
        # an index means a class only in the order of one version's class labels
        ("r1", 0, {"label": "benign"}),
        ("r2", 1, {"label": "malignant"}),
        ("r3", 0, {"label": "benign"}),
    ]
    assert records[0]["time"] == 5.0
    assert records[2]["source"] == "crm"


async def test_feedback_takes_the_classes_and_outputs_of_every_routed_version(
    demo_registry: Path, tmp_path: Path, broker: EmbeddedBroker
) -> None:
    # A canary that gained a class: the endpoint checked labels against the primary's classes
    # alone and refused the new class's name, although that variant served the request; and
    # an output only the canary has was "not an output that takes labels".
    canary = register_classes_version(
        demo_registry, ["malignant", "benign", "borderline"], "canary", risk=True
    )
    shadow = register_classes_version(
        demo_registry, ["benign", "malignant", "borderline", "atypical"], "shadow"
    )
    route = {
        "endpoint": "breast_cancer",
        "variants": [{"name": "stable", "ref": "breast_cancer/1", "weight": 90},
                     {"name": "canary", "ref": f"breast_cancer/{canary}", "weight": 10}],
        "shadows": [{"name": "shadow", "ref": f"breast_cancer/{shadow}"}],
    }  # fmt: skip
    options = {
        "routes": [route],
        "feature_log__enabled": True,
        "feature_log__bootstrap_servers": broker.bootstrap_servers,
        "feature_log__spool_dir": str(tmp_path / "log-spool"),
        "feedback__enabled": True,
        "admin": {"tokens": {"ops": "token"}, "audit_log": str(tmp_path / "audit.jsonl")},
    }
    async with gateway(demo_registry, tmp_path, **options) as client:
        url = "/v2/models/breast_cancer/feedback"
        taken = [
            {"id": "canary-class", "label": "borderline"},
            {"id": "shadow-class", "label": "atypical"},
            {"id": "primary-class", "label": "benign"},
            # every version with a class at 2 has borderline there (stable has no class 2)
            {"id": "agreed-index", "label": 2},
            {"id": "canary-output", "labels": {"risk": 0.75}},
        ]
        accepted = await client.post(url, json={"items": taken})
        assert (accepted.status_code, accepted.json()) == (202, {"accepted": 5})
        refused = {
            "tumour": "item 0: unknown class 'tumour'; the classes are "
            "['malignant', 'benign', 'borderline', 'atypical']",
            # stable and canary read 0 as malignant, the shadow as benign: the primary's
            # reading would mislabel what the other served
            0: f"item 0: class index 0 means 'malignant' to 'stable' (version 1), 'malignant' "
            f"to 'canary' (version {canary}), 'benign' to 'shadow' (version {shadow}); give the "
            "class name",
            4: "item 0: class index 4 out of range 0..3",
        }
        for label, error in refused.items():
            response = await client.post(url, json={"id": "r", "label": label})
            assert (response.status_code, response.json()) == (400, {"error": error})
        unknown = await client.post(url, json={"id": "r", "labels": {"score": 1}})
        assert unknown.json() == {
            "error": "item 0: 'score' is not an output that takes labels (['label', 'risk'])"
        }
        # the canary and the shadow leave: their classes and outputs leave with them
        alone = {"variants": [{"name": "stable", "ref": "breast_cancer/1", "weight": 100}]}
        changed = await client.put(
            "/admin/routes/breast_cancer", json=alone, headers={"authorization": "Bearer token"}
        )
        assert changed.status_code == 200, changed.text
        after = await client.post(url, json={"id": "r", "label": "borderline"})
        assert after.json() == {
            "error": "item 0: unknown class 'borderline'; the classes are ['malignant', 'benign']"
        }
        gone = await client.post(url, json={"id": "r", "labels": {"risk": 0.5}})
        assert gone.status_code == 400
        now_agreed = await client.post(url, json={"id": "index-after", "label": 0})
        assert now_agreed.status_code == 202
    records = await read_feedback(broker.bootstrap_servers, 6)
    assert [(r["request_id"], r["labels"]) for r in records] == [
        ("canary-class", {"label": "borderline"}),
        ("shadow-class", {"label": "atypical"}),
        ("primary-class", {"label": "benign"}),
        ("agreed-index", {"label": "borderline"}),
        ("canary-output", {"risk": 0.75}),
        ("index-after", {"label": "malignant"}),
    ]


async def test_an_unknown_class_lists_a_few_of_thousands_of_classes(
    demo_registry: Path, tmp_path: Path
) -> None:
    # The error listed every class: for a model of 5,000 classes, an error body of 60 KiB.
    classes = [f"species-{i:04d}" for i in range(5000)]
    many = register_classes_version(demo_registry, classes, "many")
    options = {
        "routes": [{"endpoint": "breast_cancer",
                    "variants": [{"name": "many", "ref": f"breast_cancer/{many}",
                                  "weight": 100}]}],
        "feature_log__bootstrap_servers": "127.0.0.1:1",  # nobody: the records are spooled
        "feature_log__timeout_s": 0.5,
        "feedback__enabled": True,
    }  # fmt: skip
    async with gateway(demo_registry, tmp_path, **options) as client:
        url = "/v2/models/breast_cancer/feedback"
        response = await client.post(url, json={"id": "r", "label": "tumour"})
        taken = await client.post(url, json={"id": "r", "label": "species-4999"})
    first = ", ".join(repr(name) for name in classes[:20])
    assert (response.status_code, response.json()) == (
        400,
        {"error": f"item 0: unknown class 'tumour'; the classes are [{first}] and 4,980 more"},
    )
    assert taken.status_code == 202


async def test_a_large_feedback_body_is_checked_off_the_event_loop(
    demo_registry: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 10,000 items (a few MiB) took tens of milliseconds to parse and check, on the event loop:
    # every other connection of the gateway waited for them.
    checked_on: list[bool] = []
    check = FeedbackService.check

    def spy(self: FeedbackService, endpoint: str, body: bytes, now: float) -> Any:
        checked_on.append(threading.current_thread() is threading.main_thread())
        return check(self, endpoint, body, now)

    monkeypatch.setattr(FeedbackService, "check", spy)
    options = {
        "feature_log__bootstrap_servers": "127.0.0.1:1",  # nobody: the records are spooled
        "feature_log__timeout_s": 0.5,
        "feedback__enabled": True,
    }
    items = [{"id": f"r{i}", "label": i % 2, "source": "crm"} for i in range(10_000)]
    large = orjson.dumps({"items": items})
    assert len(large) > LARGE_BODY_BYTES
    async with gateway(demo_registry, tmp_path, **options) as client:
        url = "/v2/models/breast_cancer/feedback"
        small = await client.post(url, json={"id": "r", "label": 1})
        assert small.json() == {"accepted": 1}
        answer = await client.post(url, content=large)
        assert answer.json() == {"accepted": 10_000}
        refused = await client.post(url, content=large.replace(b'"r9999"', b"9999"))
        assert refused.json()["error"].startswith("item 9999: id must be")
    assert checked_on == [True, False, False]


async def test_feedback_endpoint_is_404_when_off(demo_registry: Path, tmp_path: Path) -> None:
    async with gateway(demo_registry, tmp_path) as client:
        response = await client.post("/v2/models/breast_cancer/feedback", json={"id": "r"})
        assert response.status_code == 404
        assert "feedback.enabled" in response.json()["error"]


def test_csv_rows_become_items(tmp_path: Path) -> None:
    path = tmp_path / "outcomes.csv"
    path.write_text("id,row,label\na,0,benign\nb,2,1\nc,0,\n")
    assert list(read_feedback_csv(path)) == [
        {"id": "a", "row": 0, "label": "benign"},
        {"id": "b", "row": 2, "label": 1},
    ]
    named = tmp_path / "named.csv"
    named.write_text("id,time,label:label\na,12.5,0\n")
    assert list(read_feedback_csv(named)) == [{"id": "a", "time": 12.5, "labels": {"label": 0}}]
    broken = tmp_path / "broken.csv"
    broken.write_text("request,label\na,1\n")
    with pytest.raises(ValueError, match="no 'id' column"):
        list(read_feedback_csv(broken))


def test_the_monitor_skips_records_that_would_poison_its_clocks() -> None:
    """Feedback written to the topic by another producer gets the same bounds as the
    gateway's endpoint: a time over an hour ahead of the reader's clock (it would move the
    label clock into the future for good), given or taken from a message stamped ahead, and
    an id no request can have."""
    now = time.time()
    lines = [
        {"schema": "feedback/1", "model": "m", "request_id": "a", "labels": {"y": 1},
         "time": now + 3000},
        {"schema": "feedback/1", "model": "m", "request_id": "b", "labels": {"y": 1},
         "time": now + 7200},
        {"schema": "feedback/1", "model": "m", "request_id": "c" * 257, "labels": {"y": 1}},
    ]  # fmt: skip
    value = b"\n".join(orjson.dumps(line) for line in lines)
    records, problems = decode_feedback(value, now)
    assert [r["request_id"] for r in records] == ["a"]
    assert "line 1: time is 72" in problems[0]
    assert "s ahead of this clock" in problems[0]
    assert "line 2: request_id is over 256 characters" in problems[1]
    # a message stamped a day ahead: its record without a time of its own takes the stamp,
    # and one with an hour's skew from the stamp is still a day ahead of the clock
    stamped = b"\n".join(orjson.dumps(line) for line in [
        {"schema": "feedback/1", "model": "m", "request_id": "d", "labels": {"y": 1}},
        {"schema": "feedback/1", "model": "m", "request_id": "e", "labels": {"y": 1},
         "time": now + 86400 + 3000},
    ])  # fmt: skip
    records, problems = decode_feedback(stamped, now + 86400)
    assert records == []
    assert len(problems) == 2
    # a producer that sends no timestamp (-1) loses nothing
    records, problems = decode_feedback(orjson.dumps(lines[0]), -0.001)
    assert [r["request_id"] for r in records] == ["a"]


def test_the_monitor_skips_a_label_whose_error_would_square_to_infinity() -> None:
    # one label of 1e200 made the join's running sum of squared errors infinite, for good
    now = time.time()
    lines = [
        {"schema": "feedback/1", "model": "m", "request_id": str(i), "labels": {"y": y}}
        for i, y in enumerate([1e200, -1e120, MAX_LABEL_MAGNITUDE, 3.5])
    ]
    records, problems = decode_feedback(b"\n".join(orjson.dumps(line) for line in lines), now)
    assert [r["request_id"] for r in records] == ["2", "3"]
    assert problems == [
        "line 0: label of 'y' is over 1e+100 in magnitude",
        "line 1: label of 'y' is over 1e+100 in magnitude",
    ]


def _reason(error: str, where: str) -> str:
    """An error without its place (``item 0: ``, ``line 0: ``) and without the seconds a time is
    ahead (the two sides read their clocks a moment apart); the record's request_id is the
    item's id."""
    reason = error.removeprefix(f"{where}: ").replace("request_id", "id")
    return re.sub(r"\d+ s ahead", "N s ahead", reason)


def _as_record(item: dict[str, Any]) -> dict[str, Any]:
    """The feedback record another producer would write for a gateway item."""
    record = {"schema": "feedback/1", "model": "breast_cancer", "labels": {"label": item["label"]}}
    names = {"id": "request_id", "row": "row", "time": "time", "source": "source"}
    record |= {names[key]: value for key, value in item.items() if key != "label"}
    return record


async def test_the_gateway_and_the_monitor_check_feedback_by_the_same_rules(
    demo_registry: Path, tmp_path: Path
) -> None:
    """Whatever the endpoint refuses, the monitor's reader refuses for the same reason (a record
    on the topic from another producer), and what one takes at a bound the other takes: a rule
    changed on one side alone fails here."""
    now = time.time()
    refused: dict[str, dict[str, Any]] = {
        "an empty id": {"id": "", "label": 1},
        "an id that is not text": {"id": 3, "label": 1},
        "an id with a control character": {"id": "r\n1", "label": 1},
        "an id over the bound": {"id": "r" * (MAX_REQUEST_ID_CHARS + 1), "label": 1},
        "a negative row": {"id": "r", "row": -1, "label": 1},
        "a row at the bound": {"id": "r", "row": MAX_LABEL_ROWS, "label": 1},
        "a row that is not an integer": {"id": "r", "row": 1.0, "label": 1},
        "a label that is a boolean": {"id": "r", "label": True},
        "a label that is a list": {"id": "r", "label": [1]},
        "a label over the magnitude": {"id": "r", "label": MAX_LABEL_MAGNITUDE * 10},
        "a time that is not a number": {"id": "r", "label": 1, "time": "noon"},
        "a time two bounds ahead": {"id": "r", "label": 1, "time": now + 2 * MAX_FUTURE_S},
    }
    taken_at_bounds: dict[str, Any] = {
        "id": "r" * MAX_REQUEST_ID_CHARS,
        "row": MAX_LABEL_ROWS - 1,
        "label": 1,
        "time": now + MAX_FUTURE_S - 600,
        "source": "s" * MAX_SOURCE_CHARS,
    }
    options = {
        "feature_log__bootstrap_servers": "127.0.0.1:1",  # nobody: the records are spooled
        "feature_log__timeout_s": 0.5,
        "feedback__enabled": True,
    }
    async with gateway(demo_registry, tmp_path, **options) as client:
        url = "/v2/models/breast_cancer/feedback"
        for case, item in refused.items():
            response = await client.post(url, json=item)
            assert response.status_code == 400, case
            records, problems = decode_feedback(orjson.dumps(_as_record(item)), now)
            assert records == [], case
            by_gateway = _reason(response.json()["error"], "item 0")
            assert by_gateway == _reason(problems[0], "line 0"), case
        taken = await client.post(url, json=taken_at_bounds)
        assert taken.json() == {"accepted": 1}
        records, problems = decode_feedback(orjson.dumps(_as_record(taken_at_bounds)), now)
        assert (problems, records[0]["source"]) == ([], taken_at_bounds["source"])
        # a source over the bound: the endpoint refuses the item; the monitor, which reads no
        # source, keeps the label and leaves the source out
        for source in ("s" * (MAX_SOURCE_CHARS + 1), 5):
            item = {"id": "r", "label": 1, "source": source}
            response = await client.post(url, json=item)
            assert response.status_code == 400
            records, problems = decode_feedback(orjson.dumps(_as_record(item)), now)
            assert problems == []
            assert "source" not in records[0]
