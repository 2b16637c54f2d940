"""A script in a fresh interpreter (nothing of this process's imports or memory), for the peak-memory tests."""

import subprocess
import sys


def last_number(code: str) -> int:
    """Runs `code` with this interpreter and returns the last number it printed."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return int(done.stdout.split()[-1])
