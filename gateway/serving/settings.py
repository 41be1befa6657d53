"""Settings of the serving core: onnxruntime sessions and dynamic batching."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["BatchingSettings", "RuntimeSettings"]


class _Group(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RuntimeSettings(_Group):
    intra_op_threads: int = Field(default=1, ge=0)
    inter_op_threads: int = Field(default=1, ge=0)
    # onnxruntime execution providers in order of preference; unavailable ones are skipped,
    # so asking for CUDAExecutionProvider falls back to CPU where onnxruntime has no CUDA.
    execution_providers: list[str] = Field(default_factory=lambda: ["CPUExecutionProvider"])
    # Threads that run batches off the event loop, shared by all models.
    worker_threads: int = Field(default=2, ge=1)
    # How often Python may move the GIL between the event loop and the batch threads.
    gil_switch_interval_s: float = Field(default=0.0002, gt=0, le=0.1)
    # A primary model whose warm-up at its largest batch took at most this long runs its
    # batches on the event loop: the thread hand-off would cost more than the model (0: never).
    inline_run_max_s: float = Field(default=0.0005, ge=0, le=0.01)


class BatchingSettings(_Group):
    enabled: bool = True
    max_batch_size: int = Field(default=64, ge=1)
    max_batch_delay_s: float = Field(default=0.002, ge=0)
    # Close a batch as soon as a pass of the event loop brings no new request, instead of
    # always waiting max_batch_delay_s: light load gets per-request latency, heavy load still
    # fills batches (every pass brings requests). max_batch_delay_s stays the bound.
    close_when_idle: bool = True
    max_queue_size: int = Field(default=2048, ge=1)
    # Deadline of one request, from arrival to answer.
    timeout_s: float = Field(default=2.0, gt=0)
    # Batches of one model that may run at the same time.
    max_concurrent_batches: int = Field(default=1, ge=1)
    warmup_batch_sizes: list[int] | None = None
