"""``gateway`` whose event loop stalls on SIGUSR1, for the health-port test only.

The hook lives here, in the tests, so no setting or environment of a deployed gateway can
turn it on. On SIGUSR1 it writes the monotonic time to ``$STALL_MARKER`` and then holds the
main thread (the event loop's) for ``$STALL_S`` seconds; then it writes ``$STALL_MARKER.done``.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from types import FrameType

from gateway.cli import main


def _stall(signum: int, frame: FrameType | None) -> None:
    marker = Path(os.environ["STALL_MARKER"])
    marker.write_text(repr(time.monotonic()))
    time.sleep(float(os.environ["STALL_S"]))  # the stall itself, not a wait for anything
    Path(f"{marker}.done").write_text(repr(time.monotonic()))


if __name__ == "__main__":
    signal.signal(signal.SIGUSR1, _stall)
    sys.exit(main(sys.argv[1:]))
