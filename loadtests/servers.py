"""Reference servers for the benchmarks: bare Starlette apps on uvicorn (uvloop, httptools), and
one bare asyncio protocol.

- ``hello-raw``: answers a constant from an asyncio protocol on uvloop with httptools' parser,
  no ASGI, no framework (about 20 us of CPU a request): far more than the generator can send
  from one core, so its maximum is the generator's own ceiling.
- ``hello``: answers a constant from Starlette; the ceiling of Python ASGI serving.
- ``baseline-raw``: the same work as ``baseline`` (parse, run alone, encode) from a bare asyncio
  protocol on uvloop with httptools' parser: no ASGI, no framework, no checks, no metrics. The
  least a Python server on this stack spends to answer one inference request at a time: a
  floor under what any per-request design here can reach.
- ``baseline``: the per-request baseline: parses an OIP v2 JSON body with orjson, runs the same
  onnxruntime session (one thread) for that request alone, answers OIP v2 JSON. The session runs
  inline on the event loop, which for a sub-millisecond model is the fastest a per-request
  server gets (a thread hand-off costs more than the model).

``python -m loadtests.servers baseline --model FILE --port P``
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable

import httptools
import numpy as np
import onnxruntime as ort
import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

__all__ = ["baseline_app", "hello_app"]

_DTYPES = {"FP32": np.float32, "FP64": np.float64, "INT64": np.int64, "INT32": np.int32}


_HELLO = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n"


class _RawHello(asyncio.Protocol):
    """Answers every request, once its body is in, with ``{"ok":true}``."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.parser = httptools.HttpRequestParser(self)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.close()

    def on_message_complete(self) -> None:
        self.transport.write(_HELLO + b'{"ok":true}')


class _RawInfer(asyncio.Protocol):
    """``baseline``'s inference with nothing around it: an OIP v2 JSON body parsed, the session
    run on it alone, the outputs encoded, one write; ``GET /v2/health/ready`` answers ready."""

    def __init__(self, infer: _Infer) -> None:
        self.infer = infer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.body: list[bytes] = []

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.close()

    def on_url(self, url: bytes) -> None:
        self.url = url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        body, self.body = b"".join(self.body), []
        if self.parser.get_method() != b"POST":
            answer = b'{"ready":true}'
        else:  # /v2/models/{name}/infer
            answer = self.infer(self.url.split(b"/")[3].decode(), body)
        self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                             b"content-length: %d\r\n\r\n%b" % (len(answer), answer))  # fmt: skip


_Infer = Callable[[str, bytes], bytes]


def _inference(model_path: str) -> _Infer:
    """One request's inference as ``baseline`` does it: OIP v2 JSON in, OIP v2 JSON out."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(model_path, options, providers=["CPUExecutionProvider"])
    output_names = [o.name for o in session.get_outputs()]

    def infer(model_name: str, body: bytes) -> bytes:
        doc = orjson.loads(body)
        feeds = {
            t["name"]: np.asarray(t["data"], dtype=_DTYPES[t["datatype"]]).reshape(t["shape"])
            for t in doc["inputs"]
        }
        results = session.run(output_names, feeds)
        outputs = [
            {"name": n, "datatype": "FP32" if r.dtype == np.float32 else "INT64",
             "shape": list(r.shape), "data": r.reshape(-1)}
            for n, r in zip(output_names, results, strict=True)
        ]  # fmt: skip
        return orjson.dumps(
            {"model_name": model_name, "outputs": outputs}, option=orjson.OPT_SERIALIZE_NUMPY
        )

    return infer


async def _serve_raw(port: int, protocol: Callable[[], asyncio.Protocol]) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(protocol, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


def hello_app() -> Starlette:
    async def hello(request: Request) -> Response:
        await request.body()
        return Response(b'{"ok":true}', media_type="application/json")

    return Starlette(routes=[Route("/{path:path}", hello, methods=["GET", "POST"])])


def baseline_app(model_path: str) -> Starlette:
    infer_body = _inference(model_path)

    async def infer(request: Request) -> Response:
        body = infer_body(request.path_params["name"], await request.body())
        return Response(body, media_type="application/json")

    async def ready(request: Request) -> Response:
        return Response(b'{"ready":true}', media_type="application/json")

    return Starlette(
        routes=[
            Route("/v2/models/{name}/infer", infer, methods=["POST"]),
            Route("/v2/health/ready", ready),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("kind", choices=["hello-raw", "hello", "baseline", "baseline-raw"])
    parser.add_argument("--model")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    if args.kind in ("hello-raw", "baseline-raw"):
        import uvloop

        if args.kind == "hello-raw":
            uvloop.run(_serve_raw(args.port, _RawHello))
        else:
            infer = _inference(args.model)
            uvloop.run(_serve_raw(args.port, lambda: _RawInfer(infer)))
        return
    app = hello_app() if args.kind == "hello" else baseline_app(args.model)
    uvicorn.run(app, host="127.0.0.1", port=args.port, loop="uvloop", http="httptools",
                access_log=False, log_level="warning")  # fmt: skip


if __name__ == "__main__":
    main()
