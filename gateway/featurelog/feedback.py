"""The feedback log: ground-truth labels on their own topic, through the feature log's machinery
(bounded queue, Kafka sink, disk spool, replay, counted drops), as a second log."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from gateway.featurelog.log import FeatureLog
from gateway.featurelog.settings import FeatureLogSettings
from gateway.featurelog.setup import open_log
from gateway.metrics import GatewayMetrics
from monitors.feedback import FeedbackRecord, feedback_message_records, pack_feedback

__all__ = ["FeedbackSettings", "build_feedback_log"]


class FeedbackSettings(BaseModel):
    """``feedback.*``: the endpoint and its topic; the broker connection is the feature log's."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = False
    # Give it as many partitions as the inference log (feature_log.topic_partitions, which it
    # uses), so a model's labels land on the partition number of its predictions.
    topic: str = "model-feedback"
    spool_dir: Path = Path("feedback-spool")
    queue_size: int = Field(default=100_000, ge=1)
    # Items one request may carry (the bulk form); the body size limit applies as well.
    max_items: int = Field(default=10_000, ge=1)


@asynccontextmanager
async def build_feedback_log(
    log_settings: FeatureLogSettings,
    settings: FeedbackSettings,
    metrics: GatewayMetrics,
    shutdown_timeout_s: float,
) -> AsyncIterator[FeatureLog[FeedbackRecord]]:
    """A started feedback log: the feature log's producer settings on the feedback topic."""
    options = log_settings.model_copy(
        update={
            "topic": settings.topic,
            "spool_dir": settings.spool_dir,
            "queue_size": settings.queue_size,
        }
    )
    feedback_log: FeatureLog[FeedbackRecord]
    async with open_log(
        options, metrics.feedback_log, shutdown_timeout_s, pack_feedback, feedback_message_records
    ) as feedback_log:
        yield feedback_log
