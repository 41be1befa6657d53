"""Shadow sampling: which answered requests get a copy."""

from __future__ import annotations

from typing import cast

from prometheus_client import CollectorRegistry

from gateway.featurelog import RequestInfo
from gateway.metrics import GatewayMetrics, ShadowMetrics
from gateway.serving import Deployment, LoadedModel
from gateway.traffic.routes import Route, ShadowSpec, key_bucket
from gateway.traffic.shadow import ShadowDispatcher


class _Primary:
    def __init__(self, variant: str) -> None:
        self.variant = variant


async def test_a_keyed_sample_takes_copies_from_every_variant_in_its_share() -> None:
    # Before, a key was sampled by its routing bucket (bucket < sample x 10,000): the sampled
    # keys were the lowest buckets, all routed to one variant, so with sample 0.5 a shadow of a
    # 50/50 route compared only with "a" and never saw one request "b" answered.
    route = Route.model_validate(
        {
            "endpoint": "e",
            "variants": [
                {"name": "a", "ref": "m/1", "weight": 50},
                {"name": "b", "ref": "m/2", "weight": 50},
            ],
        }
    )
    registry = CollectorRegistry()
    metrics = GatewayMetrics(registry, "test")
    spec = ShadowSpec(name="s", ref="m/3", sample=0.5, queue_size=1)
    # not started: every sampled copy after the first finds the queue full and is counted
    dispatcher = ShadowDispatcher(
        spec, cast(Deployment, None), ShadowMetrics(metrics, "e", "s"), lambda *_: None
    )
    keys = [f"user-{i}" for i in range(4000)]
    routed = {"a": 0, "b": 0}
    for i, key in enumerate(keys):
        variant = route.pick(key_bucket(key))
        routed[variant] += 1
        info = RequestInfo(f"r{i}", 0.0, "e", routing_key=key)
        dispatcher.offer(cast(LoadedModel, _Primary(variant)), {}, {}, 1, info)

    def copies(variant: str) -> float:
        labels = {"model": "e", "primary": variant, "shadow": "s", "outcome": "dropped_queue_full"}
        return registry.get_sample_value("gateway_shadow_requests_total", labels) or 0.0

    for variant, count in routed.items():
        assert 0.4 * count < copies(variant) + 1 < 0.6 * count, (variant, copies(variant), count)
    # sticky: a key is sampled every time or never
    before = copies("a")
    for i in range(10):
        info = RequestInfo(f"again{i}", 0.0, "e", routing_key=keys[0])
        dispatcher.offer(cast(LoadedModel, _Primary("a")), {}, {}, 1, info)
    assert copies("a") - before in (0.0, 10.0)
