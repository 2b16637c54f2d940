"""Where the Beam stages run (runner.engine).

direct     Beam's DirectRunner in the pipeline's process, with runner.direct_num_workers worker
           processes (runner.direct_running_mode).
portable   Beam's portability framework, the path Flink, Spark and Dataflow take: a job service
           (Beam's local one, pipeline/job_service.py) receives each Beam stage as a portable
           pipeline proto through the Job API, and runs it on runner.direct_num_workers SDK workers
           in processes of their own, started by a worker pool
           (apache_beam.runners.worker.worker_pool_main, an EXTERNAL environment) and reached only
           through the Fn API. Anything that breaks on a
           cluster engine (an unpicklable DoFn, a transform without a portable translation, state
           that only lives in the driver) breaks here too.

portable() starts both services on the configured loopback ports (fixed, because TFX's cache key
holds the Beam arguments; by default below Linux's ephemeral range, where no port-0 server or
outgoing connection can take them while the services start), waits for each to say it listens,
yields the Beam arguments that send every Beam stage to them, and stops them and their workers
afterwards. The job service's log (beam-job-service.log in the run directory) records each job it
ran: jobs_completed() counts them.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

START_SECONDS = 60
# Beam's worker pool (apache_beam.runners.worker.worker_pool_main) with its log lines shown: without a
# handler, its "Started worker pool servicer" line, which says the pool has bound its port, is lost.
POOL_MAIN = (
    "import logging, sys; logging.basicConfig(level=logging.INFO); "
    "from apache_beam.runners.worker import worker_pool_main; worker_pool_main.main(sys.argv[1:])"
)


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _tail(path: str, lines: int = 5) -> str:
    try:
        with open(path, errors="replace") as f:
            return " | ".join(line.strip() for line in f.read().splitlines()[-lines:])
    except OSError:
        return ""


def _wait_until_listening(
    proc: subprocess.Popen, port: int, ready: str, what: str, log_path: str, log_from: int
) -> None:
    """Waits for the service's own log line saying it listens on `port`, and for the port to answer.
    An answer on the port alone is not enough: until the service has bound it, another process's
    server can hold the port (then the service fails to bind and exits), and a connection to a port
    in Linux's ephemeral range can even connect to itself. The log is read from byte `log_from` on
    (what this start wrote: the log is appended to run after run)."""
    end = time.time() + START_SECONDS
    pattern = re.compile(ready.format(port=port))
    while time.time() < end:
        if proc.poll() is not None:
            raise RuntimeError(
                f"Beam's {what} exited with status {proc.returncode} while starting on port {port}: "
                f"{_tail(log_path)} (log: {log_path})"
            )
        with open(log_path, errors="replace") as f:
            f.seek(log_from)
            if pattern.search(f.read()):
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                    if s.connect_ex(("127.0.0.1", port)) == 0:
                        return
        time.sleep(0.2)
    raise RuntimeError(f"Beam's {what} did not listen on port {port} within {START_SECONDS} s; log: {log_path}")


def ephemeral_ports() -> range:
    """The ports the kernel hands out to port-0 servers and outgoing connections (Linux's
    ip_local_port_range): a fixed service port in this range can be taken by any process at any time."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low, high = map(int, f.read().split())
        return range(low, high + 1)
    except (OSError, ValueError):
        return range(32768, 61000)


def spare_ports(n: int, seed=None) -> list[int]:
    """n free loopback ports below the ephemeral range (for runs side by side: tests, benchmarks)."""

    rng, low = random.Random(seed), 10000
    high = max(low + n, min(ephemeral_ports().start, 65536))
    ports: list[int] = []
    while len(ports) < n:
        port = rng.randrange(low, high)
        if port not in ports and _port_is_free(port):
            ports.append(port)
    return ports


def _die_with_parent() -> None:
    """In the service's process before it starts: SIGTERM it when the pipeline's process dies, even
    by SIGKILL, so that no service outlives its run holding the ports (Linux's PR_SET_PDEATHSIG).
    Its workers end when their control stream to the job service breaks."""

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)


def _stop(proc: subprocess.Popen) -> None:
    """Ends a service and every process it started (each service leads its own process group)."""
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def args(cfg, job_port: int, pool_port: int) -> list[str]:
    r = cfg.runner
    return [
        "--runner=PortableRunner",
        f"--job_endpoint=localhost:{job_port}",
        "--environment_type=EXTERNAL",
        f"--environment_config=localhost:{pool_port}",
        f"--direct_num_workers={r.direct_num_workers}",
    ]


@contextlib.contextmanager
def portable(cfg, run_dir: str) -> Iterator[list[str]]:
    """Starts the job service and the worker pool; yields the Beam arguments for them."""
    r = cfg.runner
    job_port, pool_port = r.portable_job_port, r.portable_pool_port
    for port, name in ((job_port, "runner.portable_job_port"), (pool_port, "runner.portable_pool_port")):
        if not _port_is_free(port):
            raise RuntimeError(
                f"engine portable: port {port} ({name}) is in use: another run's Beam services, "
                f"or set {name} to a free port"
            )
    os.makedirs(run_dir, exist_ok=True)
    log_path = os.path.join(run_dir, "beam-job-service.log")
    pool_log_path = os.path.join(run_dir, "beam-worker-pool.log")
    staging = os.path.join(run_dir, "beam-staging")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    services = []
    with open(log_path, "a") as log, open(pool_log_path, "a") as pool_log:
        log_from, pool_log_from = log.tell(), pool_log.tell()
        try:
            services.append(
                subprocess.Popen(
                    [sys.executable, "-c", POOL_MAIN, f"--service_port={pool_port}"],
                    stdout=pool_log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=env,
                    start_new_session=True,
                    preexec_fn=_die_with_parent,
                )
            )
            services.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "pipeline.job_service",
                        f"--port={job_port}",
                        f"--staging_dir={staging}",
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=env,
                    start_new_session=True,
                    preexec_fn=_die_with_parent,
                )
            )
            _wait_until_listening(
                services[0],
                pool_port,
                r"Started worker pool servicer at port: localhost:{port}\b",
                "worker pool",
                pool_log_path,
                pool_log_from,
            )
            _wait_until_listening(
                services[1], job_port, r"listening for Beam jobs on port {port}\b", "job service", log_path, log_from
            )
            yield args(cfg, job_port, pool_port)
        finally:
            for proc in reversed(services):
                _stop(proc)


@contextlib.contextmanager
def started(cfg, run_dir: str) -> Iterator[list[str]]:
    """The Beam arguments of runner.engine, with its services running while the pipeline runs."""
    if cfg.runner.engine == "portable":
        with portable(cfg, run_dir) as engine_args:
            yield engine_args
    else:
        yield []


def jobs_completed(run_dir: str) -> int:
    """How many Beam jobs the job service of this run directory has completed (from its log)."""
    path = os.path.join(run_dir, "beam-job-service.log")
    if not os.path.exists(path):
        return 0
    with open(path, errors="replace") as f:
        return len(re.findall(r"Completed job in [\d.]+ seconds with state (?:PipelineState\.)?DONE", f.read()))
