"""`collabfeat serve` in a child process on a free loopback port (for tests and benchmarks)."""

from __future__ import annotations

import subprocess
import sys
import tempfile


class ServerProcess:
    """`collabfeat serve` in a child process on a free loopback port."""

    def __init__(self, base_path: str, *extra: str):
        self.log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "collabfeat",
                "serve",
                "--model-base-path",
                base_path,
                "--port",
                "0",
                "--set",
                "serving.poll_seconds=0.3",
                *extra,
            ],
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
        )
        line = self.proc.stdout.readline()  # "collabfeat serving on 127.0.0.1:PORT ..."
        if "serving on" not in line:
            self.stop()
            raise RuntimeError(f"the server did not start: {line!r}\n{open(self.log.name).read()[-3000:]}")
        self.address = line.split()[3]

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode
