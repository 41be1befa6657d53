"""Admission control below capacity: does the gateway refuse requests it could serve?

The serving benchmark's MLP gateway with the feature log (``--no-log``: without it; CPU 0,
its broker and the generator on CPU 1) is offered fixed single-row rates open loop, each
``--tries`` times for ``--seconds``, after a quiet warm-up, as a client starting up would.
For each try: p99, answered, refused;
after each server: its refusals by reason and its in-flight limit (``/metrics``, read as
``bench_overload`` reads them). Each
``--variant NAME=JSON`` is a gateway whose ``admission`` settings are changed by the JSON
(merged into the defaults); ``default`` is the gateway as shipped. Variants run in turn, in
alternating order between repeats.

``python -m loadtests.bench_admission [--rates 3000 4000 5000] [--variant start32='{"limits":
{"initial_in_flight": 32}}'] [--repeats 2]`` writes ``loadtests/results/admission-<time>.json``
and prints a table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from typing import Any

from loadtests.bench_overload import admission_stats
from loadtests.bench_serving import RESULTS, prepare, running
from loadtests.machine import machine_info
from loadtests.openloop import run
from loadtests.scenarios import request_body


def _variant(text: str) -> tuple[str, dict[str, Any]]:
    name, _, settings = text.partition("=")
    if not name or not settings:
        raise argparse.ArgumentTypeError(f"expected NAME=JSON, got {text!r}")
    try:
        changes = json.loads(settings)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"{name}: not JSON: {exc}") from exc
    if not isinstance(changes, dict):
        raise argparse.ArgumentTypeError(f"{name}: the admission changes must be an object")
    return name, changes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rates", type=float, nargs="+", default=[3000, 4000, 5000])
    parser.add_argument("--tries", type=int, default=2, help="runs of each rate in a row")
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--repeats", type=int, default=1, help="server starts per variant")
    parser.add_argument("--no-log", action="store_true", help="the gateway without the log")
    parser.add_argument("--variant", type=_variant, action="append", default=[],
                        help="NAME=JSON: admission settings changed by JSON")  # fmt: skip
    args = parser.parse_args()
    variants = [("default", {}), *args.variant]
    bench = prepare("bench-admission-", "mlp")  # this process (the generator) on CPU 1
    work, registry, files, scenario = bench.work, bench.registry, bench.files, bench.scenario
    wanted = "gateway-batching" if args.no_log else "gateway-batching-logging"
    base = next(s for s in scenario.servers if s.name == wanted)
    body, _ = request_body(32, 1, False)
    out: dict[str, Any] = {"before": machine_info(), "args": {**vars(args), "variant": variants}}
    runs: list[dict[str, Any]] = []
    for repeat in range(args.repeats):
        order = variants if repeat % 2 == 0 else variants[::-1]
        for name, changes in order:
            admission = {**base.gateway.get("admission", {}), **changes}
            server = dataclasses.replace(
                base, name=f"gateway-{name}", gateway={**base.gateway, "admission": admission}
            )
            with running(scenario, server, files, registry, work) as started:
                url = f"{started.base}/v2/models/mlp/infer"
                run(url, body, 200, 1.5)  # quiet warm-up
                steps = []
                for rate in args.rates:
                    for _ in range(args.tries):
                        result = run(url, body, rate, args.seconds)
                        steps.append(result.summary())
                        refused = result.statuses.get("503", 0)
                        p99 = result.percentile_ms(99)
                        print(f"{name} [{repeat + 1}] {rate:.0f}/s: p99 {p99:.1f} ms, refused "
                              f"{refused} of {result.completed}", flush=True)  # fmt: skip
                        time.sleep(0.5)
                state = admission_stats(started.base)
            print(f"{name} [{repeat + 1}] after: {state}", flush=True)
            runs.append({"variant": name, "repeat": repeat, "steps": steps, "after": state})
    out["runs"] = runs
    out["after"] = machine_info()
    path = RESULTS / f"admission-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(out, indent=1))
    print(markdown(runs, args.rates))
    print(f"written {path}")


def markdown(runs: list[dict[str, Any]], rates: list[float]) -> str:
    """Refused of answered per rate (each try), per variant and repeat."""
    head = "| variant, repeat | " + " | ".join(f"{r:,.0f}/s: refused (p99 ms)" for r in rates)
    lines = [head + " | limit after |", "| --- |" + " --- |" * (len(rates) + 1)]
    for entry in runs:
        cells = []
        for rate in rates:
            tries = [s for s in entry["steps"] if s["offered_rate"] == rate]
            cells.append(", ".join(
                f"{s['statuses'].get('503', 0)} ({s['p99_ms']:.1f})" for s in tries))  # fmt: skip
        limit = entry["after"].get("limit")
        lines.append(f"| {entry['variant']}, {entry['repeat'] + 1} | " + " | ".join(cells)
                     + f" | {limit:.0f} |")  # fmt: skip
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
