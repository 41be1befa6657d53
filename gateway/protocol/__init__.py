"""Wire formats: Open Inference Protocol v2 (JSON and binary tensors) and the simple JSON form."""

from gateway.protocol.encoding import decode_body
from gateway.protocol.simple import (
    RowsLayout,
    parse_instances,
    parse_rows,
    render_predictions,
    rows_layout,
)
from gateway.protocol.v2 import (
    InferRequest,
    RequestedOutput,
    parse_infer_body,
    parse_infer_request,
    render_infer_response,
)

__all__ = [
    "InferRequest",
    "RequestedOutput",
    "RowsLayout",
    "decode_body",
    "parse_infer_body",
    "parse_infer_request",
    "parse_instances",
    "parse_rows",
    "render_infer_response",
    "render_predictions",
    "rows_layout",
]
