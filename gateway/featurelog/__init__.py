"""The feature log: one record per request, packed into Kafka messages, spooled to disk when
Kafka is away and replayed in order; predictions never wait for it.

It uses serving's signatures; other packages import only these names.
"""

from gateway.featurelog.feedback import FeedbackSettings, build_feedback_log
from gateway.featurelog.log import FeatureLog
from gateway.featurelog.packing import pack_messages
from gateway.featurelog.records import RecordBuilder, RequestInfo
from gateway.featurelog.settings import FeatureLogSettings
from gateway.featurelog.setup import (
    adopt_spools,
    build_feature_log,
    build_record_builder,
    make_spool_dir,
    producer_options,
)

__all__ = [
    "FeatureLog",
    "FeatureLogSettings",
    "FeedbackSettings",
    "RecordBuilder",
    "RequestInfo",
    "adopt_spools",
    "build_feature_log",
    "build_feedback_log",
    "build_record_builder",
    "make_spool_dir",
    "pack_messages",
    "producer_options",
]
