"""Reading the inference-log topic back in tests."""

from __future__ import annotations

import asyncio
import time

from aiokafka import AIOKafkaConsumer

from monitors.schema import InferenceRecord, decode_records

__all__ = ["read_records", "read_records_async"]


def read_records(
    bootstrap_servers: str,
    topic: str,
    expected: int,
    timeout_s: float = 60.0,
    settle_s: float = 1.0,
) -> list[InferenceRecord]:
    """Consume the topic from the start until ``expected`` records arrived (then ``settle_s`` more,
    to catch unexpected extras) or the timeout passed."""
    return asyncio.run(read_records_async(bootstrap_servers, topic, expected, timeout_s, settle_s))


async def read_records_async(
    bootstrap_servers: str,
    topic: str,
    expected: int,
    timeout_s: float = 60.0,
    settle_s: float = 1.0,
) -> list[InferenceRecord]:
    """``read_records`` on a running event loop."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap_servers,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        group_id=None,
    )
    await consumer.start()
    records: list[InferenceRecord] = []
    try:
        deadline = time.monotonic() + timeout_s
        settle_until: float | None = None
        while time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=200, max_records=5000)
            for messages in batches.values():
                for message in messages:
                    if message.value is not None:
                        records.extend(decode_records(message.value))
            if len(records) >= expected:
                settle_until = settle_until or time.monotonic() + settle_s
                if time.monotonic() >= settle_until:
                    break
    finally:
        await consumer.stop()
    return records
