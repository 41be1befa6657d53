from __future__ import annotations

import argparse
from typing import Any

import httpx
import pytest

from gateway.traffic import add_routes_commands, run_routes_command


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="gateway")
    add_routes_commands(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


@pytest.mark.parametrize(
    "argv",
    [
        ["routes", "--url", "http://gw:9", "--token", "t", "show", "e"],
        ["routes", "show", "e", "--url", "http://gw:9", "--token", "t"],
        ["routes", "--url", "http://gw:9", "show", "--token", "t", "e"],
    ],
)
def test_global_options_go_before_or_after_the_action(argv: list[str]) -> None:
    args = parse(argv)
    assert (args.url, args.token, args.action, args.endpoint) == ("http://gw:9", "t", "show", "e")


def test_url_and_token_default_to_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_URL", "http://from-env:1")
    monkeypatch.setenv("GATEWAY_ADMIN_TOKEN", "env-token")
    args = parse(["routes", "set", "e", "a=90", "b=10"])
    assert (args.url, args.token) == ("http://from-env:1", "env-token")
    assert parse(["routes", "set", "e", "a=1", "--token", "given"]).token == "given"


def test_canary_is_removed_or_needs_a_variant_and_a_baseline(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert parse(["routes", "canary", "e", "--remove"]).remove
    # nothing listens on port 9: a complete rule would fail to connect (1); this one is
    # refused before any request (2)
    args = parse(["routes", "--url", "http://127.0.0.1:9", "canary", "e", "v"])
    assert run_routes_command(args) == 2
    assert "canary needs VARIANT and --baseline (or --remove)" in capsys.readouterr().err


def test_a_url_httpx_cannot_parse_or_an_answer_without_json_is_named(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert run_routes_command(parse(["routes", "--url", "http://[::1", "show"])) == 2
    assert "invalid --url 'http://[::1'" in capsys.readouterr().err

    def html(self: httpx.Client, *args: object, **kwargs: object) -> httpx.Response:
        return httpx.Response(200, text="<html>a proxy's page</html>")

    monkeypatch.setattr(httpx.Client, "request", html)
    assert run_routes_command(parse(["routes", "--url", "http://gw:9", "show"])) == 1
    assert "answered 200 without JSON" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["set", "e", "a=x"], "expected VARIANT=PERCENT (a whole number), got 'a=x'"),
        (["set", "e", "=50"], "expected VARIANT=PERCENT (a whole number), got '=50'"),
        (["set", "e", "a=²"], "got 'a=²'"),
        (["canary", "e", "v", "--baseline", "b", "--steps", "5,x"], "--steps: expected whole"),
    ],
)
def test_malformed_percentages_are_named_before_any_request(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    # nothing listens on port 9: a request would fail with 1; these are refused with 2
    assert run_routes_command(parse(["routes", "--url", "http://127.0.0.1:9", *argv])) == 2
    assert message in capsys.readouterr().err


def test_a_shadow_change_keeps_one_another_operator_made_meanwhile(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The shadow action reads the route's shadows and writes the whole list back. Without
    # If-Match, a shadow another operator added between the read and the write was dropped.
    route: dict[str, Any] = {"revision": 4, "shadows": []}
    reads = 0

    def serve(self: httpx.Client, method: str, url: object, **kwargs: Any) -> httpx.Response:
        nonlocal reads
        if method == "GET":
            reads += 1
            answer = httpx.Response(200, json=route, headers={"etag": f'"{route["revision"]}"'})
            if reads == 1:  # another operator's shadow lands right after this read
                other = {"name": "theirs", "ref": "m/2", "sample": 0.1}
                route.update(revision=5, shadows=[other])
            return answer
        if (kwargs.get("headers") or {}).get("if-match", f'"{route["revision"]}"') != (
            f'"{route["revision"]}"'
        ):
            return httpx.Response(412, json={"error": "route 'e' is at another revision"})
        route.update(revision=route["revision"] + 1, shadows=kwargs["json"]["shadows"])
        return httpx.Response(200, json=route)

    monkeypatch.setattr(httpx.Client, "request", serve)
    args = parse(["routes", "--url", "http://gw:9", "shadow", "e", "mine", "20%", "--ref", "m/3"])
    assert run_routes_command(args) == 0
    assert [s["name"] for s in route["shadows"]] == ["theirs", "mine"]
