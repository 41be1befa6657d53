"""The gateway's admission control: one gate per endpoint, a bound on the whole process."""

from __future__ import annotations

import hashlib

from gateway.admission.gate import REASONS, Gate, InFlightTotal
from gateway.admission.settings import AdmissionSettings
from gateway.admission.turns import Turns
from gateway.metrics import LoadSnapshot, ProcessLoad

__all__ = ["Admission"]

# Keys longer than this are kept as a 16-byte digest: a header may be 16 KiB
# (``server.max_header_bytes``), and 10,000 such keys an endpoint held 160 MB.
_MAX_KEY_BYTES = 64


class Admission:
    """Finds an endpoint's gate (made on first use) and the caller's key among the headers."""

    def __init__(self, settings: AdmissionSettings) -> None:
        self._settings = settings
        self.total = InFlightTotal(settings.max_in_flight_total)
        self._gates: dict[str, Gate] = {}
        self._client_headers = tuple(
            name.lower().encode("latin-1") for name in settings.client_key_headers
        )
        self.readiness_reports_overload = settings.readiness_reports_overload
        # where admitted inference calls wait for a pass of the event loop; None: they never do
        self.turns = Turns(settings.pass_slice_s) if settings.pass_slice_s > 0 else None

    def gate(self, endpoint: str) -> Gate:
        """The gate of ``endpoint`` (call it for served endpoints only: gates are kept)."""
        gate = self._gates.get(endpoint)
        if gate is None:
            settings = self._settings
            gate = Gate(
                endpoint,
                settings.limits_for(endpoint),
                self.total,
                interval_s=settings.interval_s,
                backoff_ratio=settings.backoff_ratio,
                retry_after_s=settings.retry_after_s,
                max_clients=settings.max_clients,
            )
            self._gates[endpoint] = gate
        return gate

    def client_key(self, headers: list[tuple[bytes, bytes]]) -> bytes | None:
        """The caller's key: the first of ``client_key_headers`` the request carries (a long
        one as its digest: each endpoint keeps ``max_clients`` keys that callers choose)."""
        for wanted in self._client_headers:
            for name, value in headers:
                if name == wanted:
                    if len(value) > _MAX_KEY_BYTES:
                        return hashlib.blake2b(value, digest_size=16).digest()
                    return bytes(value)
        return None

    def shedding(self, now: float) -> bool:
        """Whether any endpoint refused a request for load within the last window."""
        since = now - self._settings.interval_s
        return any(gate.last_shed >= since for gate in self._gates.values())

    def snapshot(self) -> ProcessLoad:
        """Per endpoint: in flight, limit, queue delay, refusals; and the process's total."""
        loads = [
            LoadSnapshot(
                gate.endpoint,
                gate.in_flight,
                gate.cap,
                gate.queue_delay_s,
                {reason: gate.refusals[reason] for reason in REASONS},
            )
            for gate in list(self._gates.values())
        ]
        turns = self.turns
        return ProcessLoad(
            loads,
            self.total.in_flight,
            self.total.limit,
            turns.waiting if turns is not None else 0,
            turns.deferred if turns is not None else 0,
        )
