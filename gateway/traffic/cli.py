"""``gateway routes ...``: the operator's command line over the admin API."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import httpx

__all__ = ["add_routes_commands", "run_routes_command"]

_ATTEMPTS = 5  # a read-modify-write change made again on newer state at most this often


def add_routes_commands(sub: Any) -> None:
    """Add ``routes`` and its sub-commands to the ``gateway`` parser."""
    # --url and --token go before or after the action: every action's parser takes them too,
    # with no default of its own, so one given before the action is not reset after it.
    routes = sub.add_parser("routes", help="show and change traffic routes (admin API)")
    options = argparse.ArgumentParser(add_help=False)
    for parser, url, token in (
        (routes, os.environ.get("GATEWAY_URL", "http://127.0.0.1:8080"),
         os.environ.get("GATEWAY_ADMIN_TOKEN")),
        (options, argparse.SUPPRESS, argparse.SUPPRESS),
    ):  # fmt: skip
        parser.add_argument("--url", default=url, help="the gateway (default: $GATEWAY_URL)")
        parser.add_argument(
            "--token", default=token, help="admin bearer token (default: $GATEWAY_ADMIN_TOKEN)"
        )
    actions = routes.add_subparsers(dest="action", required=True)
    show = actions.add_parser("show", parents=[options], help="print routes")
    show.add_argument("endpoint", nargs="?")
    set_cmd = actions.add_parser(
        "set", parents=[options], help="set weights: gateway routes set fraud a=90 b=10"
    )
    set_cmd.add_argument("endpoint")
    set_cmd.add_argument("weights", nargs="+", metavar="VARIANT=PERCENT")
    shadow = actions.add_parser(
        "shadow",
        parents=[options],
        help="shadow a share of traffic: gateway routes shadow fraud cand 20%% --ref m/7",
    )
    shadow.add_argument("endpoint")
    shadow.add_argument("name")
    shadow.add_argument("share", help="e.g. 20%% or 0.2; 0 removes the shadow")
    shadow.add_argument("--ref", help="registry reference of the shadow (needed when new)")
    canary = actions.add_parser(
        "canary",
        parents=[options],
        help="ramp a variant with automatic rollback; --remove stops it",
    )
    canary.add_argument("endpoint")
    canary.add_argument("variant", nargs="?", help="the variant to ramp (not with --remove)")
    canary.add_argument("--baseline", help="the variant it is compared with (required)")
    canary.add_argument("--remove", action="store_true", help="remove the endpoint's canary rule")
    canary.add_argument("--steps", default="5,25,50,100", help="percent steps, comma separated")
    canary.add_argument("--interval", type=float, default=60.0, help="seconds between steps")
    canary.add_argument("--window", type=float, default=60.0, help="seconds of evidence")
    canary.add_argument("--min-requests", type=int, default=50)
    canary.add_argument("--max-error-increase", type=float, default=0.01)
    canary.add_argument("--max-p99-ratio", type=float, default=1.5)
    history = actions.add_parser(
        "history", parents=[options], help="the audit trail of route changes"
    )
    history.add_argument("endpoint", nargs="?")
    history.add_argument("--limit", type=int, default=20)


def _percents(text: str) -> list[int]:
    """``--steps 5,25,50,100`` as whole percentages."""
    steps = [step.strip().rstrip("%") for step in text.split(",")]
    if not all(step.isascii() and step.isdigit() for step in steps):
        raise ValueError(f"--steps: expected whole percentages such as 5,25,50,100, got {text!r}")
    return [int(step) for step in steps]


def run_routes_command(args: argparse.Namespace) -> int:
    """Run one ``gateway routes`` action; print JSON; exit 1 with the server's error."""
    headers = {"authorization": f"Bearer {args.token}"} if args.token else {}
    try:
        client = httpx.Client(base_url=args.url, headers=headers, timeout=60)
    except httpx.InvalidURL as exc:  # not an HTTPError: a URL httpx cannot parse
        print(f"gateway routes: invalid --url {args.url!r}: {exc}", file=sys.stderr)
        return 2
    with client:
        try:
            response = _call(client, args)
        except (ValueError, KeyError, httpx.InvalidURL) as exc:
            print(f"gateway routes: {exc}", file=sys.stderr)
            return 2
        except httpx.HTTPError as exc:
            print(f"gateway routes: cannot reach {args.url}: {exc}", file=sys.stderr)
            return 1
    if response.status_code >= 400:
        try:
            message = response.json().get("error", response.text)
        except ValueError:
            message = response.text
        if response.status_code == 401 and not args.token:
            message += " (give --token or set GATEWAY_ADMIN_TOKEN)"
        print(f"gateway routes: {response.status_code}: {message}", file=sys.stderr)
        return 1
    try:
        doc = response.json()
    except ValueError:  # something else answered at that URL
        print(
            f"gateway routes: {args.url} answered {response.status_code} without JSON: "
            f"{response.text[:200]!r}",
            file=sys.stderr,
        )
        return 1
    print(json.dumps(doc, indent=2))
    return 0


def _call(client: httpx.Client, args: argparse.Namespace) -> httpx.Response:
    path = f"/admin/routes/{args.endpoint}" if getattr(args, "endpoint", None) else "/admin/routes"
    if args.action == "show":
        return client.get(path)
    if args.action == "history":
        params: dict[str, Any] = {"limit": args.limit}
        if args.endpoint:
            params["endpoint"] = args.endpoint
        return client.get("/admin/history", params=params)
    if args.action == "set":
        weights = {}
        for item in args.weights:
            name, _, value = item.partition("=")
            percent = value.rstrip("%")
            if not name or not (percent.isascii() and percent.isdigit()):
                raise ValueError(f"expected VARIANT=PERCENT (a whole number), got {item!r}")
            weights[name] = int(percent)
        return client.patch(path, json={"weights": weights})
    if args.action == "shadow":
        for _ in range(_ATTEMPTS):
            response = _shadow(client, path, args)
            if response.status_code != 412:
                break
        return response
    if args.action == "canary":
        if args.remove:
            return client.patch(path, json={"canary": None})
        if args.variant is None or args.baseline is None:
            raise ValueError("canary needs VARIANT and --baseline (or --remove)")
        rule = {
            "variant": args.variant,
            "baseline": args.baseline,
            "steps": _percents(args.steps),
            "interval_s": args.interval,
            "window_s": args.window,
            "min_requests": args.min_requests,
            "max_error_rate_increase": args.max_error_increase,
            "max_p99_ratio": args.max_p99_ratio,
        }
        return client.patch(path, json={"canary": rule})
    raise ValueError(f"unknown action {args.action}")


def _shadow(client: httpx.Client, path: str, args: argparse.Namespace) -> httpx.Response:
    """Add, change or remove one shadow in the route's list, on the revision it was read at
    (``If-Match``: 412 when another change came between, which ``_call`` makes again)."""
    current = client.get(path)
    if current.status_code >= 400:
        return current
    share = float(args.share.rstrip("%")) / (100 if args.share.endswith("%") else 1)
    shadows = [s for s in current.json()["shadows"] if s["name"] != args.name]
    if share > 0:
        existing = next((s for s in current.json()["shadows"] if s["name"] == args.name), None)
        ref = args.ref or (existing or {}).get("ref")
        if ref is None:
            raise ValueError(f"shadow {args.name!r} is new: give its --ref")
        shadows.append({**(existing or {}), "name": args.name, "ref": ref, "sample": share})
    etag = current.headers.get("etag")
    headers = {"if-match": etag} if etag is not None else {}
    return client.patch(path, json={"shadows": shadows}, headers=headers)
