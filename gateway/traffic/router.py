"""The routing state of the gateway: routes, the variants they load, shadows and canaries.

``apply`` is the one place a route takes effect: every model it references is loaded and warmed
up first, then the route is swapped in with one assignment, then what it no longer uses drains
and unloads.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from gateway.errors import (
    InvalidInputError,
    ModelLoadError,
    NotReadyError,
    UnknownModelError,
)
from gateway.serving import LoadedModel, ModelManager
from gateway.traffic.canary import CanaryController, VariantStats
from gateway.traffic.routes import BUCKETS, Route, key_bucket
from gateway.traffic.shadow import ShadowDispatcher

__all__ = ["Traffic"]

log = logging.getLogger(__name__)

ShadowFactory = Callable[[Route, str], Awaitable[ShadowDispatcher]]
ChangeFn = Callable[[Route, str, str], Awaitable[Any]]


class Traffic:
    """Routes by endpoint and everything they need loaded."""

    def __init__(
        self,
        manager: ModelManager,
        make_shadow: ShadowFactory,
        stats: VariantStats,
        replica_id: str,
        takeover_grace_s: float = 10.0,
        canary_check_interval_s: float = 0.5,
    ) -> None:
        self.manager = manager
        self.routes: dict[str, Route] = {}
        self.stats = stats
        self.replica_id = replica_id
        self.takeover_grace_s = takeover_grace_s
        self._canary_check_interval_s = canary_check_interval_s
        self.change: ChangeFn | None = None  # set by the route store: how a canary changes routes
        self._make_shadow = make_shadow
        self._shadows: dict[tuple[str, str], ShadowDispatcher] = {}
        # shadows an operator's change loaded before it applies, by (endpoint, name)
        self._prepared_shadows: dict[tuple[str, str], ShadowDispatcher] = {}
        self._canaries: dict[str, CanaryController] = {}
        self._lock = asyncio.Lock()

    async def __aenter__(self) -> Traffic:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        for controller in self._canaries.values():
            await controller.stop()
        prepared = list(self._prepared_shadows.values())
        self._prepared_shadows.clear()
        await asyncio.gather(*(s.stop() for s in [*self._shadows.values(), *prepared]))

    async def apply(self, route: Route, *, required: bool) -> None:
        """Load what ``route`` needs, switch to it, then retire what it no longer uses."""
        async with self._lock:
            endpoint = route.endpoint
            for variant in route.variants:
                await self.manager.ensure(endpoint, variant.name, variant.ref, required=required)
            shadows: dict[tuple[str, str], ShadowDispatcher] = {}
            for spec in route.shadows:
                key = (endpoint, spec.name)
                existing = self._shadows.get(key)
                prepared = self._prepared_shadows.get(key)
                if existing is not None and existing.spec == spec:
                    shadows[key] = existing
                elif prepared is not None and prepared.spec == spec:
                    shadows[key] = self._prepared_shadows.pop(key)
                else:
                    shadows[key] = await self._make_shadow(route, spec.name)
            old = self.routes.get(endpoint)
            self.routes[endpoint] = route  # traffic moves here
            for key, dispatcher in list(self._shadows.items()):
                if key[0] == endpoint and shadows.get(key) is not dispatcher:
                    del self._shadows[key]
                    await dispatcher.stop()
            self._shadows.update(shadows)
            if old is not None:
                # a shadow has a deployment of its own (stopped above), never the manager's:
                # a variant made a shadow of the same name is retired like any other
                keep = {v.name for v in route.variants}
                for name in [v.name for v in old.variants]:
                    if name not in keep:
                        self.manager.retire(endpoint, name)
            await self._update_canary(old, route)
            log.info("route %s: %s", endpoint, {v.name: v.weight for v in route.variants})

    async def prepare_shadows(self, route: Route) -> None:
        """Load the shadows ``route`` adds or changes (nothing moves yet); raises
        ModelLoadError naming the first that cannot be loaded, as for a variant."""
        for spec in route.shadows:
            key = (route.endpoint, spec.name)
            existing = self._shadows.get(key)
            prepared = self._prepared_shadows.get(key)
            if (existing is not None and existing.spec == spec) or (
                prepared is not None and prepared.spec == spec
            ):
                continue
            dispatcher = await self._make_shadow(route, spec.name)
            if dispatcher.deployment.current is None:
                error = dispatcher.deployment.last_error
                await dispatcher.stop()
                raise ModelLoadError(
                    f"{route.endpoint} shadow {spec.name}: {spec.ref} could not be loaded: {error}"
                )
            if prepared is not None:
                await prepared.stop()
            self._prepared_shadows[key] = dispatcher

    async def discard_shadows(self, route: Route) -> None:
        """Unload what ``prepare_shadows`` loaded for a change that did not apply."""
        for spec in route.shadows:
            key = (route.endpoint, spec.name)
            prepared = self._prepared_shadows.get(key)
            if prepared is not None and prepared.spec == spec:
                del self._prepared_shadows[key]
                await prepared.stop()

    async def _update_canary(self, old: Route | None, route: Route) -> None:
        """Start a controller for the route's live canary: the driver on its owner, a watcher
        (that takes the ramp over when its owner goes quiet) on every other replica."""
        previous = self._canaries.pop(route.endpoint, None)
        if previous is not None:
            await previous.stop()
        rule = route.canary
        if rule is None or rule.state in ("promoted", "rolled_back") or self.change is None:
            return
        if rule.state == "pending":
            # a new ramp is judged on its own requests, on whichever replica comes to drive it
            self.stats.forget(route.endpoint, rule.variant)
        before = old.canary if old is not None else None
        unmoved = (
            previous is not None
            and before is not None
            and (before.variant, before.state) == (rule.variant, rule.state)
        )
        controller = CanaryController(
            route.endpoint,
            self.routes.get,
            self.stats,
            self.change,
            self._version_of,
            self._canary_check_interval_s,
            replica_id=self.replica_id,
            takeover_grace_s=self.takeover_grace_s,
            # a hold, a takeover or an operator's change of weights does not restart the step
            last_step=previous.last_step if previous is not None and unmoved else None,
        )
        controller.start()
        self._canaries[route.endpoint] = controller

    def _version_of(self, endpoint: str, variant: str) -> str | None:
        """The model version a variant serves now (None while it loads)."""
        deployment = self.manager.deployments.get((endpoint, variant))
        current = deployment.current if deployment is not None else None
        return current.version if current is not None else None

    def route(self, endpoint: str) -> Route:
        """The route of an endpoint."""
        route = self.routes.get(endpoint)
        if route is None:
            raise UnknownModelError(f"unknown model {endpoint!r}")
        return route

    def pick(
        self,
        endpoint: str,
        routing_key: str | None = None,
        pinned: str | None = None,
        version: str | None = None,
    ) -> LoadedModel:
        """The loaded model that serves this request."""
        route = self.route(endpoint)
        if version is not None:
            for variant in route.variants:
                deployment = self.manager.deployments.get((endpoint, variant.name))
                if deployment and deployment.current and deployment.current.version == version:
                    return deployment.current
            serving = sorted(
                {d.current.version for d in self.manager.for_endpoint(endpoint) if d.current}
            )
            raise UnknownModelError(
                f"model {endpoint!r} has no version {version!r} loaded (serving versions {serving})"
            )
        if pinned is not None:
            if not route.allow_pinning:
                raise InvalidInputError(f"route {endpoint!r} does not allow pinning a variant")
            if route.variant(pinned) is None:
                names = [v.name for v in route.variants]
                raise InvalidInputError(f"route {endpoint!r} has no variant {pinned!r} ({names})")
            return self.manager.get(endpoint, pinned)
        bucket = key_bucket(routing_key)
        try:
            return self.manager.get(endpoint, route.pick(bucket))
        except NotReadyError:
            stand_in = self._stand_in(route, bucket)
            if stand_in is None:
                raise
            return stand_in

    def _stand_in(self, route: Route, bucket: int) -> LoadedModel | None:
        """A serving variant for a request whose variant is not loaded on this replica (a
        route change whose model loaded where it was made but not here): picked by weight
        among those that serve, from the same bucket, so a routing key stays on one of them.
        None when no variant serves."""
        serving: list[tuple[int, LoadedModel]] = []
        for variant in route.variants:
            deployment = self.manager.deployments.get((route.endpoint, variant.name))
            if variant.weight > 0 and deployment is not None and deployment.current is not None:
                serving.append((variant.weight, deployment.current))
        point = bucket * sum(weight for weight, _ in serving) // BUCKETS
        for weight, model in serving:
            if point < weight:
                return model
            point -= weight
        return None

    def primary(self, endpoint: str) -> LoadedModel:
        """The variant with the largest weight (what model-metadata calls describe), of those
        loaded here (NotReadyError naming the heaviest when none is)."""
        route = self.route(endpoint)
        by_weight = sorted(route.variants, key=lambda v: v.weight, reverse=True)  # stable
        for variant in by_weight:
            deployment = self.manager.deployments.get((endpoint, variant.name))
            if deployment is not None and deployment.current is not None:
                return deployment.current
        return self.manager.get(endpoint, by_weight[0].name)

    def versions(self, endpoint: str) -> list[LoadedModel]:
        """The loaded versions an endpoint routes to: the primary first, then its other variants
        (a weight of 0 still serves pinned and by-version requests) and its shadows, in the
        route's order; one loading now is left out. It looks up by key and iterates only the
        (frozen) route, so a worker thread may call it while the event loop changes routes."""
        primary = self.primary(endpoint)
        route = self.route(endpoint)
        deployments = [self.manager.deployments.get((endpoint, v.name)) for v in route.variants]
        for spec in route.shadows:
            dispatcher = self._shadows.get((endpoint, spec.name))
            deployments.append(dispatcher.deployment if dispatcher is not None else None)
        others = [d.current for d in deployments if d is not None and d.current is not None]
        return [primary, *(m for m in others if m is not primary)]

    def shadows(self, endpoint: str) -> list[ShadowDispatcher]:
        """The shadow dispatchers of an endpoint."""
        return [d for (e, _), d in self._shadows.items() if e == endpoint]
