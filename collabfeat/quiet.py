"""The console shows the project's own lines: TensorFlow's and absl's start-up messages (oneDNN,
CUDA, "All log messages before absl::InitializeLog() ...") are written by C++ to file descriptor
2 before any Python logging is set up, so they are filtered there. start() puts a pipe in place of
fd 2 (inherited by every child process, Beam's workers included) and a thread copies every line
to the real stderr except NOISE; stop() restores fd 2 and drains the pipe. `--verbose` leaves fd 2
alone.
"""

from __future__ import annotations

import os
import re
import threading

NOISE = re.compile(
    rb"^(WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    rb"|[IWE]\d{4} [\d:.]+ +\d+ \S+:\d+\] )"
)

_state: tuple[int, threading.Thread] | None = None


def keep(line: bytes) -> bool:
    """Whether a line of stderr reaches the console."""
    return not NOISE.match(line)


def _copy(read_fd: int, out_fd: int) -> None:
    with os.fdopen(read_fd, "rb", buffering=0) as pipe:
        pending = b""
        while True:
            chunk = pipe.read(65536)
            if not chunk:
                break
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                if keep(line):
                    os.write(out_fd, line + b"\n")
        if pending and keep(pending):
            os.write(out_fd, pending)


def start() -> None:
    global _state
    if _state is not None:
        return
    real = os.dup(2)
    read_fd, write_fd = os.pipe()
    os.dup2(write_fd, 2)
    os.close(write_fd)
    thread = threading.Thread(target=_copy, args=(read_fd, real), name="collabfeat-quiet", daemon=True)
    thread.start()
    _state = (real, thread)


def stop() -> None:
    """fd 2 back to the real stderr; what was written before is copied out first."""
    global _state
    if _state is None:
        return
    real, thread = _state
    _state = None
    os.dup2(real, 2)  # the pipe's last writer in this process is gone: the thread sees its end
    thread.join(timeout=5)
    os.close(real)
