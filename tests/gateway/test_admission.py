"""Admission control's core on an explicit clock: limits, the queue-delay target, buckets."""

from __future__ import annotations

import tracemalloc

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from gateway.admission import Admission, AdmissionSettings, Gate, LimitSettings
from gateway.admission.clients import ClientBuckets
from gateway.errors import ConfigError, OverloadedError, RateLimitedError
from gateway.metrics import GatewayMetrics
from gateway.settings import load_settings


def admission(**limits: object) -> Admission:
    return Admission(AdmissionSettings(limits=LimitSettings.model_validate(limits)))


def fill(gate: Gate, count: int, now: float = 0.0) -> None:
    for _ in range(count):
        assert gate.admit(None, now) is None


def test_fixed_limit_refuses_beyond_it_and_release_makes_room() -> None:
    gate = admission(mode="fixed", max_in_flight=3).gate("m")
    fill(gate, 3)
    refusal = gate.admit(None, 0.0)
    assert isinstance(refusal, OverloadedError)
    assert "in flight are at the limit" in str(refusal)
    assert refusal is gate.admit(None, 0.0), "a refusal is built once, not per request"
    assert gate.refusals["endpoint_limit"] == 2
    gate.release()
    assert gate.admit(None, 0.0) is None
    assert gate.in_flight == 3


def test_total_limit_spans_endpoints() -> None:
    control = Admission(AdmissionSettings(max_in_flight_total=4))
    a, b = control.gate("a"), control.gate("b")
    fill(a, 3)
    fill(b, 1)
    assert b.admit(None, 0.0) is not None
    assert b.refusals["total_limit"] == 1
    a.release()
    assert b.admit(None, 0.0) is None
    assert control.total.in_flight == 4


def test_adaptive_limit_backs_off_above_the_target_and_grows_when_saturated() -> None:
    gate = admission(initial_in_flight=20, min_in_flight=4, queue_delay_target_s=0.005).gate("m")
    fill(gate, 20, now=0.0)  # opens the first window; the limit is in use
    gate.queue_wait(0.001)
    gate.queue_wait(0.030)  # mean 15.5 ms: above the target, but not standing (a burst)
    assert gate.admit(None, 0.1) is not None  # a new window: 20 * 0.9
    assert gate.limit == 18
    assert gate.refusals["endpoint_limit"] == 1
    assert gate.queue_delay_s == pytest.approx(0.0155)
    for _ in range(20):
        gate.release()
    fill(gate, 18, now=0.15)
    assert gate.admit(None, 0.15) is not None  # saturated
    gate.queue_wait(0.002)
    gate.admit(None, 0.2)  # below the target and saturated: + isqrt(18)
    assert gate.limit == 22


def test_adaptive_limit_stays_within_its_bounds() -> None:
    gate = admission(initial_in_flight=5, min_in_flight=4, max_in_flight=6).gate("m")
    fill(gate, 5)
    gate.queue_wait(0.0)
    gate.queue_wait(1.0)
    gate.admit(None, 1.0)
    gate.queue_wait(0.0)
    gate.queue_wait(1.0)
    gate.admit(None, 2.0)
    assert gate.limit == 4
    for at in (3.0, 4.0, 5.0):
        gate.admit(None, at)  # saturated, no queue wait heard: the limit holds
    assert gate.limit == 4
    for _ in range(5):
        gate.release()
    for at in (6.0, 7.0, 8.0):
        fill(gate, gate.limit - gate.in_flight, now=at)
        gate.admit(None, at)  # refused: saturated
        gate.queue_wait(0.0)
    gate.admit(None, 9.0)
    assert gate.limit == 6


@pytest.mark.parametrize("mode", ["fixed", "adaptive"])
def test_a_standing_queue_cuts_what_is_admitted_for_a_window(mode: str) -> None:
    gate = admission(mode=mode, max_in_flight=100, initial_in_flight=40, min_in_flight=4,
                     queue_delay_target_s=0.005).gate("m")  # fmt: skip
    fill(gate, 30, now=0.0)
    gate.queue_wait(0.008)
    gate.queue_wait(0.009)  # even the luckiest request waited too long: a standing queue
    refusal = gate.admit(None, 0.1)  # 30 in flight, the most of the window: 30 * 0.9 = 27
    assert isinstance(refusal, OverloadedError)
    assert "queue-delay target" in str(refusal)
    assert gate.refusals["queue_delay"] == 1
    assert gate.cap == 27
    for _ in range(4):
        gate.release()
    assert gate.admit(None, 0.15) is None  # 26 in flight: room for one
    assert gate.admit(None, 0.15) is not None
    gate.queue_wait(0.001)  # one request got through quickly: only a burst
    gate.queue_wait(0.050)
    admitted = gate.admit(None, 0.2) is None
    # fixed: the limit is back; adaptive: the mean is still above the target, 27 * 0.9
    assert (admitted, gate.cap) == ((True, 100) if mode == "fixed" else (False, 24))


def test_a_burst_is_not_a_standing_queue() -> None:
    gate = admission(mode="fixed", max_in_flight=100, queue_delay_target_s=0.005).gate("m")
    fill(gate, 1, now=0.0)
    gate.queue_wait(0.0)
    gate.queue_wait(0.100)
    assert gate.admit(None, 0.1) is None
    assert not gate.standing
    assert gate.cap == 100


def test_the_target_allows_for_the_batch_ahead() -> None:
    gate = admission(mode="fixed", queue_delay_target_s=0.005).gate("m")
    for _ in range(100):
        gate.run_time(0.020)
    assert gate.target_s == pytest.approx(0.025, abs=1e-4)
    fill(gate, 1)
    gate.queue_wait(0.021)  # waited for the batch ahead of it, and a little more
    assert gate.admit(None, 0.1) is None


def test_client_buckets_limit_each_caller_to_its_rate() -> None:
    gate = admission(client_rate_per_s=10.0, client_burst=2).gate("m")
    assert gate.admit(b"key-a", 0.0) is None
    assert gate.admit(b"key-a", 0.0) is None
    refusal = gate.admit(b"key-a", 0.0)
    assert isinstance(refusal, RateLimitedError)
    assert gate.refusals["client_rate"] == 1
    assert gate.admit(b"key-b", 0.0) is None, "another caller has its own bucket"
    assert gate.admit(None, 0.0) is None, "a caller without a key is not rate limited"
    assert gate.admit(b"key-a", 0.1) is None, "a token refills in 1/rate seconds"
    assert gate.admit(b"key-a", 0.1) is not None


def test_a_check_without_hold_takes_neither_a_place_nor_a_token() -> None:
    gate = admission(mode="fixed", max_in_flight=1, client_rate_per_s=0.001, client_burst=1).gate(
        "m"
    )
    for _ in range(3):
        assert gate.admit(b"key-a", 0.0, hold=False) is None
    assert gate.in_flight == 0
    assert gate.admit(b"key-a", 0.0) is None, "the caller's one token is still there"
    assert isinstance(gate.admit(b"key-b", 0.0, hold=False), OverloadedError)
    gate.release()
    assert isinstance(gate.admit(b"key-a", 0.0, hold=False), RateLimitedError)
    assert gate.refusals == {"endpoint_limit": 1, "total_limit": 0, "queue_delay": 0,
                             "client_rate": 1}  # fmt: skip


def test_client_table_is_bounded_and_forgets_idle_callers_first() -> None:
    buckets = ClientBuckets(rate_per_s=1.0, burst=1, max_clients=8)
    for i in range(8):
        assert buckets.take(b"busy-%d" % i, 0.0)
    assert len(buckets) == 8
    assert buckets.take(b"new", 0.5)  # nobody has refilled: the oldest go, down to 3/4
    assert len(buckets) <= 7
    assert not buckets.take(b"busy-7", 0.5), "a recent caller keeps its empty bucket"
    while len(buckets) < 8:
        assert buckets.take(b"more-%d" % len(buckets), 0.5)
    assert buckets.take(b"late", 5.0)  # everyone refilled by now: they are forgotten
    assert len(buckets) == 1


def test_the_client_table_holds_little_of_each_long_key() -> None:
    """A key is the caller's choice, up to a whole header (16 KiB): 10,000 random long keys
    per endpoint used to hold 160 MB. A long key is kept as a digest."""
    control = admission(client_rate_per_s=1.0)
    gate = control.gate("m")
    tracemalloc.start()
    try:
        for i in range(500):
            key = control.client_key([(b"x-api-key", b"%08d" % i + b"k" * 16_000)])
            assert gate.admit(key, 0.0) is None
            gate.release()
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert held < 500_000, f"{held} bytes held for 500 callers"
    long_key = [(b"x-api-key", b"a" * 1000)]
    assert control.client_key(long_key) == control.client_key(long_key), "the same caller"
    assert control.client_key(long_key) != control.client_key([(b"x-api-key", b"a" * 1001)])
    assert control.client_key([(b"x-api-key", b"short")]) == b"short"


def test_client_key_is_the_first_configured_header_present() -> None:
    control = Admission(AdmissionSettings())
    headers = [(b"x-routing-key", b"user-1"), (b"x-api-key", b"secret")]
    assert control.client_key(headers) == b"secret"
    assert control.client_key([(b"x-routing-key", b"user-1")]) == b"user-1"
    assert control.client_key([]) is None


def test_endpoint_overrides_and_bad_settings_name_the_setting() -> None:
    settings = AdmissionSettings(endpoints={"heavy": {"max_in_flight": 64, "mode": "fixed"}})
    assert settings.limits_for("heavy").max_in_flight == 64
    assert settings.limits_for("other").max_in_flight == 1024
    assert Admission(settings).gate("heavy").limit == 64
    with pytest.raises(ConfigError, match=r"retry_after_s"):
        load_settings(admission={"retry_after_s": "inf"})  # its Retry-After was a 500
    with pytest.raises(ConfigError, match=r"admission\.endpoints\.heavy"):
        load_settings(admission={"endpoints": {"heavy": {"max_in_flight": 0}}})
    with pytest.raises(ConfigError, match="initial_in_flight"):
        load_settings(admission={"limits": {"initial_in_flight": 2000}})
    with pytest.raises(ConfigError, match="min_in_flight must not be above max_in_flight"):
        load_settings(admission={"limits": {"max_in_flight": 8}})


def test_the_adaptive_limit_starts_at_128_within_its_bounds() -> None:
    assert admission().gate("m").limit == 128
    # a lower max_in_flight, globally or for one endpoint, is where it starts (not an error)
    assert admission(max_in_flight=100).gate("m").limit == 100
    settings = AdmissionSettings(endpoints={"heavy": {"max_in_flight": 64}})
    assert Admission(settings).gate("heavy").limit == 64
    assert Admission(settings).gate("light").limit == 128
    assert admission(initial_in_flight=40).gate("m").limit == 40


def test_metrics_are_read_from_the_gates_when_scraped() -> None:
    metrics = GatewayMetrics(CollectorRegistry(), "test")
    control = admission(mode="fixed", max_in_flight=1)
    metrics.watch_admission(control.snapshot)
    gate = control.gate("m")
    fill(gate, 1)
    gate.admit(None, 0.0)
    text = generate_latest(metrics.registry).decode()
    assert 'gateway_admission_in_flight{model="m"} 1.0' in text
    assert 'gateway_admission_limit{model="m"} 1.0' in text
    assert 'gateway_admission_refusals_total{model="m",reason="endpoint_limit"} 1.0' in text
    assert 'gateway_admission_refusals_total{model="m",reason="client_rate"} 0.0' in text
    assert 'gateway_admission_queue_delay_seconds{model="m"} 0.0' in text
    assert "gateway_admission_all_in_flight 1.0" in text
    assert "gateway_admission_all_limit 4096.0" in text
    assert "gateway_admission_waiting_turn 0.0" in text
    assert "gateway_admission_deferred_total 0.0" in text


def test_shedding_is_remembered_for_one_window() -> None:
    control = admission(mode="fixed", max_in_flight=1)
    gate = control.gate("m")
    fill(gate, 1, now=10.0)
    assert not control.shedding(10.0)
    gate.admit(None, 10.0)
    assert control.shedding(10.05)
    assert not control.shedding(10.2)
