"""Executing a compiled KubeflowV2 pipeline spec here, the way Kubeflow Pipelines runs it.

    collabfeat kubeflow --output pipeline.json --execute-locally ROOT

Kubeflow's launcher runs every task of the spec in the task's container: the container's command and
arguments from the spec's deploymentSpec, with the `{{$}}` placeholder replaced by the task's
ExecutorInput (its parameters, its input artifacts as the producing tasks' outputs, its output
artifacts' URIs under the pipeline root, and the file for its ExecutorOutput). A preCacheCheck hook
(TFX's file-based ExampleGen driver) runs first, with the same input. This module does exactly
that without Docker: the same commands and arguments, each task once the tasks it needs have
completed, with this checkout in place of the image's /app and a pipeline root on local disk
(local_config() sets both, and the data). What it does not do: Kubeflow's caching, retries and
resource requests, or pulling
the image (the environment is this checkout's, which the image is built from).

With runner.engine=portable the spec's Beam arguments send every Beam stage to a Beam job service
(kubeflow/runner.py puts them in); execute() starts that service and its worker pool for the run.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import time
from collections.abc import Callable
from concurrent import futures

from collabfeat import storage
from pipeline import engine
from pipeline.data import prepare_data


class TaskFailed(RuntimeError):
    pass


def _needs(tasks: dict) -> dict[str, set]:
    """Each task's upstream tasks: those it depends on or reads an artifact from."""
    return {
        name: set(t.get("dependentTasks", []))
        | {
            a["taskOutputArtifact"]["producerTask"]
            for a in t.get("inputs", {}).get("artifacts", {}).values()
            if "taskOutputArtifact" in a
        }
        for name, t in tasks.items()
    }


def _parameters(task: dict, root_inputs: dict) -> dict:
    out = {}
    for name, p in task.get("inputs", {}).get("parameters", {}).items():
        if "runtimeValue" in p:
            out[name] = p["runtimeValue"]["constantValue"]
        elif "componentInputParameter" in p:
            out[name] = root_inputs[p["componentInputParameter"]]
        else:
            raise ValueError(f"parameter {name}: neither a constant nor a pipeline input: {p}")
    return out


def _substitute(args: list[str], executor_input: dict) -> list[str]:
    text = json.dumps(executor_input)
    out = []
    for a in args:
        if "{{$" in a and a != "{{$}}":
            raise ValueError(f"placeholder {a!r} is not supported here (only {{{{$}}}}, the whole ExecutorInput)")
        out.append(text if a == "{{$}}" else a)
    return out


def _run(what: str, command: list[str], log_path: str, cwd: str) -> None:
    with open(log_path, "a") as log:
        log.write(f"$ {' '.join(command[:4])} ...\n")
        log.flush()
        done = subprocess.run(command, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        with open(log_path, errors="replace") as f:
            tail = f.read()[-1500:]
        raise TaskFailed(f"{what} exited with status {done.returncode}; log: {log_path}\n{tail}")


def _read_output(path: str) -> dict:
    if not storage.exists(path):
        return {}
    with storage.open(path) as f:
        return json.loads(f.read())


def _task(
    name: str,
    task: dict,
    component: dict,
    executor: dict,
    produced: dict,
    root_inputs: dict,
    root: str,
    cwd: str,
    echo: Callable[[str], None],
) -> dict:
    """Runs one task as Kubeflow's launcher would; -> its output artifacts (as RuntimeArtifact JSON)."""
    task_root = os.path.join(root, name)
    os.makedirs(task_root, exist_ok=True)
    if "importer" in executor:
        imp = executor["importer"]
        if "constantValue" not in imp["artifactUri"]:
            raise ValueError(f"{name}: an importer's URI from a runtime parameter is not supported here")
        return {
            "artifact": {
                "artifacts": [
                    {
                        "name": f"local/{name}/artifact",
                        "type": imp["typeSchema"],
                        "metadata": imp.get("metadata", {}),
                        "uri": imp["artifactUri"]["constantValue"]["stringValue"],
                    }
                ]
            }
        }
    outputs = {}
    for key, definition in component.get("outputDefinitions", {}).get("artifacts", {}).items():
        uri = os.path.join(task_root, key)
        os.makedirs(uri, exist_ok=True)
        outputs[key] = {
            "artifacts": [
                {"name": f"local/{name}/{key}", "type": definition["artifactType"], "uri": uri, "metadata": {}}
            ]
        }
    inputs = {}
    for key, a in task.get("inputs", {}).get("artifacts", {}).items():
        source = a["taskOutputArtifact"]
        inputs[key] = produced[source["producerTask"]][source["outputArtifactKey"]]
    output_file = os.path.join(task_root, "executor_output.json")
    executor_input = {
        "inputs": {"parameters": _parameters(task, root_inputs), "artifacts": inputs},
        "outputs": {"artifacts": outputs, "outputFile": output_file},
    }
    container = executor["container"]
    log_path = os.path.join(task_root, "log.txt")
    started = time.time()
    echo(f"[kubeflow-local] {name} running")

    def recorded(update_uri: bool):  # what the driver or executor wrote: split names, span, ...
        for key, found in _read_output(output_file).get("artifacts", {}).items():
            for mine, theirs in zip(outputs[key]["artifacts"], found["artifacts"]):
                mine["metadata"] = theirs.get("metadata", {})
                if update_uri and theirs.get("uri"):
                    mine["uri"] = theirs["uri"]

    hook = container.get("lifecycle", {}).get("preCacheCheck")
    if hook:  # TFX's ExampleGen driver: span, version and fingerprint of the input files
        _run(
            f"{name}'s preCacheCheck",
            hook["command"] + _substitute(hook.get("args", []), executor_input),
            log_path,
            cwd,
        )
        recorded(update_uri=False)
    _run(name, container["command"] + _substitute(container.get("args", []), executor_input), log_path, cwd)
    recorded(update_uri=True)
    echo(f"[kubeflow-local] {name} complete after {time.time() - started:.0f} s")
    return outputs


def execute_spec(
    spec_path: str, root: str, cwd: str, echo: Callable[[str], None] = print, parallel: int = 2
) -> dict[str, dict]:
    """Executes every task of the compiled spec; -> {task: {output key: [RuntimeArtifact as JSON]}}.
    As on Kubeflow, a task starts as soon as the tasks it needs have completed, up to `parallel` at
    once (a task's container is one process, often a single busy core). Logs: ROOT/<task>/log.txt.
    Raises TaskFailed naming the task, its status and its log, once the tasks running then end."""

    with open(spec_path) as f:
        spec = json.load(f)
    ps = spec.get("pipelineSpec", spec)
    tasks, components = ps["root"]["dag"]["tasks"], ps["components"]
    executors = ps["deploymentSpec"]["executors"]
    root_inputs = {
        k: {"stringValue": v} if isinstance(v, str) else v
        for k, v in spec.get("runtimeConfig", {}).get("parameters", {}).items()
    }
    needs = _needs(tasks)
    produced: dict[str, dict] = {}
    running: dict[futures.Future, str] = {}
    failure = None
    with futures.ThreadPoolExecutor(max(1, parallel)) as pool:
        while (needs and failure is None) or running:
            ready = sorted(n for n, d in needs.items() if d <= set(produced)) if failure is None else []
            for name in ready[: max(1, parallel) - len(running)]:
                del needs[name]
                component = components[tasks[name]["componentRef"]["name"]]
                running[
                    pool.submit(
                        _task,
                        name,
                        tasks[name],
                        component,
                        executors[component["executorLabel"]],
                        dict(produced),
                        root_inputs,
                        root,
                        cwd,
                        echo,
                    )
                ] = name
            if not running:
                raise ValueError(f"the spec's tasks depend on each other in a cycle: {sorted(needs)}")
            done, _ = futures.wait(running, return_when=futures.FIRST_COMPLETED)
            for f in done:
                name = running.pop(f)
                try:
                    produced[name] = f.result()
                except Exception as e:  # noqa: BLE001 - the first failure is raised once the others end
                    failure = failure or e
    if failure is not None:
        raise failure
    return produced


def local_config(cfg, root: str):
    """cfg for executing its spec here: this checkout in place of the image's /app, the pipeline root
    ROOT on local disk, local data (the embedded default data generated, as `./run demo` does) and
    absolute paths."""

    repo = os.environ.get("COLLABFEAT_REPO") or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cfg = prepare_data(cfg)
    return dataclasses.replace(
        cfg,
        runner=dataclasses.replace(cfg.runner, container_repo_dir=repo, kubeflow_pipeline_root=os.path.abspath(root)),
        serving=dataclasses.replace(cfg.serving, push_dir=os.path.abspath(cfg.serving.push_dir)),
    )


def execute(cfg, spec_path: str, root: str, cwd: str, echo: Callable[[str], None] = print) -> dict[str, dict]:
    """execute_spec(), with the Beam job service and worker pool running when the spec's Beam
    arguments point at them (runner.engine=portable)."""

    with open(spec_path) as f:
        text = f.read()
    os.makedirs(root, exist_ok=True)
    if cfg.runner.engine == "portable":
        if not re.search(rf"--job_endpoint=localhost:{cfg.runner.portable_job_port}\b", text):
            raise ValueError(
                f"{spec_path} was not compiled with runner.engine=portable: its Beam stages would not "
                f"reach the job service"
            )
        with engine.portable(cfg, root):
            return execute_spec(spec_path, root, cwd, echo)
    return execute_spec(spec_path, root, cwd, echo)
