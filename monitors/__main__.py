"""``python -m monitors run --config FILE``, ``python -m monitors profile build ...`` and
``python -m monitors report --model M --version V [--html FILE]``,
``python -m monitors retrain serve --config FILE`` and ``python -m monitors retrain status``."""

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
    from registry_client import ModelMetadata, Registry


def _run(config: Path | None) -> int:
    from prometheus_client import CollectorRegistry

    from monitors.app import create_status_app
    from monitors.changelog import ChangelogError
    from monitors.http_json import http_server
    from monitors.kafka_security import KafkaSecurityError
    from monitors.metrics import MonitorMetrics
    from monitors.service import MonitorService
    from monitors.settings import SettingsError, load_settings
    from monitors.sockets import listening_socket
    from monitors.state import make_state_dir

    try:
        settings = load_settings(config)
    except SettingsError as exc:
        print(f"monitors: {exc}", file=sys.stderr)
        return 2
    try:
        settings.kafka.security_options()  # its TLS files, read before anything starts
        make_state_dir(settings.state_dir)
        sock = listening_socket(settings.http.host, settings.http.port, "http.port")
    except (KafkaSecurityError, OSError) as exc:
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
    server = http_server(
        create_status_app(service, ground_truth), settings.http.host, settings.http.port
    )

    async def main() -> None:
        http = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started and not http.done():  # noqa: ASYNC110 - uvicorn has no event
            await asyncio.sleep(0.05)
        # uvicorn installs its own handlers when it starts serving; the monitor's replace them,
        # so a signal stops the consumer cleanly (state saved, offsets committed) first.
        loop = asyncio.get_running_loop()

        runs = asyncio.gather(
            service.run(), *([ground_truth.run()] if ground_truth is not None else [])
        )
        # A stop asks the loops to end between polls; one caught in a Kafka call that waits for
        # a broker gone meanwhile (a changelog restore: up to its 60 s timeout) is cancelled
        # after this, so the process still ends within a pod's grace period.
        grace_s = settings.webhook_timeout_s + settings.shutdown_timeout_s + 5.0
        gave_up = False

        def give_up() -> None:
            nonlocal gave_up
            if not runs.done():
                gave_up = True
                logging.getLogger("monitors").error(
                    "still stopping %g s after the signal: cancelled", grace_s
                )
                runs.cancel()

        def stop() -> None:
            service.stop()
            if ground_truth is not None:
                ground_truth.stop()
            loop.call_later(grace_s, give_up)

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop)
        try:
            await runs
        except asyncio.CancelledError:
            if not gave_up:
                raise
        finally:
            server.should_exit = True
            await http

    try:
        asyncio.run(main())
    except ChangelogError as exc:  # the topic cannot be created or reached
        print(f"monitors: {exc}", file=sys.stderr)
        return 1
    finally:
        sock.close()  # uvicorn closes it when it served; not when the start failed before
    return 0


def _profile(args: argparse.Namespace) -> int:
    from monitors.profile import PROFILE_FILE, ProfileError, build_model_profile
    from registry_client import ModelMetadata, RegistryError

    directory = Path(args.registry or ".") / args.model / args.version
    if args.registry is not None and not directory.is_dir():
        print(f"monitors: no model version folder {directory}", file=sys.stderr)
        return 2
    try:
        if args.mlflow_url is None:
            metadata, outputs = ModelMetadata.load(directory), _outputs(directory / "model.onnx")
        else:
            metadata, outputs = asyncio.run(_mlflow_version(args))
        if args.demo:
            from sklearn.datasets import load_breast_cancer

            data = load_breast_cancer()
            columns = {str(n): data.data[:, j] for j, n in enumerate(data.feature_names)}
            columns["prediction:label"] = data.target.astype(float)
        else:
            columns = _read_csv(Path(args.csv))
        profile, ignored = build_model_profile(
            metadata,
            columns,
            outputs=outputs,
            categorical=set(args.categorical),
            bins=args.bins,
        )
    except (ProfileError, RegistryError, OSError) as exc:
        print(f"monitors: {exc}", file=sys.stderr)
        return 2
    if ignored:
        print(f"ignored columns that are neither features nor predictions: {ignored}")
    if args.mlflow_url is None:
        profile.dump(directory)
        print(f"wrote {directory / PROFILE_FILE} ({len(profile.features)} columns)")
        return 0
    return asyncio.run(_store_in_mlflow(args, profile))


def _read_csv(path: Path) -> dict[str, np.ndarray]:
    """A CSV file's columns as text (the profile builder reads them by the declared types)."""
    import csv

    from monitors.profile import ProfileError

    try:
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            rows = list(reader)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ProfileError(f"{path}: not a CSV file of UTF-8 text: {exc}") from exc
    if not header or not rows:
        raise ProfileError(f"{path} holds no header row and data rows")
    columns = {name: np.empty(len(rows), dtype=object) for name in header}
    for j, name in enumerate(header):
        columns[name][:] = [row[j] if j < len(row) else "" for row in rows]
    return columns


def _outputs(model_file: Path) -> list[str] | None:
    """The names of the model's outputs, from its ONNX graph when there is one."""
    if not model_file.is_file():
        return None
    import onnxruntime

    from monitors.profile import ProfileError

    try:
        session = onnxruntime.InferenceSession(str(model_file), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own untyped errors for bad files
        raise ProfileError(f"{model_file}: onnxruntime cannot load it: {exc}") from exc
    return [output.name for output in session.get_outputs()]


def _mlflow_registry(args: argparse.Namespace) -> Registry:
    from registry_client.settings import RegistrySettings, open_registry

    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    return open_registry(
        RegistrySettings(backend="mlflow", mlflow_url=args.mlflow_url, mlflow_token=token)
    )


async def _mlflow_version(args: argparse.Namespace) -> tuple[ModelMetadata, list[str] | None]:
    """The version's metadata (its features and their types) and its outputs, from MLflow."""
    registry = _mlflow_registry(args)
    try:
        version = await registry.fetch(args.model, args.version)
    finally:
        await registry.aclose()
    return version.metadata, _outputs(version.model_file)


async def _store_in_mlflow(args: argparse.Namespace, profile: ModelProfile) -> int:
    from monitors.references import store_profile
    from registry_client import RegistryError

    registry = _mlflow_registry(args)
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


def _report(args: argparse.Namespace) -> int:
    from monitors.pictures import render_html
    from monitors.report import ReportError, load_report, table
    from monitors.settings import SettingsError, load_settings

    try:
        state_dir = args.state_dir
        if state_dir is None and args.url is None:
            state_dir = load_settings(args.config).state_dir
        last = None if args.html else args.last  # the page draws every window kept
        report = load_report(args.model, args.version, state_dir=state_dir, url=args.url, last=last)
        print(table(report, args.last))
        if args.html is not None:
            Path(args.html).write_text(render_html(report, report.window(args.window)))
            print(f"wrote {args.html}")
    except (ReportError, SettingsError, OSError) as exc:
        print(f"monitors: {exc}", file=sys.stderr)
        return 2
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
        "--csv",
        help="training data with a header row: a column per feature the model's metadata "
        "declares, prediction:<output> columns; other columns are ignored",
    )
    source.add_argument("--demo", action="store_true", help="the demo model's training data")
    build.add_argument(
        "--categorical",
        nargs="*",
        default=[],
        help="columns to treat as categorical besides those the metadata declares so",
    )
    build.add_argument("--bins", type=int, default=10)
    report = sub.add_parser(
        "report", help="a model version's windows: a table of features by windows, pictures"
    )
    report.add_argument("--model", required=True)
    report.add_argument("--version", required=True)
    where = report.add_mutually_exclusive_group()
    where.add_argument("--config", type=Path, help="the monitor's config (its state_dir)")
    where.add_argument("--state-dir", help="the monitor's state_dir")
    where.add_argument("--url", help="a running monitor, e.g. http://127.0.0.1:8090")
    report.add_argument(
        "--last", type=int, default=12, help="windows in the table, the newest (default 12)"
    )
    report.add_argument("--html", help="also write an HTML page with pictures to this file")
    report.add_argument(
        "--window", type=int, help="the window (seq) whose histograms the page draws"
    )
    retrain = sub.add_parser("retrain", help="the retraining worker")
    retrain_sub = retrain.add_subparsers(dest="action", required=True)
    retrain_serve = retrain_sub.add_parser(
        "serve", help="receive the monitor's events; train, validate, register, roll out"
    )
    retrain_serve.add_argument("--config", type=Path)
    retrain_status = retrain_sub.add_parser("status", help="the worker's jobs")
    source = retrain_status.add_mutually_exclusive_group()
    source.add_argument("--url", help="a running worker, e.g. http://127.0.0.1:8091")
    source.add_argument("--config", type=Path, help="the worker's config (its state_dir)")
    retrain_status.add_argument("--job", help="one job, by its id")
    retrain_status.add_argument("--json", action="store_true", help="print the JSON documents")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request otherwise
    if args.command == "run":
        return _run(args.config)
    if args.command == "report":
        return _report(args)
    if args.command == "retrain":
        from monitors.retrain.serve import serve, status

        if args.action == "serve":
            return serve(args.config)
        if args.url is None and args.config is None:
            args.url = "http://127.0.0.1:8091"
        return status(args.url, args.config, args.job, args.json)
    return _profile(args)


if __name__ == "__main__":
    sys.exit(main())
