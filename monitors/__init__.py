"""Streaming drift monitor (reads the inference log from Kafka). Not built yet: see issue 6."""

__all__: list[str] = []
