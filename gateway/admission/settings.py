"""Settings of admission control: in-flight limits, the queue-delay target, per-client rates."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["DEFAULT_INITIAL_IN_FLIGHT", "AdmissionSettings", "LimitSettings"]

DEFAULT_INITIAL_IN_FLIGHT = 128


class _Group(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LimitSettings(_Group):
    """The limits of one endpoint (every endpoint's, unless ``admission.endpoints`` names it)."""

    # "adaptive": the in-flight limit moves between min_in_flight and max_in_flight on the
    # measured queue delay (AIMD, once every interval_s); "fixed": it stays at max_in_flight.
    mode: Literal["adaptive", "fixed"] = "adaptive"
    # Where the adaptive limit starts; None: 128, or max_in_flight if that is lower (a limit
    # that starts above the bursts a server sees at moderate load refuses none of them).
    initial_in_flight: int | None = Field(default=None, ge=1)
    # The floor keeps batches worth running when waits grow for reasons the load does not
    # explain (a noisy neighbour taking the CPU): a lower limit would not shorten them.
    min_in_flight: int = Field(default=16, ge=1)
    max_in_flight: int = Field(default=1024, ge=1)
    # How long a request may wait, from its first byte seen to the start of its batch, beyond
    # the time the batch ahead of it takes to run (measured per model, a moving average).
    queue_delay_target_s: float = Field(default=0.005, gt=0)
    # One caller's rate (token bucket per API key or routing key); None: no per-client limit.
    client_rate_per_s: float | None = Field(default=None, gt=0)
    # How many requests a caller may send at once above its rate (the bucket's size).
    client_burst: int = Field(default=20, ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> LimitSettings:
        if self.mode == "adaptive" and self.min_in_flight > self.max_in_flight:
            raise ValueError("min_in_flight must not be above max_in_flight (adaptive mode)")
        if (
            self.mode == "adaptive"
            and self.initial_in_flight is not None
            and not self.min_in_flight <= self.initial_in_flight <= self.max_in_flight
        ):
            raise ValueError(
                "initial_in_flight must lie between min_in_flight and max_in_flight (adaptive mode)"
            )
        return self

    @property
    def start_in_flight(self) -> int:
        """Where the adaptive limit starts: ``initial_in_flight``, or its default within the
        bounds."""
        if self.initial_in_flight is not None:
            return self.initial_in_flight
        return max(self.min_in_flight, min(DEFAULT_INITIAL_IN_FLIGHT, self.max_in_flight))


class AdmissionSettings(_Group):
    """Admission control before any work: refuse early, cheaply, and say why (README)."""

    enabled: bool = True
    limits: LimitSettings = Field(default_factory=LimitSettings)
    # Per-endpoint changes to ``limits`` (only the keys given): {"heavy": {"max_in_flight": 64}}
    endpoints: dict[str, dict[str, Any]] = Field(default_factory=dict)
    # Requests in flight over all endpoints together (a fixed bound on the process's work).
    max_in_flight_total: int = Field(default=4096, ge=1)
    # The window of the queue-delay measurement: the limit moves at most once per window, and
    # new requests are refused for a window after one whose every request waited too long.
    interval_s: float = Field(default=0.1, gt=0, le=10)
    # The adaptive limit's multiplicative decrease when the queue delay is above target.
    backoff_ratio: float = Field(default=0.9, gt=0, lt=1)
    # How much of each pass of the event loop may go to decoding, checking and queueing
    # admitted inference calls (seconds); the rest wait for the next passes, in order, so the
    # loop polls its sockets again soon and answers refusals and probes within about a pass
    # (gateway/admission/turns.py). 0: every call is worked on as soon as it is read.
    pass_slice_s: float = Field(default=0.001, ge=0, le=1)
    # Retry-After (seconds, rounded up to whole seconds) on a 503 refusal.
    retry_after_s: float = Field(default=1.0, gt=0, allow_inf_nan=False)
    # Headers that name a caller for the per-client rate; the first one present counts.
    client_key_headers: list[str] = Field(default_factory=lambda: ["x-api-key", "x-routing-key"])
    # Callers whose buckets are kept (the oldest and the idle are forgotten beyond it).
    max_clients: int = Field(default=10_000, ge=1)
    # Readiness answers 503 "overloaded" while this replica sheds load, so a load balancer
    # moves traffic elsewhere. Off by default: when every replica is busy that empties the
    # Service. Liveness never depends on load.
    readiness_reports_overload: bool = False

    @model_validator(mode="after")
    def _endpoint_limits_valid(self) -> AdmissionSettings:
        for name in self.endpoints:
            self.limits_for(name)
        return self

    def limits_for(self, endpoint: str) -> LimitSettings:
        """``limits`` with the endpoint's own changes applied."""
        changes = self.endpoints.get(endpoint)
        if not changes:
            return self.limits
        try:
            return LimitSettings.model_validate({**self.limits.model_dump(), **changes})
        except ValueError as exc:
            raise ValueError(f"admission.endpoints.{endpoint}: {exc}") from exc
