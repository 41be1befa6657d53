"""Served models: each follows a registry reference, and moves to a new version without a gap.

When an alias moves, the new version is fetched, loaded and warmed up beside the old one, the
switch is one assignment on the event loop, and the old version drains its queue and unloads.
A version that fails to load or warm up never takes traffic, nor does one whose inputs or
outputs differ from those of the version it would replace (the requests made for that one
would all fail on it).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from gateway.errors import ModelLoadError, NotReadyError, UnknownModelError
from gateway.metrics import GatewayMetrics
from gateway.serving.batcher import Batcher, BatchObserver
from gateway.serving.runtime import ModelRuntime, RuntimeOptions, release_memory
from gateway.serving.settings import BatchingSettings
from gateway.serving.signature import (
    Signature,
    breaking_changes,
    feature_input,
    per_feature_inputs,
)
from registry_client import ModelRef, ModelVersion, Registry, RegistryError
from registry_client.metadata import ModelMetadata

__all__ = ["Deployment", "LoadedModel", "ModelLoader", "ModelManager", "NotTakenUp"]

log = logging.getLogger(__name__)


@dataclass(eq=False)
class LoadedModel:
    """One model version in memory, with its batcher, ready for traffic."""

    name: str
    variant: str
    ref: ModelRef
    version: str
    runtime: ModelRuntime
    batcher: Batcher
    batching: BatchingSettings
    loaded_at: float = field(default_factory=time.time)
    # Computed once: the feature-log record builder needs them for every request.
    feature_input: str | None = field(init=False)
    feature_names: list[str] = field(init=False)
    # One input per feature: feature -> input, and input -> feature where the names differ.
    feature_inputs: dict[str, str] = field(init=False)
    input_features: dict[str, str] = field(init=False)
    served_by_head: bytes = field(init=False)  # the x-model-variant/-version header lines

    def __post_init__(self) -> None:
        metadata = self.metadata
        self.feature_names = metadata.feature_names
        if not (self.variant.isprintable() and self.version.isprintable()):
            raise ModelLoadError(f"model {self.name}: variant and version must be printable")
        self.served_by_head = b"x-model-variant: %s\r\nx-model-version: %s\r\n" % (
            self.variant.encode(),
            self.version.encode(),
        )
        spec = feature_input(self.signature, metadata)
        self.feature_input = spec.name if spec is not None else None
        self.feature_inputs = per_feature_inputs(self.signature, metadata)
        self.input_features = {i: f for f, i in self.feature_inputs.items() if i != f}
        if self.feature_names and spec is None and not self.feature_inputs:
            log.warning(
                "model %s version %s: its features %s match neither one 2-D input of that width "
                "nor one input per feature (inputs %s); it takes tensors by input name only",
                self.name, self.version, self.feature_names, sorted(self.signature.input_names),
            )  # fmt: skip

    @property
    def signature(self) -> Signature:
        return self.runtime.signature

    @property
    def metadata(self) -> ModelMetadata:
        return self.runtime.version.metadata


@dataclass(frozen=True)
class NotTakenUp:
    """A version a deployment's reference points at that it could not take up."""

    version: str
    since: float  # Unix time when the reference was first found pointing at it
    reason: str  # why, as logged (the latest reason, if it was tried again)


class ModelLoader:
    """Fetches, loads and warms up model versions."""

    def __init__(
        self,
        registry: Registry,
        runtime_options: RuntimeOptions,
        executor: ThreadPoolExecutor,
        metrics: GatewayMetrics,
        worker_threads: int,
        inline_run_max_s: float = 0.0,
        observers: Callable[[str, str, str, bool], BatchObserver] | None = None,
    ) -> None:
        self.registry = registry
        self._options = runtime_options
        self._executor = executor
        self._metrics = metrics
        # (endpoint, version, variant, primary) -> what the batcher reports to
        self._observers = observers or (
            lambda name, version, variant, primary: metrics.for_batches(name, version, variant)
        )
        self._worker_threads = worker_threads
        self._inline_run_max_s = inline_run_max_s

    async def load(
        self,
        name: str,
        variant: str,
        ref: ModelRef,
        version: str,
        overrides: dict[str, object],
        base: BatchingSettings,
        executor: ThreadPoolExecutor | None = None,
        replacing: LoadedModel | None = None,
    ) -> LoadedModel:
        """Fetch ``ref.name`` at ``version``, load it, warm it up and start its batcher; a
        version that would break the requests ``replacing`` takes is refused (ModelLoadError)."""
        try:
            model_version = await self.registry.fetch(ref.name, version)
            runtime = await asyncio.to_thread(ModelRuntime, model_version, self._options)
            if replacing is not None:
                _check_compatible(replacing, runtime.signature, model_version.metadata, version)
            batching = _effective_batching(base, model_version, overrides)
            # the metadata's hints, at the batch sizes the batcher can make
            hinted = model_version.metadata.batching.warmup_batch_sizes
            largest = batching.max_batch_size
            sizes = batching.warmup_batch_sizes or sorted(
                {1, *(n for n in hinted if 1 <= n <= largest), largest}
            )
            timings = await asyncio.to_thread(runtime.warm_up, sizes)
        except (RegistryError, ModelLoadError) as exc:
            self._metrics.model_loads.labels(name, version, variant, "failure").inc()
            raise ModelLoadError(f"model {name} ({ref} -> version {version}): {exc}") from exc
        if batching.enabled:
            max_rows, delay, concurrency = (
                batching.max_batch_size,
                batching.max_batch_delay_s,
                batching.max_concurrent_batches,
            )
        else:  # one request per model call, as many at once as there are worker threads
            max_rows, delay, concurrency = 1, 0.0, self._worker_threads
        # Shadows (given their own executor) always run off the loop: they must never slow
        # the primary, whatever they cost.
        inline = executor is None and max(timings.values()) <= self._inline_run_max_s
        batcher = Batcher(
            runtime.run,
            executor or self._executor,
            name=f"{name}/{variant}/{version}",
            max_batch_size=max_rows,
            max_batch_delay_s=delay,
            max_queue_size=batching.max_queue_size,
            max_concurrent_batches=concurrency,
            stackable=runtime.signature.batchable and batching.enabled,
            inline=inline,
            close_when_idle=batching.close_when_idle,
            observer=self._observers(name, version, variant, executor is None),
        )
        batcher.start()
        log.info(
            "loaded %s version %s, warm-up seconds by batch size %s, batches run %s",
            name,
            version,
            timings,
            "on the event loop" if inline else "on worker threads",
        )
        self._metrics.model_loads.labels(name, version, variant, "success").inc()
        return LoadedModel(name, variant, ref, version, runtime, batcher, batching)


def _check_compatible(
    serving: LoadedModel, signature: Signature, metadata: ModelMetadata, version: str
) -> None:
    changes = breaking_changes(serving.signature, signature)
    if metadata.feature_names != serving.feature_names:
        changes.append(
            f"its features are {_names(metadata.feature_names)}, not "
            f"{_names(serving.feature_names)}"
        )
    if changes:
        raise ModelLoadError(
            f"version {version} would break the requests version {serving.version} takes: "
            f"{'; '.join(changes)}; it does not replace it (a route change to it, or a "
            "restart, takes it up)"
        )


def _names(names: list[str]) -> str:
    if not names:
        return "none"
    shown = ", ".join(repr(n) for n in names[:3])
    return f"{len(names)} ({shown}{', ...' if len(names) > 3 else ''})"


def _effective_batching(
    base: BatchingSettings, version: ModelVersion, overrides: dict[str, object]
) -> BatchingSettings:
    hints = version.metadata.batching
    merged: dict[str, object] = base.model_dump()
    if hints.max_batch_size is not None:
        merged["max_batch_size"] = hints.max_batch_size
    if hints.max_batch_delay_s is not None:
        merged["max_batch_delay_s"] = hints.max_batch_delay_s
    merged.update(overrides)
    return BatchingSettings.model_validate(merged)


class Deployment:
    """One variant of an endpoint bound to a registry reference, following it as it moves."""

    def __init__(
        self,
        name: str,
        variant: str,
        ref: ModelRef,
        loader: ModelLoader,
        batching: BatchingSettings,
        overrides: dict[str, object],
        metrics: GatewayMetrics,
        poll_interval_s: float,
        drain_timeout_s: float,
        executor: ThreadPoolExecutor | None = None,
    ) -> None:
        self.name = name
        self.variant = variant
        self.ref = ref
        self._executor = executor
        self.current: LoadedModel | None = None
        self.last_error: str | None = None
        self._loader = loader
        self._batching = batching
        self._overrides = overrides
        self._metrics = metrics
        self._poll_interval_s = poll_interval_s
        self._drain_timeout_s = drain_timeout_s
        # A version that failed for good, with its files' stamp then and why: not tried again
        # until its files change (a version folder that was seen half written).
        self._failed: tuple[str, Hashable | None, str] | None = None
        # The version the reference points at that could not be taken up, while that lasts:
        # what gateway_model_not_taken_up and the model metadata show
        self.not_taken_up: NotTakenUp | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._draining: set[asyncio.Task[None]] = set()
        # told when a version goes live (set by the manager while this waits to take over)
        self.on_live: Callable[[Deployment], None] | None = None

    async def start(self) -> None:
        """Load the referenced version now (a failure leaves it not ready), then watch the ref."""
        await self.refresh()
        if self.ref.is_alias or self.current is None:
            self._watcher = asyncio.create_task(self._watch(), name=f"watch:{self.name}")

    async def stop(self) -> None:
        """Stop watching, drain the served version and any still draining; safe twice."""
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)
            self._watcher = None
        self._mark_not_taken_up(None)
        current, self.current = self.current, None
        if current is not None:
            await self._unload(current)
        if self._draining:
            await asyncio.gather(*self._draining, return_exceptions=True)

    async def refresh(self) -> bool:
        """Check the reference once and switch if it moved; True when a new version went live."""
        try:
            version = await self._loader.registry.resolve(self.ref)
        except RegistryError as exc:
            self._note_error(f"cannot resolve {self.ref}: {exc}")
            return False
        if self.current is not None and self.current.version == version:
            self._mark_not_taken_up(None)  # e.g. an alias moved back to the served version
            return False
        registry = self._loader.registry
        stamp = await registry.version_stamp(self.ref.name, version)
        failed = self._failed
        if failed is not None and failed[:2] == (version, stamp):
            # a broken version is not retried every poll (a new version is), and is still not
            # taken up: also when the alias comes back to it from the version that serves
            self._mark_not_taken_up(version, failed[2])
            return False
        try:
            loaded = await self._loader.load(
                self.name,
                self.variant,
                self.ref,
                version,
                self._overrides,
                self._batching,
                self._executor,
                self.current,
            )
        except ModelLoadError as exc:
            if not isinstance(exc.__cause__, RegistryError) or not exc.__cause__.retriable:
                self._failed = (version, stamp, str(exc))
            self._note_error(str(exc))
            self._mark_not_taken_up(version, str(exc))
            return False
        old, self.current = self.current, loaded
        self.last_error = None
        self._failed = None
        self._mark_not_taken_up(None)
        self._metrics.loaded(self.name, version, self.variant, str(self.ref))
        if old is not None:
            self._metrics.model_swaps.labels(self.name, self.variant).inc()
            log.info(
                "model %s variant %s switched from version %s to %s",
                self.name, self.variant, old.version, version,
            )  # fmt: skip
            task = asyncio.create_task(self._unload(old), name=f"drain:{self.name}/{old.version}")
            self._draining.add(task)
            task.add_done_callback(self._draining.discard)
        if self.on_live is not None:
            self.on_live(self)
        return True

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._poll_interval_s)
            try:
                await self.refresh()
            except asyncio.CancelledError:
                raise
            except Exception:  # the watcher must outlive any one bad poll
                log.exception("model %s: watching %s failed", self.name, self.ref)

    async def _unload(self, loaded: LoadedModel) -> None:
        await loaded.batcher.stop(self._drain_timeout_s)
        self._metrics.forget(self.name, loaded.version, self.variant, str(loaded.ref))
        loaded.runtime.close()
        await asyncio.to_thread(release_memory)
        log.info("model %s variant %s version %s unloaded", self.name, self.variant, loaded.version)

    def _mark_not_taken_up(self, version: str | None, reason: str = "") -> None:
        """``version`` alone (None: no version) is not taken up, for ``reason``: in
        ``not_taken_up`` and as ``gateway_model_not_taken_up`` 1. The log line and the failure
        counter say it once, these say it while it lasts."""
        previous = self.not_taken_up
        if previous is not None and previous.version == version:
            if reason != previous.reason:  # tried again (its files changed): since stays
                self.not_taken_up = NotTakenUp(previous.version, previous.since, reason)
            return
        if previous is None and version is None:
            return
        gauge = self._metrics.model_not_taken_up
        if previous is not None:
            with contextlib.suppress(KeyError):
                gauge.remove(self.name, previous.version, self.variant, str(self.ref))
        if version is not None:
            gauge.labels(self.name, version, self.variant, str(self.ref)).set(1)
            self.not_taken_up = NotTakenUp(version, time.time(), reason)
        else:
            self.not_taken_up = None

    def _note_error(self, message: str) -> None:
        if message != self.last_error:
            log.error("model %s: %s", self.name, message)
        self.last_error = message


class ModelManager:
    """Every loaded deployment, keyed by (endpoint, variant); started and stopped together.

    Changes of one variant are serialised, so concurrent changes never load a deployment that
    nothing keeps (and that would go on polling the registry) or unload one twice. A route
    change first ``prepare``s the models it needs beside those serving, then ``ensure``
    switches to them when the change applies; what a change that did not apply prepared is
    ``discard``ed. A replica that applies another's change (``required`` false) and cannot
    load its new reference of a serving variant keeps serving that variant's version: the new
    deployment ``waits``, retrying as a watcher does, and takes over once a version of it is
    live.
    """

    def __init__(
        self,
        factory: Callable[[str, str, ModelRef], Deployment],
        executor: ThreadPoolExecutor,
    ) -> None:
        self.deployments: dict[tuple[str, str], Deployment] = {}
        self._factory = factory
        self._executor = executor
        self._retiring: set[asyncio.Task[None]] = set()
        self._prepared: dict[tuple[str, str, str], Deployment] = {}
        # by (endpoint, variant): the reference a change moved a serving variant to, not
        # loaded yet on this replica; it takes over once it loads
        self._waiting: dict[tuple[str, str], Deployment] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}

    async def __aenter__(self) -> ModelManager:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        others = [*self._prepared.values(), *self._waiting.values()]
        self._prepared.clear()
        self._waiting.clear()
        await asyncio.gather(*(d.stop() for d in [*self.deployments.values(), *others]))
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def prepare(self, endpoint: str, variant: str, ref: str) -> None:
        """Load ``ref`` for a variant beside what serves it now (nothing moves yet); raises
        ModelLoadError when it cannot be loaded. Nothing to do when it serves already, or
        waits to (a change of the route's other parts is not held up by it)."""
        key = (endpoint, variant)
        target = ModelRef.parse(ref)
        async with self._lock(key):
            existing = self.deployments.get(key)
            waiting = self._waiting.get(key)
            serving = existing is not None and existing.ref == target
            if serving or (waiting is not None and waiting.ref == target):
                return
            if (*key, ref) in self._prepared:
                return
            self._prepared[(*key, ref)] = await self._load(endpoint, variant, ref, required=True)

    def discard(self, endpoint: str, variant: str, ref: str) -> None:
        """Unload what ``prepare`` loaded for a change that did not apply (no-op if it did)."""
        deployment = self._prepared.pop((endpoint, variant, ref), None)
        if deployment is not None:
            self._retire(deployment)

    async def ensure(self, endpoint: str, variant: str, ref: str, *, required: bool) -> Deployment:
        """The deployment that serves that variant once it is at ``ref``: the serving one, the
        prepared one, or one loaded now; the one it replaces drains and unloads.

        With ``required`` a version that cannot be loaded raises ModelLoadError (an operator's
        change is refused). Without it (another replica's change, or the config file's) the
        new deployment keeps retrying: a variant that serves goes on serving its version until
        the new one loads (it is returned then, and the new one waits); one that does not is
        replaced at once, not ready.
        """
        key = (endpoint, variant)
        target = ModelRef.parse(ref)
        async with self._lock(key):
            existing = self.deployments.get(key)
            if existing is not None and existing.ref == target:
                self._stop_waiting(key)  # e.g. a change back before the other one loaded
                return existing
            waiting = self._waiting.get(key)
            deployment = self._prepared.pop((*key, ref), None)
            if deployment is None:
                if waiting is not None and waiting.ref == target and not required:
                    return existing or waiting
                deployment = await self._load(endpoint, variant, ref, required=required)
            self._stop_waiting(key)
            existing = self.deployments.get(key)  # what waited may have taken over meanwhile
            if deployment.current is None and existing is not None and existing.current is not None:
                log.warning(
                    "%s variant %s: %s could not be loaded here; version %s goes on serving "
                    "until it loads (retrying)",
                    endpoint, variant, ref, existing.current.version,
                )  # fmt: skip
                self._waiting[key] = deployment
                deployment.on_live = functools.partial(self._take_over, key)
                return existing
            self.deployments[key] = deployment
            if existing is not None:
                self._retire(existing)
            return deployment

    def retire(self, endpoint: str, variant: str) -> None:
        """Stop serving a variant; its queued requests finish first."""
        self._stop_waiting((endpoint, variant))
        deployment = self.deployments.pop((endpoint, variant), None)
        if deployment is not None:
            self._retire(deployment)

    def waiting(self, endpoint: str) -> list[Deployment]:
        """The endpoint's deployments that wait to take over a serving variant (not loaded)."""
        return [d for (e, _), d in self._waiting.items() if e == endpoint]

    def _take_over(self, key: tuple[str, str], deployment: Deployment) -> None:
        """A waiting deployment went live: it serves its variant from now on."""
        if self._waiting.get(key) is not deployment:
            return
        del self._waiting[key]
        deployment.on_live = None
        replaced = self.deployments.get(key)
        self.deployments[key] = deployment
        log.info("%s variant %s: %s loaded, it serves now", *key, deployment.ref)
        if replaced is not None:
            self._retire(replaced)

    def _stop_waiting(self, key: tuple[str, str]) -> None:
        deployment = self._waiting.pop(key, None)
        if deployment is not None:
            deployment.on_live = None
            self._retire(deployment)

    async def _load(self, endpoint: str, variant: str, ref: str, *, required: bool) -> Deployment:
        deployment = self._factory(endpoint, variant, ModelRef.parse(ref))
        await deployment.start()
        if deployment.current is None and required:
            await deployment.stop()
            raise ModelLoadError(
                f"{endpoint} variant {variant}: {ref} could not be loaded: {deployment.last_error}"
            )
        return deployment

    def _lock(self, key: tuple[str, str]) -> asyncio.Lock:
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        return lock

    def _retire(self, deployment: Deployment) -> None:
        task = asyncio.create_task(deployment.stop(), name=f"retire:{deployment.name}")
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    def get(self, endpoint: str, variant: str, version: str | None = None) -> LoadedModel:
        """The loaded version of a variant taking traffic now (or exactly ``version``)."""
        deployment = self.deployments.get((endpoint, variant))
        if deployment is None:
            raise UnknownModelError(f"unknown model {endpoint!r}")
        current = deployment.current
        if current is None:
            reason = f": {deployment.last_error}" if deployment.last_error else ""
            raise NotReadyError(
                f"model {endpoint!r} variant {variant!r} is not ready{reason}", retry_after_s=5.0
            )
        if version is not None and version != current.version:
            raise UnknownModelError(
                f"model {endpoint!r} has no version {version!r} loaded (serving version "
                f"{current.version})"
            )
        return current

    def for_endpoint(self, endpoint: str) -> list[Deployment]:
        """The endpoint's deployments (variants and shadows)."""
        return [d for (e, _), d in self.deployments.items() if e == endpoint]
