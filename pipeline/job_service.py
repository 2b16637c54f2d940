"""Beam's local job service (apache_beam.runners.portability.local_job_service), with one change:
a job runs on as many SDK workers as its pipeline options ask (--direct_num_workers), where Beam's
own runs every job on one. The workers come from the EXTERNAL worker pool the job names, each in a
process of its own (pipeline/engine.py).

    python -m pipeline.job_service --port 8099 [--staging_dir DIR]
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time

from apache_beam.options.pipeline_options import DirectOptions
from apache_beam.portability.api import beam_job_api_pb2
from apache_beam.runners.portability import local_job_service
from apache_beam.runners.portability.fn_api_runner import fn_runner

log = logging.getLogger("collabfeat.job_service")


class Job(local_job_service.BeamJob):
    def _invoke_runner(self):
        self.set_state(beam_job_api_pb2.JobState.RUNNING)
        options = self.pipeline_options()
        runner = fn_runner.FnApiRunner(provision_info=self._provision_info)
        runner._num_workers = max(1, int(options.view_as(DirectOptions).direct_num_workers or 1))  # a string here
        log.info("job %s: %s on %d SDK workers", self._job_id, self._provision_info.job_name, runner._num_workers)
        return runner.run_via_runner_api(self._pipeline_proto, options)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="pipeline.job_service")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--staging_dir")
    args = p.parse_args(argv)
    servicer = local_job_service.LocalJobServicer(args.staging_dir, beam_job_type=Job)
    port = servicer.start_grpc_server(args.port)
    log.info("listening for Beam jobs on port %d", port)
    try:
        while True:
            time.sleep(3600)
    finally:
        servicer.stop()


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    logging.basicConfig(level=logging.INFO)
    main()
