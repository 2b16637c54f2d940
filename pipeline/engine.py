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
holds the Beam arguments), yields the Beam arguments that send every Beam stage to them, and stops
them and their workers afterwards. The job service's log (beam-job-service.log in the run directory)
records each job it ran: jobs_completed() counts them.
"""
from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from typing import Iterator, List

START_SECONDS = 60


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _wait_for_port(proc: subprocess.Popen, port: int, what: str, log_path: str) -> None:
    end = time.time() + START_SECONDS
    while time.time() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"Beam's {what} exited with status {proc.returncode} while starting; log: {log_path}")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError(f"Beam's {what} did not listen on port {port} within {START_SECONDS} s; log: {log_path}")


def _die_with_parent() -> None:
    """In the service's process before it starts: SIGTERM it when the pipeline's process dies, even
    by SIGKILL, so that no service outlives its run holding the ports (Linux's PR_SET_PDEATHSIG).
    Its workers end when their control stream to the job service breaks."""
    import ctypes
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


def args(cfg, job_port: int, pool_port: int) -> List[str]:
    r = cfg.runner
    return ["--runner=PortableRunner", f"--job_endpoint=localhost:{job_port}",
            "--environment_type=EXTERNAL", f"--environment_config=localhost:{pool_port}",
            f"--direct_num_workers={r.direct_num_workers}"]


@contextlib.contextmanager
def portable(cfg, run_dir: str) -> Iterator[List[str]]:
    """Starts the job service and the worker pool; yields the Beam arguments for them."""
    r = cfg.runner
    job_port, pool_port = r.portable_job_port, r.portable_pool_port
    for port, name in ((job_port, "runner.portable_job_port"), (pool_port, "runner.portable_pool_port")):
        if not _port_is_free(port):
            raise RuntimeError(f"engine portable: port {port} ({name}) is in use: another run's Beam services, "
                               f"or set {name} to a free port")
    os.makedirs(run_dir, exist_ok=True)
    log_path = os.path.join(run_dir, "beam-job-service.log")
    pool_log_path = os.path.join(run_dir, "beam-worker-pool.log")
    staging = os.path.join(run_dir, "beam-staging")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    services = []
    with open(log_path, "a") as log, open(pool_log_path, "a") as pool_log:
        try:
            services.append(subprocess.Popen(
                [sys.executable, "-m", "apache_beam.runners.worker.worker_pool_main", f"--service_port={pool_port}"],
                stdout=pool_log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                start_new_session=True, preexec_fn=_die_with_parent))
            services.append(subprocess.Popen(
                [sys.executable, "-m", "collabfeat.pipeline.job_service", f"--port={job_port}",
                 f"--staging_dir={staging}"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True,
                preexec_fn=_die_with_parent))
            _wait_for_port(services[0], pool_port, "worker pool", pool_log_path)
            _wait_for_port(services[1], job_port, "job service", log_path)
            yield args(cfg, job_port, pool_port)
        finally:
            for proc in reversed(services):
                _stop(proc)


@contextlib.contextmanager
def started(cfg, run_dir: str) -> Iterator[List[str]]:
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
