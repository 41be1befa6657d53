"""Streaming drift monitor: reads the inference log from Kafka, judges windows against the
models' reference profiles, keeps their history, calls webhooks (README: drift monitor)."""

__all__: list[str] = []
