"""Retraining webhooks: CloudEvents 1.0 JSON, signed with HMAC-SHA256, retried with backoff,
with an idempotency key so a receiver can drop a repeated delivery."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson

__all__ = [
    "DEGRADED_EVENT_TYPE",
    "Delivery",
    "WebhookTarget",
    "Webhooks",
    "drift_event",
    "signature",
]

log = logging.getLogger(__name__)

EVENT_TYPE = "io.model-gateway.drift.detected"
DEGRADED_EVENT_TYPE = "io.model-gateway.performance.degraded"
SIGNATURE_HEADER = "x-signature-256"


@dataclass(frozen=True)
class WebhookTarget:
    """Where to send events, and the shared secret to sign them with."""

    name: str
    url: str
    secret: str


@dataclass
class Delivery:
    """One event's delivery to one target."""

    event_id: str
    target: str
    attempts: int
    status: str  # "delivered", "failed"
    detail: str
    time: float


def signature(secret: str, body: bytes) -> str:
    """The signature header's value: ``sha256=<hex HMAC-SHA256 of the body>``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def drift_event(
    source: str,
    model: str,
    version: str,
    window_id: str,
    data: dict[str, Any],
    event_type: str = EVENT_TYPE,
) -> tuple[str, bytes]:
    """A CloudEvents 1.0 structured-mode event; its id is stable for the same window."""
    event_id = hashlib.sha256(f"{model}/{version}/{window_id}".encode()).hexdigest()[:32]
    event = {
        "specversion": "1.0",
        "type": event_type,
        "source": source,
        "id": event_id,
        "time": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "subject": f"{model}/{version}",
        "datacontenttype": "application/json",
        "data": data,
    }
    return event_id, orjson.dumps(event, option=orjson.OPT_SERIALIZE_NUMPY)


class Webhooks:
    """Delivers events to every target; failed deliveries are kept and counted."""

    def __init__(
        self,
        targets: list[WebhookTarget],
        *,
        timeout_s: float = 5.0,
        max_attempts: int = 5,
        backoff_s: float = 0.5,
        on_delivery: Any = None,
    ) -> None:
        self.targets = targets
        self._timeout_s = timeout_s
        self._max_attempts = max_attempts
        self._backoff_s = backoff_s
        self._on_delivery = on_delivery
        self.recent: deque[Delivery] = deque(maxlen=200)
        self._client = httpx.AsyncClient(timeout=timeout_s)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def send(self, event_id: str, body: bytes) -> list[Delivery]:
        """Deliver to every target (in parallel), each with retries; never raises."""
        return list(await asyncio.gather(*(self._deliver(t, event_id, body) for t in self.targets)))

    async def _deliver(self, target: WebhookTarget, event_id: str, body: bytes) -> Delivery:
        headers = {
            "content-type": "application/cloudevents+json",
            SIGNATURE_HEADER: signature(target.secret, body),
            "idempotency-key": event_id,
        }
        detail = ""
        attempt = 0
        for attempt in range(1, self._max_attempts + 1):
            try:
                response = await self._client.post(target.url, content=body, headers=headers)
                if 200 <= response.status_code < 300:
                    return self._record(
                        event_id, target, attempt, "delivered", str(response.status_code)
                    )
                detail = f"HTTP {response.status_code}"
                if 400 <= response.status_code < 500 and response.status_code not in (408, 429):
                    break  # the receiver refuses this event; retrying will not help
            except httpx.HTTPError as exc:
                detail = f"{type(exc).__name__}: {exc}"
            if attempt < self._max_attempts:
                await asyncio.sleep(self._backoff_s * 2 ** (attempt - 1))
        log.error("webhook %s: event %s not delivered: %s", target.name, event_id, detail)
        return self._record(event_id, target, attempt, "failed", detail)

    def _record(
        self, event_id: str, target: WebhookTarget, attempts: int, status: str, detail: str
    ) -> Delivery:
        delivery = Delivery(event_id, target.name, attempts, status, detail, time.time())
        self.recent.append(delivery)
        if self._on_delivery is not None:
            self._on_delivery(delivery)
        return delivery
