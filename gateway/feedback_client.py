"""Send ground truth from a CSV file to a gateway's feedback endpoint (``gateway feedback``).

The CSV has a header row: ``id`` (the request id the gateway answered with), optionally ``row``
(of a multi-row request) and ``time`` (seconds since the epoch), and either ``label`` (the
model's first output: a class name, a class index or a number) or ``label:<output>`` columns.
An empty label cell means no label for that output.

Example::

    from gateway.feedback_client import send_feedback_csv
    send_feedback_csv("http://127.0.0.1:8080", "breast_cancer", Path("outcomes.csv"))
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx

__all__ = [
    "FeedbackSendError",
    "add_feedback_command",
    "read_feedback_csv",
    "run_feedback_command",
    "send_feedback",
    "send_feedback_csv",
]


class FeedbackSendError(Exception):
    """The gateway refused a batch of feedback, or could not be reached."""


def read_feedback_csv(path: Path) -> Iterator[dict[str, Any]]:
    """Feedback items, one per CSV row that has a label; raises ValueError on a bad file."""
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        columns = reader.fieldnames or []
        if "id" not in columns:
            raise ValueError(f"{path}: the header has no 'id' column ({columns})")
        outputs = {c: c.partition(":")[2] for c in columns if c.startswith("label:")}
        if "label" not in columns and not outputs:
            raise ValueError(f"{path}: the header has no 'label' or 'label:<output>' column")
        for number, line in enumerate(reader, start=2):
            item: dict[str, Any] = {"id": line["id"]}
            if line.get("row"):
                item["row"] = _integer(line["row"], path, number)
            if line.get("time"):
                item["time"] = float(line["time"])
            if "label" in columns:
                if line["label"] == "":
                    continue
                item["label"] = _value(line["label"])
            else:
                labels = {out: _value(line[c]) for c, out in outputs.items() if line[c] != ""}
                if not labels:
                    continue
                item["labels"] = labels
            yield item


def send_feedback(
    url: str,
    model: str,
    items: Iterator[dict[str, Any]] | Sequence[dict[str, Any]],
    *,
    batch_size: int = 1000,
    timeout_s: float = 30.0,
    client: httpx.Client | None = None,
) -> int:
    """POST ``items`` in bulk requests of ``batch_size``; returns how many were accepted."""
    endpoint = f"{url.rstrip('/')}/v2/models/{model}/feedback"
    http = client or httpx.Client(timeout=timeout_s)
    sent = 0
    try:
        batch: list[dict[str, Any]] = []
        for item in items:
            batch.append(item)
            if len(batch) >= batch_size:
                sent += _post(http, endpoint, batch)
                batch = []
        if batch:
            sent += _post(http, endpoint, batch)
    except FeedbackSendError as exc:
        raise FeedbackSendError(f"{exc} (after {sent} items accepted)") from exc
    finally:
        if client is None:
            http.close()
    return sent


def send_feedback_csv(url: str, model: str, path: Path, batch_size: int = 1000) -> int:
    """Send every labelled row of a CSV file; returns how many items were accepted."""
    return send_feedback(url, model, read_feedback_csv(path), batch_size=batch_size)


def _post(client: httpx.Client, endpoint: str, batch: list[dict[str, Any]]) -> int:
    try:
        response = client.post(endpoint, json={"items": batch})
    except httpx.HTTPError as exc:
        raise FeedbackSendError(f"{endpoint}: {exc}") from exc
    if response.status_code != 202:
        try:
            detail = response.json().get("error", response.text)
        except ValueError:
            detail = response.text
        raise FeedbackSendError(f"{endpoint}: {response.status_code} {detail}")
    accepted: int = response.json()["accepted"]
    return accepted


def _value(text: str) -> int | float | str:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _integer(text: str, path: Path, line: int) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{path}, line {line}: row {text!r} is not an integer") from None


def add_feedback_command(sub: Any) -> None:
    """``gateway feedback --url URL --model M --csv FILE``."""
    cmd = sub.add_parser("feedback", help="send ground truth from a CSV file to a gateway")
    cmd.add_argument("--url", default="http://127.0.0.1:8080", help="the gateway's base URL")
    cmd.add_argument("--model", required=True, help="the endpoint the predictions came from")
    cmd.add_argument("--csv", type=Path, required=True, help="id[,row][,time],label columns")
    cmd.add_argument("--batch-size", type=int, default=1000)


def run_feedback_command(args: argparse.Namespace) -> int:
    """Run ``gateway feedback``; 0 when everything was accepted."""
    try:
        sent = send_feedback_csv(args.url, args.model, args.csv, args.batch_size)
    except (OSError, ValueError, FeedbackSendError) as exc:
        print(f"gateway feedback: {exc}", file=sys.stderr)
        return 1
    print(f"{sent} feedback items accepted")
    return 0
