"""``python -m monitors run --config FILE`` and ``python -m monitors profile build ...``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from monitors.profile import ModelProfile


def _run(config: Path | None) -> int:
    import uvicorn
    from prometheus_client import CollectorRegistry

    from monitors.app import create_status_app
    from monitors.metrics import MonitorMetrics
    from monitors.service import MonitorService
    from monitors.settings import SettingsError, load_settings

    try:
        settings = load_settings(config)
    except SettingsError as exc:
        print(f"monitors: {exc}", file=sys.stderr)
        return 2
    registry = CollectorRegistry()
    service = MonitorService(settings, MonitorMetrics(registry))
    ground_truth = None
    if settings.performance.enabled:
        from monitors.ground_truth import GroundTruthService
        from monitors.performance_metrics import PerformanceMetrics

        # the same webhook targets (and delivery metrics) as drift events
        ground_truth = GroundTruthService(settings, PerformanceMetrics(registry), service.webhooks)
    server = uvicorn.Server(
        uvicorn.Config(
            create_status_app(service, ground_truth),
            host=settings.http.host,
            port=settings.http.port,
            log_level="warning",
            lifespan="off",
        )
    )

    async def main() -> None:
        http = asyncio.create_task(server.serve())
        while not server.started and not http.done():  # noqa: ASYNC110 - uvicorn has no event
            await asyncio.sleep(0.05)
        # uvicorn installs its own handlers when it starts serving; the monitor's replace them,
        # so a signal stops the consumer cleanly (state saved, offsets committed) first.
        loop = asyncio.get_running_loop()

        def stop() -> None:
            service.stop()
            if ground_truth is not None:
                ground_truth.stop()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop)
        try:
            runs = [service.run()] + ([ground_truth.run()] if ground_truth else [])
            await asyncio.gather(*runs)
        finally:
            server.should_exit = True
            await http

    asyncio.run(main())
    return 0


def _profile(args: argparse.Namespace) -> int:
    from monitors.profile import build_profile

    directory = Path(args.registry or ".") / args.model / args.version
    if args.registry is not None and not directory.is_dir():
        print(f"monitors: no model version folder {directory}", file=sys.stderr)
        return 2
    if args.demo:
        from sklearn.datasets import load_breast_cancer

        data = load_breast_cancer()
        columns = {str(n): data.data[:, j] for j, n in enumerate(data.feature_names)}
        columns["prediction:label"] = data.target.astype(float)
    else:
        import csv

        with open(args.csv, newline="") as fh:
            rows = list(csv.DictReader(fh))
        columns = {}
        for name in rows[0]:
            raw = [r[name] for r in rows]
            try:
                columns[name] = np.asarray([float(v) if v != "" else np.nan for v in raw])
            except ValueError:
                columns[name] = np.asarray(raw, dtype=object)
    categorical = {n for n, v in columns.items() if v.dtype == object} | set(args.categorical)
    profile = build_profile(columns, categorical, bins=args.bins)
    if args.mlflow_url is None:
        profile.dump(directory)
        print(f"wrote {directory / 'reference_profile.json'} ({len(columns)} columns)")
        return 0
    return asyncio.run(_store_in_mlflow(args, profile))


async def _store_in_mlflow(args: argparse.Namespace, profile: ModelProfile) -> int:
    from monitors.references import store_profile
    from registry_client import RegistryError
    from registry_client.settings import RegistrySettings, open_registry

    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    registry = open_registry(
        RegistrySettings(backend="mlflow", mlflow_url=args.mlflow_url, mlflow_token=token)
    )
    try:
        where = await store_profile(
            registry, args.model, args.version, profile, inline=args.mlflow_tag
        )
    except RegistryError as exc:
        print(f"monitors: {exc}", file=sys.stderr)
        return 2
    finally:
        await registry.aclose()
    print(f"stored the profile of {args.model} version {args.version} ({where})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m monitors", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="consume the inference log and watch for drift")
    run.add_argument("--config", type=Path)
    profile = sub.add_parser("profile", help="reference profiles")
    profile_sub = profile.add_subparsers(dest="action", required=True)
    build = profile_sub.add_parser("build", help="profile training data into a model version")
    target = build.add_mutually_exclusive_group(required=True)
    target.add_argument("--registry", help="a local registry folder")
    target.add_argument(
        "--mlflow-url", help="an MLflow tracking server (token: $MLFLOW_TRACKING_TOKEN)"
    )
    build.add_argument(
        "--mlflow-tag",
        action="store_true",
        help="store the profile in the version's tag, not as an artifact of its run",
    )
    build.add_argument("--model", required=True)
    build.add_argument("--version", required=True)
    source = build.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--csv", help="training data with a header row (features, and prediction:<output> columns)"
    )
    source.add_argument("--demo", action="store_true", help="the demo model's training data")
    build.add_argument("--categorical", nargs="*", default=[])
    build.add_argument("--bins", type=int, default=10)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    if args.command == "run":
        return _run(args.config)
    return _profile(args)


if __name__ == "__main__":
    sys.exit(main())
