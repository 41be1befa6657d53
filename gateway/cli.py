"""The ``gateway`` command: ``serve``, ``stack``, ``demo``, ``routes`` and ``feedback``."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from gateway.errors import ConfigError

__all__ = ["main"]

log = logging.getLogger("gateway")

_DESCRIPTION = (
    "A model-serving gateway: serve ONNX models over the Open Inference Protocol v2 (serve), "
    "run the demo stack with its broker, drift monitor and retraining worker (stack, what "
    "'make serve' runs), "
    "register the demo model (demo), show and change traffic routes (routes). "
    "'gateway COMMAND --help' tells more."
)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``gateway`` command."""
    # Imported here, not with the module: a spawned process (a parse process, a worker) runs
    # its parent's main script again, and the ``gateway`` script imports this module; at the
    # top, they would load the whole server, onnxruntime included, into every such process.
    from gateway.feedback_client import add_feedback_command, run_feedback_command
    from gateway.serve import serve
    from gateway.settings import load_settings
    from gateway.traffic import add_routes_commands, run_routes_command
    from gateway.workers import gather_spools, supervise, worker_count
    from monitors.settings import SettingsError

    parser = argparse.ArgumentParser(prog="gateway", description=_DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True)
    serve_cmd = sub.add_parser("serve", help="serve the models named in the config file")
    serve_cmd.add_argument("--config", type=Path, help="YAML or TOML config file")
    serve_cmd.add_argument("--host", help="override server.host")
    serve_cmd.add_argument("--port", type=int, help="override server.port")
    serve_cmd.add_argument(
        "--workers",
        type=_workers,
        help="override server.workers: worker processes sharing the port (N, or auto: one per "
        "usable core)",
    )
    serve_cmd.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])
    demo_cmd = sub.add_parser("demo", help="train and register the demo model (needs [demo])")
    demo_cmd.add_argument("--registry", type=Path, required=True, help="local registry folder")
    stack_cmd = sub.add_parser(
        "stack", help="demo model, embedded broker, monitor and gateway together (make serve)"
    )
    stack_cmd.add_argument("--config", type=Path, required=True, help="gateway config file")
    stack_cmd.add_argument("--monitor-config", type=Path, help="drift monitor config file")
    stack_cmd.add_argument("--port", type=int, help="override the gateway's server.port")
    stack_cmd.add_argument("--monitor-port", type=int, help="override the monitor's http.port")
    stack_cmd.add_argument("--broker-port", type=int, default=9092, help="the embedded broker's")
    stack_cmd.add_argument("--retrain-config", type=Path, help="retraining worker config file")
    stack_cmd.add_argument("--retrain-port", type=int, help="override the worker's http.port")
    add_routes_commands(sub)
    add_feedback_command(sub)
    args = parser.parse_args(argv)
    if args.command == "routes":
        return run_routes_command(args)
    if args.command == "feedback":
        return run_feedback_command(args)
    logging.basicConfig(
        level=getattr(logging, getattr(args, "log_level", "info").upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # aiokafka logs each reconnect attempt at ERROR, ten a second while a broker is down; the
    # feature log reports outages and recoveries itself.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    if args.command == "stack":
        from gateway.stack import run_stack
        from monitors.broker import BrokerError

        try:
            return run_stack(
                args.config,
                args.monitor_config,
                args.broker_port,
                args.port,
                args.monitor_port,
                retrain_config=args.retrain_config,
                retrain_port=args.retrain_port,
            )
        except (ConfigError, SettingsError) as exc:
            print(f"gateway: {exc}", file=sys.stderr)
            return 2
        except BrokerError as exc:  # the embedded broker did not start
            print(f"gateway: {exc}", file=sys.stderr)
            return 1
    if args.command == "demo":
        from gateway.demo import DEMO_MODEL, build_demo_registry

        try:
            registry = build_demo_registry(args.registry)
        except OSError as exc:  # a file in the way, a read-only folder
            why = exc.strerror or exc
            print(
                f"gateway demo: cannot write the registry at {args.registry}: {why}",
                file=sys.stderr,
            )
            return 2
        print(
            f"{DEMO_MODEL}: versions {registry.versions(DEMO_MODEL)}, "
            f"aliases {registry.aliases(DEMO_MODEL)} in {args.registry}"
        )
        return 0
    overrides = {}
    if args.host:
        overrides["server__host"] = args.host
    if args.port is not None:
        overrides["server__port"] = args.port
    if args.workers is not None:
        overrides["server__workers"] = args.workers
    try:
        settings = load_settings(args.config, **overrides)
    except ConfigError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 2
    if not settings.models and not settings.routes and not settings.control.enabled:
        print(
            "gateway: invalid configuration: models/routes: at least one endpoint is needed",
            file=sys.stderr,
        )
        return 2
    workers = worker_count(settings.server.workers)
    gather_spools(settings, workers)
    if workers > 1:
        return supervise(settings, workers, args.log_level)
    try:
        serve(settings, args.log_level)
    except ConfigError as exc:  # found only as it starts: a port in use
        print(f"gateway: {exc}", file=sys.stderr)
        return 2
    return 0


def _workers(value: str) -> int | str:
    if value == "auto":
        return value
    try:
        count = int(value)
    except ValueError:
        count = 0
    if count < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1 or auto, got {value!r}")
    return count
