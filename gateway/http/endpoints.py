"""Endpoints: parse, call the core, render. The infer endpoints are plain ASGI for speed."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar, cast

import numpy as np
import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import Response

from gateway._parse_process import parse_in_process
from gateway.admission import Admission, Gate
from gateway.errors import (
    DeadlineExceededError,
    GatewayError,
    InvalidInputError,
    NotReadyError,
)
from gateway.featurelog import RequestInfo
from gateway.feedback import FeedbackDisabledError, FeedbackService
from gateway.http._asgi import (
    JSON,
    Headers,
    Receive,
    Reply,
    Scope,
    Send,
    decode_body_inline,
    error_reply,
    header,
    read_body,
    send_reply,
)
from gateway.http._parse_pool import ParsePool
from gateway.inference import InferenceService
from gateway.metrics import GatewayMetrics
from gateway.protocol import (
    InferRequest,
    decode_body,
    parse_infer_body,
    parse_instances,
    parse_rows,
    render_infer_response,
    render_predictions,
    rows_layout,
)
from gateway.serving import Deployment, LoadedModel
from gateway.traffic import RouteStore

__all__ = [
    "LARGE_BODY_BYTES",
    "AppState",
    "Body",
    "FastEndpoint",
    "FastHandler",
    "FeedbackEndpoint",
    "InferEndpoint",
    "PredictEndpoint",
]

log = logging.getLogger(__name__)

SERVER_NAME = "model-gateway"

Tensors = dict[str, np.ndarray]
ParsedT = TypeVar("ParsedT")


@dataclass
class AppState:
    """What the endpoints share; ``service`` is set by the lifespan once models are loaded."""

    version: str
    metrics: GatewayMetrics
    max_body_bytes: int
    routing_key_header: bytes
    pin_header: bytes
    service: InferenceService | None = None
    route_store: RouteStore | None = None
    # /v2/health/ready: every endpoint ready ("all") or at least one ("any").
    readiness: str = "any"
    feedback: FeedbackService | None = None
    feedback_enabled: bool = False
    admission: Admission | None = None
    # Large JSON bodies are parsed in these processes (``server.parse_processes``), else on
    # worker threads.
    parse_pool: ParsePool | None = None

    def require_service(self) -> InferenceService:
        if self.service is None:
            raise NotReadyError("the gateway is starting")
        return self.service


# Request ids: a random per-process prefix and a counter, unique across replicas and restarts
# and much cheaper than a uuid4 per request.
_ID_PREFIX = os.urandom(6).hex()
_ID_COUNTER = itertools.count()


def _request_id() -> str:
    return f"{_ID_PREFIX}-{next(_ID_COUNTER):x}"


_WATCH_AFTER_S = 0.02

# A body larger than this is joined, decompressed, decoded and parsed on a worker thread: its
# size is the client's choice, and on the event loop it would stall every other connection.
LARGE_BODY_BYTES = 256 * 1024
# What ``_decode_here`` gives for a body to decode on a worker thread instead.
_INFLATES_LARGE = object()

# A request body: whole, or (a large one) as the chunks it arrived in, joined off the loop.
Body = bytes | list[bytes]


class FastHandler(Protocol):
    """An infer endpoint's callback driver (``_InferBase.handle``)."""

    def __call__(
        self,
        name: str,
        version: str | None,
        headers: Headers,
        body: Body,
        respond: Callable[[Reply | None], None],
        arrived: float,
    ) -> asyncio.Future[Any] | None: ...


class FastEndpoint(Protocol):
    """An infer endpoint as the gateway's own HTTP protocol drives it."""

    def handle(
        self,
        name: str,
        version: str | None,
        headers: Headers,
        body: Body,
        respond: Callable[[Reply | None], None],
        arrived: float,
    ) -> asyncio.Future[Any] | None: ...

    def refuse_early(self, name: str, headers: Headers) -> Reply | None: ...


class _ClientGoneError(Exception):
    """The caller disconnected while its request waited; nobody is left to answer."""


class _Call(Generic[ParsedT]):
    """One request between being queued on its model's batcher and being answered."""

    __slots__ = ("future", "info", "inputs", "model", "parsed", "rows", "started")

    def __init__(
        self,
        model: LoadedModel,
        info: RequestInfo,
        parsed: ParsedT,
        inputs: Tensors,
        started: float,
        rows: int,
        future: asyncio.Future[Tensors],
    ) -> None:
        self.model = model
        self.info = info
        self.parsed = parsed
        self.inputs = inputs
        self.started = started
        self.rows = rows
        self.future = future


class _Prepared(Generic[ParsedT]):
    """A large body parsed off the loop for the version chosen before: its parse or the
    exception the parse raised."""

    __slots__ = ("error", "model", "parsed")

    def __init__(self, model: LoadedModel, parsed: ParsedT | None, error: Exception | None) -> None:
        self.model = model
        self.parsed = parsed
        self.error = error

    @property
    def stale(self) -> bool:
        """Its version was swapped out (or retired) while the body was parsed: it takes no
        more requests, so the request is routed and parsed again."""
        return self.model.batcher.closing

    def result(self) -> ParsedT:
        if self.error is not None:
            raise self.error
        return cast("ParsedT", self.parsed)


class _InferBase(Generic[ParsedT]):
    """The infer endpoints: a synchronous core (admit, begin, end) and two drivers of it.

    ``__call__`` is the ASGI driver (the Starlette app, tests over ASGI, any ASGI server);
    ``handle`` is the callback driver that the gateway's own HTTP protocol calls with a whole
    request: it needs no task and no awaits per request, only a callback on the batch future.

    Both follow one rule on the size of the body: a small one is decoded and parsed on the
    event loop; a large one (over ``LARGE_BODY_BYTES``, or compressed and inflating past
    ``INLINE_INFLATE_BYTES``) is routed first, then joined, decompressed, decoded and parsed
    for the version chosen on a worker thread (``_prepare``), and queued back on the loop. Where
    the endpoint can ``offload`` it and a parse process is up, the process does the joining,
    decompressing and reading of the JSON into arrays instead (a thread would hold the GIL,
    and so the loop, throughout), and ``parse`` runs on the loop on its result.
    """

    def __init__(self, state: AppState) -> None:
        self.state = state
        # Each gate's refusals are built once, and so are their replies.
        self._refusals: dict[GatewayError, Reply] = {}

    def decode(self, headers: Headers, body: bytes) -> Any:
        """The model-independent part of parsing (a worker thread runs it for large bodies)."""
        return body

    def parse(
        self, model: LoadedModel, info: RequestInfo, headers: Headers, decoded: Any
    ) -> ParsedT:
        """Turn the decoded body into the request's tensors (and whatever rendering needs);
        a worker thread runs it for large bodies, so it reads ``model`` and writes ``info``
        only."""
        raise NotImplementedError

    def offload(self, model: LoadedModel, headers: Headers) -> Callable[[bytes], Any] | None:
        """For a large body: what a parse process makes of the whole decoded body, given to
        ``parse`` in place of ``decode``'s result (picklable: a module-level function, or a
        partial of one holding what it needs of the model); or None, then ``_prepare`` runs on
        a worker thread."""
        return None

    def inputs(self, parsed: ParsedT) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def render(
        self, model: LoadedModel, info: RequestInfo, parsed: ParsedT, outputs: Tensors
    ) -> Reply:
        raise NotImplementedError

    # -- the core -----------------------------------------------------------------------------

    def admit(
        self, name: str, headers: Headers, hold: bool = True
    ) -> tuple[InferenceService, Gate | None] | Reply:
        """Refuse unknown models, a gateway still starting, and what admission control sheds,
        before the body is decoded or parsed: the answer. Else the service and the gate taken,
        which the caller releases once the request is over (``hold=False``: only checked,
        nothing to release).

        A refusal costs a route lookup, the gate's checks and a counter: no request id, no
        log record, and its reply is built once.
        """
        try:
            service = self.state.require_service()
            service.traffic.route(name)
        except GatewayError as exc:
            return error_reply(exc, _request_id())
        admission = self.state.admission
        if admission is None:
            return service, None
        gate = admission.gate(name)
        client = admission.client_key(headers) if gate.limits_clients else None
        refusal = gate.admit(client, time.perf_counter(), hold)
        if refusal is None:
            return service, gate
        reply = self._refusals.get(refusal)
        if reply is None:
            error = error_reply(refusal)
            head = b"".join(b"%s: %s\r\n" % pair for pair in error.headers)
            reply = self._refusals[refusal] = Reply(error.status, error.body, head=head)
        return reply

    def refuse_early(self, name: str, headers: Headers) -> Reply | None:
        """The answer ``admit`` gives a request from its head alone, before its body is read:
        a refusal (counted), or None, and then neither a place nor a token of its caller is
        taken (the request is admitted once it is whole)."""
        admitted = self.admit(name, headers, hold=False)
        return admitted if isinstance(admitted, Reply) else None

    def choose(
        self,
        service: InferenceService,
        info: RequestInfo,
        version: str | None,
        headers: Headers,
        started: float,
    ) -> LoadedModel:
        """Pick the variant that serves the request; raises GatewayError (also when the
        request's deadline has passed already)."""
        key = header(headers, self.state.routing_key_header)
        if key is not None:
            info.routing_key = key.decode("latin-1")
        pin = header(headers, self.state.pin_header)
        model = service.pick(info, pin.decode("latin-1") if pin else None, version)
        service.check_deadline(model, info, started)
        return model

    def begin(
        self,
        service: InferenceService,
        info: RequestInfo,
        version: str | None,
        headers: Headers,
        decoded: Any,
        started: float,
    ) -> _Call[ParsedT]:
        """Pick the variant, parse, check and queue the request; raises GatewayError.

        ``decoded`` is what ``decode`` returned, or the exception it raised; or, for a large
        body, the ``_Prepared`` parse for the version chosen before (not stale: the drivers
        check that just before, with no await in between).
        """
        # From here to the batcher's queue nothing yields to the event loop, so neither a model
        # swap nor a route change can slip in between choosing the version (or finding the one
        # chosen before still serving) and queueing on it.
        prepared = isinstance(decoded, _Prepared)
        choose = self.choose
        model = decoded.model if prepared else choose(service, info, version, headers, started)
        try:
            if prepared:
                parsed = decoded.result()
            elif isinstance(decoded, Exception):
                raise decoded
            else:
                parsed = self.parse(model, info, headers, decoded)
        except GatewayError as exc:
            service.reject(model, info, started, exc)
            raise
        except Exception as exc:  # a bug: still answered with the request id, and counted
            log.exception("unexpected error parsing a request for %s", model.name)
            error = _internal_error_exception()
            service.reject(model, info, started, error)
            raise error from exc
        if prepared:
            # after its parse's outcome: a body whose parse outlasted the deadline and that
            # is invalid is told what is wrong (400), not to send it again (503)
            service.check_deadline(model, info, started, "while its body was parsed")
        inputs = self.inputs(parsed)
        try:
            rows, future = service.start(model, inputs, info, started)
        except GatewayError as exc:
            service.finish(model, info, inputs, 0, started, None, exc)
            raise
        return _Call(model, info, parsed, inputs, started, rows, future)

    def end(self, service: InferenceService, call: _Call[ParsedT]) -> Reply | None:
        """Record the outcome of a finished call and render its answer (None: caller gone)."""
        future = call.future
        if future.cancelled():
            error: BaseException | None = asyncio.CancelledError()
            outputs = None
        else:
            error = future.exception()
            outputs = None if error is not None else future.result()
        service.finish(call.model, call.info, call.inputs, call.rows, call.started, outputs, error)
        if outputs is not None:
            return self.render(call.model, call.info, call.parsed, outputs)
        if isinstance(error, GatewayError):
            return error_reply(error, call.info.request_id)
        if error is None or isinstance(error, asyncio.CancelledError):
            return None
        log.error("unexpected error running %s", call.model.name, exc_info=error)
        return _internal_error()

    # -- the callback driver ------------------------------------------------------------------

    def handle(
        self,
        name: str,
        version: str | None,
        headers: Headers,
        body: Body,
        respond: Callable[[Reply | None], None],
        arrived: float,
    ) -> asyncio.Future[Any] | None:
        """Answer a whole request through ``respond`` (called once, maybe before returning).

        ``arrived`` is when its first byte was seen (``time.perf_counter``). Returns a future
        while the request waits (cancel it when the client goes): the batch's, or, for a large
        body, one that stands for the parsing on a worker thread and the batch.
        """
        admitted = self.admit(name, headers)
        if isinstance(admitted, Reply):
            respond(admitted)
            return None
        service, gate = admitted
        if gate is not None:
            respond = _released_first(gate, respond)
        started = arrived
        info = RequestInfo(_request_id(), time.time(), name)
        small = isinstance(body, bytes) and len(body) <= LARGE_BODY_BYTES
        admission = self.state.admission
        turns = admission.turns if admission is not None else None
        if small and (turns is None or turns.now()):
            result = self._decode_here(headers, body)
            if result is not _INFLATES_LARGE:
                return self._queue(service, info, version, headers, result, started, respond)
            small = False  # a compressed body that inflates large: decoded off the loop
        # Later: in a later pass of the loop (``gateway/admission/turns.py``), or, for a large
        # body, once a worker thread has decoded it. ``waiting`` stands for the request until
        # then; the connection cancels it when the caller goes, and then nothing runs.
        loop = asyncio.get_running_loop()
        waiting: asyncio.Future[Any] = loop.create_future()

        def queue(decoded: Callable[[], Any]) -> None:
            if waiting.cancelled():
                respond(None)  # the caller has gone before its request was queued: unparsed
                return
            call = self._queue(service, info, version, headers, decoded(), started, respond)
            if call is not None:
                waiting.add_done_callback(lambda _: call.cancel())

        def off_loop() -> bool:
            """Route the request, then parse it on a worker thread; False when it was answered
            instead (no version to parse it for)."""
            try:
                model = self.choose(service, info, version, headers, started)
            except GatewayError as exc:
                respond(error_reply(exc, info.request_id))
                return False
            except Exception:
                log.exception("unexpected error routing an inference call for %s", name)
                respond(_internal_error())
                return False
            work = self._prepare_off_loop(model, info, headers, body, True, started)
            work.add_done_callback(prepared)
            return True

        def prepared(done: asyncio.Future[_Prepared[ParsedT]]) -> None:
            if done.result().stale and not waiting.cancelled():
                off_loop()  # swapped out meanwhile: routed and parsed again, still off the loop
            else:
                queue(done.result)

        def in_turn() -> None:
            if waiting.cancelled():
                queue(lambda: None)  # answers that the caller has gone; nothing is decoded
                return
            result = self._decode_here(headers, body)
            if result is _INFLATES_LARGE:
                off_loop()
            else:
                queue(lambda: result)

        if small:
            assert turns is not None
            turns.later(in_turn)
        elif not off_loop():
            return None  # answered already: nothing waits
        return waiting

    def _decode_here(self, headers: Headers, body: Body) -> Any:
        """``_decode`` on the event loop, or ``_INFLATES_LARGE`` for a compressed body that
        inflates past ``INLINE_INFLATE_BYTES`` (16 KiB of gzip can be 16 MiB of JSON)."""
        assert isinstance(body, bytes)
        try:
            plain = decode_body_inline(body, headers, self.state.max_body_bytes)
        except Exception as exc:  # raised again by begin(), where the model is known
            return exc
        if plain is None:
            return _INFLATES_LARGE
        return self._decode(headers, plain, encoded=False)

    def _decode(self, headers: Headers, body: Body, encoded: bool) -> Any:
        """Join, undo the Content-Encoding and ``decode``: the result, or the exception."""
        try:
            whole = body if isinstance(body, bytes) else b"".join(body)
            if encoded:
                whole = decode_body(whole, headers, self.state.max_body_bytes)
            return self.decode(headers, whole)
        except Exception as exc:  # raised again by begin(), where the model is known
            return exc

    def _prepare(
        self, model: LoadedModel, info: RequestInfo, headers: Headers, body: Body, encoded: bool
    ) -> _Prepared[ParsedT]:
        """``_decode`` and ``parse`` for ``model`` (on a worker thread, for a large body)."""
        return self._parsed(model, info, headers, self._decode(headers, body, encoded))

    def _parsed(
        self, model: LoadedModel, info: RequestInfo, headers: Headers, decoded: Any
    ) -> _Prepared[ParsedT]:
        """``parse`` of what was decoded (or the exception decoding raised), for ``model``."""
        try:
            if isinstance(decoded, Exception):
                raise decoded
            return _Prepared(model, self.parse(model, info, headers, decoded), None)
        except Exception as exc:  # raised again by begin(), on the loop, which accounts for it
            return _Prepared(model, None, exc)

    def _prepare_off_loop(
        self,
        model: LoadedModel,
        info: RequestInfo,
        headers: Headers,
        body: Body,
        encoded: bool,
        started: float,
    ) -> asyncio.Future[_Prepared[ParsedT]]:
        """``_prepare`` for a large body: decoded in a parse process where the endpoint can
        ``offload`` it and one is up (``parse`` then runs on the loop, on arrays: a few
        microseconds), else on a worker thread. A parse process that has not answered by the
        request's deadline (from ``started``) is given up: a process that stops answering
        must not hold the request, and its place at the gate, for ever."""
        loop = asyncio.get_running_loop()
        pool = self.state.parse_pool
        parse = self.offload(model, headers) if pool is not None else None
        work = None
        if pool is not None and parse is not None:
            codings = [pair for pair in headers if encoded and pair[0] == b"content-encoding"]
            work = pool.submit(parse_in_process, body, codings, self.state.max_body_bytes, parse)
        if work is None:
            self.state.metrics.large_bodies.labels("thread").inc()
            return loop.run_in_executor(None, self._prepare, model, info, headers, body, encoded)
        self.state.metrics.large_bodies.labels("process").inc()
        prepared: asyncio.Future[_Prepared[ParsedT]] = loop.create_future()

        def expired() -> None:
            if prepared.done():
                return
            error = DeadlineExceededError(
                f"model {model.name}: the request's deadline passed while its body was parsed"
            )
            prepared.set_result(_Prepared(model, None, error))
            work.cancel()  # drops the parse if it has not started

        late = loop.call_later(started + model.batching.timeout_s - time.perf_counter(), expired)

        def parsed(done: asyncio.Future[Any]) -> None:
            late.cancel()
            if prepared.done():  # its caller went away (an ASGI task cancelled), or too late
                return
            if done.cancelled():  # the pool was closed: the gateway is stopping
                decoded: Any = NotReadyError("the gateway is stopping")
            else:
                decoded = done.exception() or done.result()
            prepared.set_result(self._parsed(model, info, headers, decoded))

        work.add_done_callback(parsed)
        # a caller gone drops the parse, if it has not started
        prepared.add_done_callback(lambda f: work.cancel() if f.cancelled() else None)
        return prepared

    def _queue(
        self,
        service: InferenceService,
        info: RequestInfo,
        version: str | None,
        headers: Headers,
        decoded: Any,
        started: float,
        respond: Callable[[Reply | None], None],
    ) -> asyncio.Future[Tensors] | None:
        try:
            call = self.begin(service, info, version, headers, decoded, started)
        except GatewayError as exc:
            respond(error_reply(exc, info.request_id))
            return None
        except Exception:
            log.exception("unexpected error answering an inference call for %s", info.endpoint)
            respond(_internal_error())
            return None

        def done(_: asyncio.Future[Tensors]) -> None:
            try:
                reply = self.end(service, call)
            except Exception:
                log.exception("unexpected error answering an inference call for %s", info.endpoint)
                reply = _internal_error()
            respond(reply)

        call.future.add_done_callback(done)
        return call.future

    # -- the ASGI driver ----------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        name = scope["path_params"]["name"]
        headers: Headers = scope["headers"]
        # checked from the head, admitted once the body is in: a place is for the model's
        # work, not for a caller's upload (as with the gateway's own protocol)
        checked = self.admit(name, headers, hold=False)
        if isinstance(checked, Reply):
            await send_reply(send, checked)
            return
        info = RequestInfo(_request_id(), time.time(), name)
        version = scope["path_params"].get("version")
        gate: Gate | None = None
        try:
            body = await read_body(scope, receive, self.state.max_body_bytes)
            admitted = self.admit(name, headers)
            if isinstance(admitted, Reply):
                await send_reply(send, admitted)
                return
            service, gate = admitted
            if len(body) <= LARGE_BODY_BYTES:
                decoded: Any = self._decode(headers, body, encoded=False)
            else:
                while True:  # again if its version is swapped out meanwhile
                    model = self.choose(service, info, version, headers, started)
                    decoded = await self._prepare_off_loop(
                        model, info, headers, body, False, started
                    )
                    if not decoded.stale:
                        break
            call = self.begin(service, info, version, headers, decoded, started)
            with contextlib.suppress(_ClientGoneError):  # then the future is cancelled
                await self._wait(call.future, receive)
            reply = self.end(service, call)
            if reply is None:
                return
        except GatewayError as exc:
            reply = error_reply(exc, info.request_id)
        except Exception:
            log.exception("unexpected error answering %s", scope.get("path"))
            reply = _internal_error()
        finally:
            if gate is not None:
                gate.release()
        await send_reply(send, reply)

    async def _wait(self, future: asyncio.Future[Tensors], receive: Receive) -> None:
        """Wait for the batch, but give up (leaving the queue) if the client disconnects.

        Listening for the disconnect costs a task, so it starts only once the request has
        waited ``_WATCH_AFTER_S``: most requests are answered before that. The outcome stays
        in ``future`` (which is cancelled when the client goes).
        """
        task = asyncio.current_task()
        assert task is not None
        gone = False
        watcher: asyncio.Future[Any] | None = None

        def on_message(fut: asyncio.Future[Any]) -> None:
            nonlocal gone
            if fut.cancelled() or fut.exception() is not None:
                return
            message = fut.result()
            if isinstance(message, dict) and message.get("type") == "http.disconnect":
                gone = True
                task.cancel()

        def watch() -> None:
            nonlocal watcher
            watcher = asyncio.ensure_future(receive())
            watcher.add_done_callback(on_message)

        handle = asyncio.get_running_loop().call_later(_WATCH_AFTER_S, watch)
        try:
            await asyncio.wait((future,))
        except asyncio.CancelledError:
            future.cancel()
            if gone:
                task.uncancel()
                raise _ClientGoneError from None
            raise
        finally:
            handle.cancel()
            if watcher is not None:
                watcher.remove_done_callback(on_message)
                watcher.cancel()


class InferEndpoint(_InferBase[InferRequest]):
    """``POST /v2/models/{name}[/versions/{version}]/infer``: OIP v2, JSON or binary tensors."""

    def decode(self, headers: Headers, body: bytes) -> InferRequest:
        return parse_infer_body(header(headers, b"inference-header-content-length"), body)

    def offload(self, model: LoadedModel, headers: Headers) -> Callable[[bytes], Any] | None:
        raw_length = header(headers, b"inference-header-content-length")
        if raw_length is not None:
            length = raw_length.strip()
            if length.isdigit() and len(length) <= 20 and int(length) <= LARGE_BODY_BYTES:
                return None  # binary tensors after a small JSON header: copied, not parsed
        return functools.partial(parse_infer_body, raw_length)

    def parse(
        self, model: LoadedModel, info: RequestInfo, headers: Headers, decoded: Any
    ) -> InferRequest:
        request: InferRequest = decoded
        if request.id is not None:
            info.request_id = request.id
        for requested in request.outputs or ():
            if model.signature.output(requested.name) is None:
                known = [o.name for o in model.signature.outputs]
                raise InvalidInputError(f"unknown output {requested.name!r}; the model has {known}")
        return request

    def inputs(self, parsed: InferRequest) -> Tensors:
        return parsed.inputs

    def render(
        self, model: LoadedModel, info: RequestInfo, parsed: InferRequest, outputs: Tensors
    ) -> Reply:
        payload, json_length = render_infer_response(model.name, model.version, parsed, outputs)
        if json_length is None:
            return Reply(200, payload, head=_served_by(model, info) + _JSON_TYPE)
        head = (
            b"%scontent-type: application/octet-stream\r\ninference-header-content-length: %d\r\n"
        )
        return Reply(200, payload, head=head % (_served_by(model, info), json_length))


class PredictEndpoint(_InferBase[Tensors]):
    """``POST /v1/models/{name}:predict``: named features in, one prediction per row out."""

    def parse(
        self, model: LoadedModel, info: RequestInfo, headers: Headers, decoded: Any
    ) -> Tensors:
        # the JSON is decoded here, not in decode(): its rows need the model's features (for
        # a large body this runs on a worker thread too, or in a parse process: ``offload``)
        request_id: str | None
        inputs: Tensors
        if isinstance(decoded, tuple):  # parsed in a parse process
            request_id, inputs = decoded
        else:
            request_id, inputs = parse_instances(
                decoded, model.signature, model.metadata, model.feature_inputs
            )
        if request_id is not None:
            info.request_id = request_id
        return inputs

    def offload(self, model: LoadedModel, headers: Headers) -> Callable[[bytes], Any] | None:
        # the process gets what the rows need of the model: its signature and feature names
        layout = rows_layout(model.signature, model.metadata, model.feature_inputs)
        return functools.partial(parse_rows, layout=layout)

    def inputs(self, parsed: Tensors) -> Tensors:
        return parsed

    def render(
        self, model: LoadedModel, info: RequestInfo, parsed: Tensors, outputs: Tensors
    ) -> Reply:
        body = render_predictions(model.name, model.version, info.request_id, outputs)
        return Reply(200, body, head=_served_by(model, info) + _JSON_TYPE)


def _internal_error_exception() -> GatewayError:
    return GatewayError("internal error in the gateway; see its log")


def _released_first(
    gate: Gate, respond: Callable[[Reply | None], None]
) -> Callable[[Reply | None], None]:
    """``respond``, once the request's place at its gate is given back (first: the answer may
    start the connection's next request, which then finds the place free)."""

    def released_then_respond(reply: Reply | None) -> None:
        gate.release()
        respond(reply)

    return released_then_respond


def _internal_error() -> Reply:
    return error_reply(_internal_error_exception())


_JSON_TYPE = b"content-type: " + JSON + b"\r\n"


def _served_by(model: LoadedModel, info: RequestInfo) -> bytes:
    """The x-request-id, x-model-variant and x-model-version header lines (the request id is
    checked printable when it comes from the caller; variant and version when the model loads)."""
    return b"x-request-id: %s\r\n%s" % (info.request_id.encode(), model.served_by_head)


def json_response(doc: object, status: int = 200) -> Response:
    """A JSON response encoded with orjson."""
    return Response(orjson.dumps(doc), status_code=status, media_type="application/json")


def _json_reply(doc: object, status: int = 200) -> Reply:
    return Reply(status, orjson.dumps(doc), [(b"content-type", JSON)])


def _response(reply: Reply) -> Response:
    """A Reply as a Starlette response (the ASGI routes of the probes)."""
    headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in reply.headers}
    return Response(reply.body, status_code=reply.status, headers=headers)


_LIVE = _json_reply({"live": True})
_READY = _json_reply({"ready": True})


class MetadataEndpoints:
    """The small GET endpoints: health, server and model metadata, readiness, metrics.

    Liveness, readiness and metrics are also ``probes``: synchronous answers that the
    gateway's protocol gives as soon as it reads the request, ahead of any inference work.
    """

    def __init__(self, state: AppState) -> None:
        self.state = state

    def probes(self) -> dict[str, Callable[[], Reply]]:
        """Path -> the answer of the probes the protocol serves without a task or the router."""
        return {
            "/v2/health/live": self.live_reply,
            "/v2/health/ready": self.ready_reply,
            "/metrics": self.metrics_reply,
        }

    def live_reply(self) -> Reply:
        """Alive whenever it can answer: never a matter of load."""
        return _LIVE

    def ready_reply(self) -> Reply:
        """Ready when every endpoint (``server.readiness: all``) or at least one (``any``) has
        a variant that takes traffic loaded (the others' share goes to it); the variants that
        are not loaded are named. Not ready while shedding load, only if
        ``admission.readiness_reports_overload``."""
        service = self.state.service
        if service is None:
            return _json_reply({"ready": False, "error": "the gateway is starting"}, 503)
        problems: dict[str, dict[str, str]] = {}
        down = 0  # endpoints none of whose variants that take traffic serves
        deployments = service.traffic.manager.deployments
        for route in service.traffic.routes.values():
            serves = False
            for variant in route.variants:
                if variant.weight == 0:
                    continue
                deployment = deployments.get((route.endpoint, variant.name))
                if deployment is None or deployment.current is None:
                    error = deployment.last_error if deployment is not None else None
                    problems.setdefault(route.endpoint, {})[variant.name] = error or "loading"
                else:
                    serves = True
            down += not serves
        routes = len(service.traffic.routes)
        ready = down == 0 if self.state.readiness == "all" else routes == 0 or down < routes
        admission = self.state.admission
        if (
            ready
            and admission is not None
            and admission.readiness_reports_overload
            and admission.shedding(time.perf_counter())
        ):
            return _json_reply({"ready": False, "error": "overloaded: shedding load"}, 503)
        if not problems:
            return _READY
        doc: dict[str, object] = {"ready": ready, "not_ready": problems}
        if not ready:
            doc["error"] = f"models not ready: {problems}"
        return _json_reply(doc, 200 if ready else 503)

    def metrics_reply(self) -> Reply:
        body = generate_latest(self.state.metrics.registry)
        return Reply(200, body, [(b"content-type", CONTENT_TYPE_LATEST.encode())])

    async def live(self, request: Request) -> Response:
        return _response(self.live_reply())

    async def ready(self, request: Request) -> Response:
        return _response(self.ready_reply())

    async def server(self, request: Request) -> Response:
        return json_response(
            {
                "name": SERVER_NAME,
                "version": self.state.version,
                "extensions": ["binary_tensor_data"],
            }
        )

    async def model_metadata(self, request: Request) -> Response:
        model = self._model(request)
        signature = model.signature
        versions = sorted(
            {d.current.version for d in service_versions(self.state, model.name) if d.current}
        )
        doc: dict[str, object] = {
            "name": model.name,
            "versions": versions,
            "platform": "onnxruntime_onnx",
            "inputs": [spec.describe() for spec in signature.inputs],
            "outputs": [spec.describe() for spec in signature.outputs],
        }
        metadata = model.metadata
        parameters: dict[str, object] = {
            "ref": str(model.ref),
            "variant": model.variant,
            "sources": model.runtime.version.sources,
            "class_labels": metadata.class_labels,
        }
        if metadata.features:
            parameters["features"] = [
                _feature_doc(f.model_dump(exclude_none=True), model.feature_inputs)
                for f in metadata.features
            ]
        parameters["not_taken_up"] = self._not_taken_up(model.name)
        doc["parameters"] = parameters
        return json_response(doc)

    async def model_ready(self, request: Request) -> Response:
        model = self._model(request)
        return json_response({"name": model.name, "version": model.version, "ready": True})

    async def metrics(self, request: Request) -> Response:
        return _response(self.metrics_reply())

    def _not_taken_up(self, endpoint: str) -> list[dict[str, object]]:
        """The endpoint's variants and shadows whose reference points at a version they could
        not take up: what serves instead, that version, since when and why (as logged); an
        entry lasts exactly as long as its ``gateway_model_not_taken_up`` series."""
        traffic = self.state.require_service().traffic
        manager = traffic.manager
        serving: list[tuple[Deployment, LoadedModel | None]] = [
            *((d, d.current) for d in manager.for_endpoint(endpoint)),
            *((s.deployment, s.deployment.current) for s in traffic.shadows(endpoint)),
        ]
        for waiting in manager.waiting(endpoint):  # a variant's new reference not loaded here
            instead = manager.deployments.get((endpoint, waiting.variant))
            serving.append((waiting, instead.current if instead is not None else None))
        return [
            {
                "variant": deployment.variant,
                "ref": str(deployment.ref),
                "serving": current.version if current is not None else None,
                "version": refused.version,
                "since": refused.since,
                "reason": refused.reason,
            }
            for deployment, current in serving
            if (refused := deployment.not_taken_up) is not None
        ]

    def _model(self, request: Request) -> LoadedModel:
        service = self.state.require_service()
        name, version = request.path_params["name"], request.path_params.get("version")
        if version is None:
            return service.traffic.primary(name)
        return service.traffic.pick(name, version=version)


def _feature_doc(feature: dict[str, object], inputs: dict[str, str]) -> dict[str, object]:
    """A feature's metadata, with the input that takes it where that is named otherwise."""
    name = str(feature["name"])
    if inputs.get(name, name) != name:
        feature["input"] = inputs[name]
    return feature


class FeedbackEndpoint:
    """``POST /v2/models/{name}/feedback``: ground truth for served predictions, answered 202
    once the items are checked and queued on the feedback log."""

    def __init__(self, state: AppState) -> None:
        self.state = state

    async def submit(self, request: Request) -> Response:
        if not self.state.feedback_enabled:
            raise FeedbackDisabledError(
                "feedback is not enabled on this gateway (feedback.enabled)"
            )
        self.state.require_service()
        feedback = self.state.feedback
        if feedback is None:
            raise NotReadyError("the gateway is starting")
        body = await read_body(request.scope, request.receive, self.state.max_body_bytes)
        name, now = request.path_params["name"], time.time()
        if len(body) <= LARGE_BODY_BYTES:
            records = feedback.check(name, body, now)
        else:  # up to max_items items of the client's making: parsed and checked off the loop
            records = await asyncio.to_thread(feedback.check, name, body, now)
        return json_response({"accepted": feedback.log(name, records)}, 202)


def service_versions(state: AppState, endpoint: str) -> list[Deployment]:
    """The deployments serving an endpoint's variants."""
    return state.require_service().traffic.manager.for_endpoint(endpoint)
