"""One loaded model: its run call, and what is left of it once it is unloaded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gateway.errors import ModelExecutionError
from gateway.serving import ModelRuntime, RuntimeOptions
from gateway.serving.runtime import release_memory
from registry_client import LocalRegistry


async def test_an_unloaded_runtime_refuses_to_run_and_holds_no_session(
    demo_registry: Path,
) -> None:
    version = await LocalRegistry(demo_registry).fetch("breast_cancer", "1")
    runtime = ModelRuntime(version, RuntimeOptions())
    rows = {"input": np.zeros((2, 30), dtype=np.float32)}
    assert runtime.run(rows)["label"].shape == (2,)
    runtime.close()
    release_memory()  # a no-op where the C library has no malloc_trim
    with pytest.raises(ModelExecutionError, match="version 1 is unloaded"):
        runtime.run(rows)
