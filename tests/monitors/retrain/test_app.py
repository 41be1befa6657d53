"""The worker's HTTP API: signed events only, repeats dropped, clear errors, jobs and metrics."""

from __future__ import annotations

import gzip
from pathlib import Path

import httpx
import orjson

from monitors.retrain.app import create_app
from monitors.retrain.jobs import JobStore
from monitors.retrain.metrics import RetrainMetrics
from monitors.webhooks import DEGRADED_EVENT_TYPE, drift_event, signature
from registry_client import ModelNotFoundError, RegistryUnavailableError

SECRET = "shared-secret"
DRIFT = "io.model-gateway.drift.detected"


def event(window: str, model: str = "m", event_type: str = DRIFT) -> tuple[str, bytes]:
    data = {
        "model": model,
        "version": "1",
        "window": {"id": window, "start_time": 1000.0, "end_time": 1100.0, "rows": 500},
        "episode": {"windows": [{"id": "w0", "start_time": 900.0, "end_time": 1000.0}]},
        "drifted_features": ["a"],
    }
    return drift_event("test", model, "1", window, data, event_type=event_type)


async def champion(model: str) -> str:
    """The registry of these tests: model "m", whose champion is version 1; "down" stands for
    a registry that cannot be reached."""
    if model == "down":
        raise RegistryUnavailableError("the registry did not answer")
    if model != "m":
        raise ModelNotFoundError(f"model {model!r} is not in the registry")
    return "1"


def client(store: JobStore, woken: list[int], metrics: RetrainMetrics) -> httpx.AsyncClient:
    app = create_app(store, metrics, SECRET, [DRIFT], 4096, lambda: woken.append(1), champion)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://w")


def headers(event_id: str, body: bytes, secret: str = SECRET) -> dict[str, str]:
    return {"x-signature-256": signature(secret, body), "idempotency-key": event_id}


async def test_a_signed_event_makes_one_job_and_its_repeat_nothing(tmp_path: Path) -> None:
    store, metrics = JobStore(tmp_path / "j.sqlite"), RetrainMetrics()
    woken: list[int] = []
    event_id, body = event("w1")
    async with client(store, woken, metrics) as http:
        first = await http.post("/events", content=body, headers=headers(event_id, body))
        again = await http.post("/events", content=body, headers=headers(event_id, body))
        listed = (await http.get("/jobs")).json()["jobs"]
        one = await http.get(f"/jobs/{first.json()['job']}")
        text = (await http.get("/metrics")).text
    assert first.status_code == 202
    assert first.json()["outcome"] == "queued"
    assert again.status_code == 202
    assert again.json() == {"outcome": "duplicate", "job": None}
    assert woken == [1]
    assert len(listed) == 1
    job = one.json()
    assert job["state"] == "queued"
    assert job["model"] == "m"
    trigger = job["triggers"][0]
    assert trigger["event_id"] == event_id
    assert trigger["window_start"] == 900.0, "the episode's first window"
    assert trigger["window_end"] == 1100.0
    assert trigger["drifted_features"] == ["a"]
    assert 'retrain_events_total{outcome="queued"} 1.0' in text
    assert 'retrain_events_total{outcome="duplicate"} 1.0' in text


async def test_unsigned_wrongly_signed_and_malformed_events_are_refused(tmp_path: Path) -> None:
    store, metrics = JobStore(tmp_path / "j.sqlite"), RetrainMetrics()
    woken: list[int] = []
    event_id, body = event("w1")
    async with client(store, woken, metrics) as http:
        unsigned = await http.post("/events", content=body)
        wrong = await http.post("/events", content=body, headers=headers(event_id, body, "x"))
        tampered = body.replace(b'"m"', b'"n"')
        changed = await http.post("/events", content=tampered, headers=headers(event_id, body))
        junk = b"not json"
        malformed = await http.post("/events", content=junk, headers=headers("k", junk))
        no_model = orjson.dumps({"specversion": "1.0", "id": "x", "type": DRIFT, "source": "s",
                                 "data": {}})  # fmt: skip
        missing = await http.post("/events", content=no_model, headers=headers("k2", no_model))
        big = b"{" + b" " * 5000 + b"}"
        too_big = await http.post("/events", content=big, headers=headers("k3", big))
        bad_limit = await http.get("/jobs", params={"limit": "lots"})
        huge_limit = await http.get("/jobs", params={"limit": "9" * 5000})  # past int()'s 4,300
        unknown = await http.get("/jobs/nope")
    assert unsigned.status_code == 401
    assert "x-signature-256" in unsigned.json()["error"]
    assert wrong.status_code == 401
    assert changed.status_code == 401
    assert malformed.status_code == 400
    assert "invalid event" in malformed.json()["error"]
    assert missing.status_code == 400
    assert "data.model" in missing.json()["error"]
    assert too_big.status_code == 413
    assert bad_limit.status_code == 400
    assert huge_limit.status_code == 400
    assert "'limit' must be" in huge_limit.json()["error"]
    assert unknown.status_code == 404
    assert store.jobs() == []
    assert woken == []


async def test_an_event_type_not_configured_starts_nothing(tmp_path: Path) -> None:
    store, metrics = JobStore(tmp_path / "j.sqlite"), RetrainMetrics()
    woken: list[int] = []
    event_id, body = event("w1", event_type=DEGRADED_EVENT_TYPE)
    async with client(store, woken, metrics) as http:
        answer = await http.post("/events", content=body, headers=headers(event_id, body))
    assert answer.status_code == 202
    assert answer.json()["outcome"] == "ignored"
    assert store.jobs() == []


async def test_a_window_time_that_is_not_a_time_is_refused(tmp_path: Path) -> None:
    # 1e308 was queued, and its job failed reading the topics (OverflowError: cannot convert
    # float infinity to integer); a negative one there with aiokafka's ValueError
    store, metrics = JobStore(tmp_path / "j.sqlite"), RetrainMetrics()
    woken: list[int] = []
    answers = []
    async with client(store, woken, metrics) as http:
        for i, (key, value) in enumerate(
            [
                ("window", {"start_time": 1e308}),
                ("window", {"start_time": -5.0}),
                ("window", {"end_time": "NaN"}),
                ("window", {"start_time": True}),
                ("episode", {"windows": [{"start_time": 1e20}]}),
            ]
        ):
            body = orjson.dumps({"specversion": "1.0", "id": f"e{i}", "type": DRIFT,
                                 "source": "s", "data": {"model": "m", key: value}})  # fmt: skip
            answers.append(await http.post("/events", content=body, headers=headers(f"e{i}", body)))
        unset = orjson.dumps({"specversion": "1.0", "id": "ok", "type": DRIFT, "source": "s",
                              "data": {"model": "m", "window": {"start_time": None}}})  # fmt: skip
        fine = await http.post("/events", content=unset, headers=headers("ok", unset))
    assert [a.status_code for a in answers] == [400] * 5
    assert "data.window.start_time must be a time in seconds" in answers[0].json()["error"]
    assert "data.window.end_time" in answers[2].json()["error"]
    assert "data.episode.windows[].start_time" in answers[4].json()["error"]
    assert fine.status_code == 202
    assert [j.triggers[0]["window_start"] for j in store.jobs()] == [None]


async def test_data_nested_too_deep_is_refused_not_kept(tmp_path: Path) -> None:
    # drifted_features 300 lists deep was queued, then every GET /jobs answered 500 (orjson:
    # Recursion limit reached) for good; 1,000 deep was a 500 at once (json.dumps)
    store, metrics = JobStore(tmp_path / "j.sqlite"), RetrainMetrics()
    woken: list[int] = []
    answers = []
    async with client(store, woken, metrics) as http:
        for depth in (300, 1000):
            nested = b"[" * depth + b'"a"' + b"]" * depth
            body = (b'{"specversion": "1.0", "id": "e", "type": "%s", "source": "s", '
                    b'"data": {"model": "m", "drifted_features": %s}}') % (DRIFT.encode(), nested)  # fmt: skip
            answers.append(await http.post("/events", content=body, headers=headers("e", body)))
        fine_id, fine = event("w1")
        accepted = await http.post("/events", content=fine, headers=headers(fine_id, fine))
        listed = await http.get("/jobs")
    assert [a.status_code for a in answers] == [400, 400]
    assert "data nests deeper than 32 levels" in answers[0].json()["error"]
    assert accepted.status_code == 202
    assert listed.status_code == 200
    assert len(listed.json()["jobs"]) == 1


async def test_a_version_given_as_a_number_is_its_text_and_other_types_are_refused(
    tmp_path: Path,
) -> None:
    # 1 never matched the champion's "1": such an event started a second job for that version
    store, metrics = JobStore(tmp_path / "j.sqlite"), RetrainMetrics()
    woken: list[int] = []
    answers = []
    async with client(store, woken, metrics) as http:
        for i, version in enumerate([1, 1.5, ["1"], "", True]):
            body = orjson.dumps({"specversion": "1.0", "id": f"e{i}", "type": DRIFT,
                                 "source": "s", "data": {"model": "m", "version": version}})  # fmt: skip
            answers.append(await http.post("/events", content=body, headers=headers(f"e{i}", body)))
    assert [a.status_code for a in answers] == [202, 400, 400, 400, 400]
    assert "data.version must be the model version" in answers[1].json()["error"]
    assert [j.triggers[0]["version"] for j in store.jobs()] == ["1"]


async def test_an_event_for_a_model_not_in_the_registry_is_refused_and_makes_no_job(
    tmp_path: Path,
) -> None:
    # each name was queued as a job of its own (which then failed fetching the champion), and
    # each job's transitions a series of retrain_job_transitions_total{model=...}, for good
    store, metrics = JobStore(tmp_path / "j.sqlite"), RetrainMetrics()
    woken: list[int] = []
    answers = []
    async with client(store, woken, metrics) as http:
        for i in range(100):
            event_id, body = event(f"w{i}", model=f"unknown-{i}")
            answers.append(
                await http.post("/events", content=body, headers=headers(event_id, body))
            )
        event_id, long = event("w-long", model="x" * 300)
        too_long = await http.post("/events", content=long, headers=headers(event_id, long))
        event_id, body = event("w-down", model="down")
        down = await http.post("/events", content=body, headers=headers(event_id, body))
        event_id, body = event("w-known")
        known = await http.post("/events", content=body, headers=headers(event_id, body))
        text = (await http.get("/metrics")).text
    assert {a.status_code for a in answers} == {422}
    assert (
        "data.model 'unknown-7' is not a model this worker retrains" in answers[7].json()["error"]
    )
    assert too_long.status_code == 400
    assert "data.model must be a registered model's name" in too_long.json()["error"]
    assert len(too_long.json()["error"]) < 1000
    assert down.status_code == 503, "the monitor delivers it again later"
    assert known.status_code == 202
    assert [j.model for j in store.jobs()] == ["m"]
    assert woken == [1]
    assert 'retrain_events_total{outcome="unknown_model"} 100.0' in text
    assert 'retrain_events_total{outcome="registry_unavailable"} 1.0' in text
    assert "unknown-" not in text


async def test_a_replay_under_another_idempotency_key_joins_no_job(tmp_path: Path) -> None:
    # the key was taken from the unsigned header: a captured event sent again under a fresh key
    # was a new event, each copy one more trigger on the model's job
    store, metrics = JobStore(tmp_path / "j.sqlite"), RetrainMetrics()
    woken: list[int] = []
    event_id, body = event("w1")
    signed = headers(event_id, body)["x-signature-256"]
    async with client(store, woken, metrics) as http:
        first = await http.post("/events", content=body, headers=headers(event_id, body))
        replays = [
            await http.post(
                "/events", content=body, headers={**headers(event_id, body), "idempotency-key": k}
            )
            for k in ("fresh-1", "fresh-2", "")
        ]
        unkeyed = await http.post("/events", content=body, headers={"x-signature-256": signed})
        text = (await http.get("/metrics")).text
    assert first.json()["outcome"] == "queued"
    assert [r.status_code for r in replays] == [400, 400, 400]
    assert "idempotency-key 'fresh-1' is not the event's id" in replays[0].json()["error"]
    assert unkeyed.status_code == 202
    assert unkeyed.json() == {"outcome": "duplicate", "job": None}, "keyed by the signed id"
    (job,) = store.jobs()
    assert len(job.triggers) == 1
    assert 'retrain_events_total{outcome="invalid"} 3.0' in text


async def test_a_compressed_body_is_refused_naming_its_encoding(tmp_path: Path) -> None:
    # a gzip body, signed as sent, was read as JSON: 400 'str is not valid UTF-8'
    store, metrics = JobStore(tmp_path / "j.sqlite"), RetrainMetrics()
    woken: list[int] = []
    event_id, body = event("w1")
    packed = gzip.compress(body)
    async with client(store, woken, metrics) as http:
        zipped = await http.post(
            "/events",
            content=packed,
            headers={**headers(event_id, packed), "content-encoding": "gzip"},
        )
        plain = await http.post(
            "/events",
            content=body,
            headers={**headers(event_id, body), "content-encoding": "identity"},
        )
    assert zipped.status_code == 415
    assert "content-encoding 'gzip' is not accepted" in zipped.json()["error"]
    assert plain.status_code == 202


async def test_what_the_router_refuses_is_a_json_error(tmp_path: Path) -> None:
    # Starlette's own plain-text 'Not Found' and 'Method Not Allowed', and a 307 to /jobs built
    # from the Host header for /jobs/
    store, metrics = JobStore(tmp_path / "j.sqlite"), RetrainMetrics()
    async with client(store, [], metrics) as http:
        unknown = await http.get("/nope")
        slash = await http.get("/jobs/")
        method = await http.get("/events")
        put = await http.put("/jobs")
    assert unknown.status_code == 404
    assert unknown.json() == {"error": "no route GET /nope"}
    assert slash.status_code == 404
    assert slash.json() == {"error": "no route GET /jobs/"}
    assert method.status_code == 405
    assert method.json() == {"error": "method GET is not allowed on /events; use POST"}
    assert method.headers["allow"] == "POST"
    assert put.status_code == 405
    assert put.headers["allow"] == "GET, HEAD"
