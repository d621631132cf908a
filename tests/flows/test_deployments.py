"""prefect.yaml: its deployments checked statically, then deployed and run on a real Prefect server.

The slow test starts ``prefect server`` on loopback with a throw-away PREFECT_HOME, creates the
``footprints`` process work pool, runs ``prefect --no-prompt deploy --all`` from the repository
root, starts a worker (outside the repository, so the deployment's pull step has to move the flow
run into it), and runs ``segment-bucket/scheduled`` twice on two real scenes with the CLI's
``deployment run --watch``: the first run segments both, the second finds both up to date.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.describe.output_files import OUTPUT_NAMES
from tests.conftest import DEMO_SCENE, REAL, requires_real

ROOT = Path(__file__).resolve().parents[2]
PREFECT_YAML = ROOT / "prefect.yaml"
RIO_SCENE = REAL / "spacenet1_rio" / "3band" / "3band_013022223130_Public_img55.tif"
POOL = "footprints"
#: deployment name -> (entrypoint, flow name)
EXPECTED = {
    "default": ("flows/segment_scene.py:segment_scene_flow", "segment-scene"),
    "scheduled": ("flows/segment_bucket.py:segment_bucket_flow", "segment-bucket"),
}
HOME_VAR = "FOOTPRINTS_HOME"
OUTPUTS = set(OUTPUT_NAMES)
WATCH_TIMEOUT_S = 300


# ----------------------------------------------------------------------------- static checks


def project() -> dict[str, Any]:
    data = yaml.safe_load(PREFECT_YAML.read_text())
    assert isinstance(data, dict), "prefect.yaml is not a mapping"
    return data


def deployments() -> dict[str, dict[str, Any]]:
    deps = project().get("deployments")
    assert isinstance(deps, list) and deps, "prefect.yaml declares no deployments"
    by_name = {d["name"]: d for d in deps}
    assert len(by_name) == len(deps), "duplicate deployment names"
    return by_name


def load_entrypoint(entrypoint: str) -> Any:
    """The flow object an entrypoint ``path/to/file.py:function`` names, imported as a module."""
    path, _, attr = entrypoint.partition(":")
    assert path.endswith(".py") and attr, f"entrypoint {entrypoint!r} is not FILE.py:FUNCTION"
    assert (ROOT / path).is_file(), f"entrypoint file {path} does not exist"
    module = importlib.import_module(path[: -len(".py")].replace("/", "."))
    assert hasattr(module, attr), f"{path} has no {attr}"
    return getattr(module, attr)


def test_project_has_the_two_deployments_on_the_process_pool() -> None:
    data = project()
    # Nothing is built or pushed: the worker runs the code where it already is.
    assert not data.get("build") and not data.get("push")
    deps = deployments()
    assert set(deps) == set(EXPECTED)
    for name, dep in deps.items():
        assert dep["entrypoint"] == EXPECTED[name][0]
        assert dep["work_pool"]["name"] == POOL, name


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_entrypoint_resolves_to_the_flow(name: str) -> None:
    flow = load_entrypoint(deployments()[name]["entrypoint"])
    flow_name = EXPECTED[name][1]
    assert flow.name == flow_name


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_parameters_are_accepted_by_the_flow(name: str) -> None:
    dep = deployments()[name]
    params = dep.get("parameters") or {}
    signature = inspect.signature(load_entrypoint(dep["entrypoint"]).fn)
    assert set(params) <= set(signature.parameters), set(params) - set(signature.parameters)
    if dep.get("schedules"):
        # A scheduled run gets no --param: every required parameter needs a value here.
        required = {p.name for p in signature.parameters.values() if p.default is inspect.Parameter.empty}
        assert required <= set(params), f"{name}: no value for {required - set(params)}"
    config = params.get("config")
    if config is not None:
        assert (ROOT / config).is_file(), f"{name}: config {config} does not exist"


def test_bucket_schedule_is_a_valid_cron() -> None:
    from prefect.client.schemas.schedules import CronSchedule

    schedules = deployments()["scheduled"].get("schedules")
    assert isinstance(schedules, list) and len(schedules) == 1
    (schedule,) = schedules
    assert len(schedule["cron"].split()) == 5, schedule["cron"]
    CronSchedule(cron=schedule["cron"], timezone=schedule.get("timezone"))
    assert schedule.get("timezone") == "UTC"
    assert not deployments()["default"].get("schedules")


def test_pull_step_moves_into_the_project_directory() -> None:
    pull = project().get("pull")
    assert pull == [
        {"prefect.deployments.steps.set_working_directory": {"directory": "{{ $" + HOME_VAR + " }}"}}
    ]
    for dep in deployments().values():
        assert "pull" not in dep, "a deployment overrides the project's pull step"
    # The image sets the variable the pull step reads to the directory the code is copied to.
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    assert re.search(rf"\b{HOME_VAR}=/opt/footprints\b", dockerfile)
    assert re.search(r"^WORKDIR /opt/footprints$", dockerfile, re.M)


# ----------------------------------------------------------------------------- a real server


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def prefect_exe() -> str:
    exe = shutil.which("prefect", path=str(Path(sys.executable).parent))
    assert exe, f"no prefect executable next to {sys.executable}"
    return exe


def stop(proc: subprocess.Popen[bytes], sig: int, grace_s: float = 20.0) -> None:
    """Signal ``proc``'s process group, then kill the group if it is still alive after ``grace_s``."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=grace_s)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # children the leader left behind
    proc.wait(timeout=10)


@dataclass
class Stack:
    """A Prefect server and worker on loopback, each in its own process group, logging to files."""

    tmp: Path
    env: dict[str, str]
    api: str
    logs: dict[str, Path] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, name: str, args: list[str], *, cwd: Path, env: dict[str, str] | None = None) -> None:
        log = self.tmp / f"{name}.log"
        self.logs[name] = log
        with log.open("wb") as fh:
            self.procs[name] = subprocess.Popen(
                [prefect_exe(), *args], cwd=cwd, env=env or self.env, stdout=fh, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip

    def cli(self, *args: str, cwd: Path = ROOT, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run ``prefect ARGS``; fail with its output and the server and worker logs unless it exits 0."""
        try:
            proc = subprocess.run(
                [prefect_exe(), *args], cwd=cwd, env=self.env, capture_output=True, text=True,
                timeout=timeout, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        except subprocess.TimeoutExpired as exc:
            pytest.fail(self.report(f"prefect {' '.join(args)} ran past {timeout} s\n{exc.stdout!r}"))
        if proc.returncode != 0:
            pytest.fail(self.report(f"prefect {' '.join(args)} exited {proc.returncode}\n{proc.stdout}"
                                    f"\n{proc.stderr}"))  # fmt: skip
        return proc

    def api_call(self, path: str, body: dict[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            f"{self.api}/{path}", data=data, headers={"Content-Type": "application/json"},
            method="GET" if body is None else "POST",
        )  # fmt: skip
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read())

    def wait_healthy(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.procs["server"].poll() is not None:
                pytest.fail(self.report("prefect server exited before it was healthy"))
            try:
                if self.api_call("health") is True:
                    return
            except (OSError, ValueError):
                pass
            time.sleep(0.5)
        pytest.fail(self.report(f"prefect server not healthy after {timeout} s"))

    def report(self, message: str, tail: int = 6000) -> str:
        parts = [message]
        for name, log in self.logs.items():
            text = log.read_text(errors="replace") if log.exists() else "(no log)"
            parts.append(f"----- {name} log (last {tail} chars) -----\n{text[-tail:]}")
        return "\n".join(parts)

    def check(self, condition: object, message: str) -> None:
        if not condition:
            pytest.fail(self.report(message))


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    for var in (HOME_VAR, "FOOTPRINTS_DASK_SCHEDULER"):
        env.pop(var, None)
    env.update(
        PREFECT_HOME=str(tmp_path / "prefect-home"),
        PREFECT_API_URL=api,
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_UI_ENABLED="false",
        PREFECT_WORKER_QUERY_SECONDS="2",  # pick up a new flow run within 2 s, not 10
        PREFECT_CLI_WRAP_LINES="false",
    )
    s = Stack(tmp=tmp_path, env=env, api=api)
    try:
        s.start("server", ["server", "start", "--host", "127.0.0.1", "--port", str(port)], cwd=tmp_path)
        yield s
    finally:
        # The worker first (it would retry a vanished server), then the server; SIGINT is what the
        # worker shuts down on promptly, SIGTERM the server.
        if "worker" in s.procs:
            stop(s.procs["worker"], signal.SIGINT)
        stop(s.procs["server"], signal.SIGTERM)


def run_bucket(stack: Stack, inputs: Path, outputs: Path, config: Path) -> str:
    """``prefect deployment run segment-bucket/scheduled --watch``; the flow run's id once it completed."""
    proc = stack.cli(
        "deployment", "run", "segment-bucket/scheduled",
        "--param", f"input_url={inputs}", "--param", f"output_url={outputs}", "--param", f"config={config}",
        "--watch", "--watch-timeout", str(WATCH_TIMEOUT_S),
        timeout=WATCH_TIMEOUT_S + 60,
    )  # fmt: skip
    stack.check("Flow run finished successfully in 'Completed'" in proc.stdout, proc.stdout)
    match = re.search(r"UUID: ([0-9a-f-]{36})", proc.stdout)
    stack.check(match, f"no flow run id in\n{proc.stdout}")
    assert match is not None
    flow_run = stack.api_call(f"flow_runs/{match.group(1)}")
    stack.check(flow_run["state_type"] == "COMPLETED", f"flow run state {flow_run['state_type']}")
    stack.check(flow_run["parameters"]["input_url"] == str(inputs), json.dumps(flow_run["parameters"]))
    return match.group(1)


def infer_task_runs(stack: Stack) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = stack.api_call(
        "task_runs/filter", {"task_runs": {"name": {"like_": "infer-stitch"}}}
    )
    return runs


def snapshot(outputs: Path) -> dict[str, tuple[int, int]]:
    """(size, mtime_ns) of every file under the scene folders."""
    return {
        str(p.relative_to(outputs)): (p.stat().st_size, p.stat().st_mtime_ns)
        for scene in ("austin", "rio")
        for p in sorted((outputs / scene).iterdir())
    }


@pytest.mark.slow
@pytest.mark.realdata
@requires_real
@pytest.mark.timeout(600)
def test_deploy_and_run_bucket_on_a_local_server(stack: Stack, tmp_path: Path) -> None:
    stack.wait_healthy()
    stack.cli("work-pool", "create", POOL, "--type", "process")
    # Deployed without FOOTPRINTS_HOME: the pull step keeps its placeholder for the worker to fill.
    stack.cli("--no-prompt", "deploy", "--all", cwd=ROOT)
    deployment = stack.api_call("deployments/name/segment-bucket/scheduled")
    stack.check(
        deployment["pull_steps"]
        == [{"prefect.deployments.steps.set_working_directory": {"directory": "{{ $FOOTPRINTS_HOME }}"}}],
        f"pull steps stored as {deployment['pull_steps']}",
    )
    stack.check(
        [(s["schedule"].get("cron"), s["active"]) for s in deployment["schedules"]] == [("0 2 * * *", False)],
        f"schedules stored as {deployment['schedules']}",
    )
    stack.api_call("deployments/name/segment-scene/default")

    # The worker runs outside the checkout; its FOOTPRINTS_HOME is where the pull step moves to.
    workdir = tmp_path / "worker"
    workdir.mkdir()
    stack.start(
        "worker", ["worker", "start", "--pool", POOL], cwd=workdir, env={**stack.env, HOME_VAR: str(ROOT)}
    )

    inputs = tmp_path / "scenes"
    inputs.mkdir()
    (inputs / "austin.tif").symlink_to(DEMO_SCENE)
    (inputs / "rio.tif").symlink_to(RIO_SCENE)
    config = tmp_path / "small.yaml"
    config.write_text("tiling: {tile_size: 256, overlap: 32}\n")
    outputs = tmp_path / "out"

    # First run: both scenes segmented.
    run_bucket(stack, inputs, outputs, config)
    manifest = json.loads((outputs / "manifest.json").read_text())
    stack.check(manifest["summary"]["done"] == 2, json.dumps(manifest, indent=1))
    entries = {e["scene"]: e for e in manifest["scenes"]}
    stack.check(set(entries) == {"austin", "rio"}, json.dumps(manifest, indent=1))
    for scene, entry in entries.items():
        stack.check(entry["status"] == "done", json.dumps(entry))
        stack.check(entry["counts"]["tiles_inferred"] > 0, json.dumps(entry))
        files = {p.name for p in (outputs / scene).iterdir()}
        stack.check(files == OUTPUTS, f"{scene}: {sorted(files)}")
    first_infer = infer_task_runs(stack)
    stack.check(
        len(first_infer) == 2 and all(t["state_type"] == "COMPLETED" for t in first_infer),
        f"infer-stitch task runs after the first run: {[(t['name'], t['state_type']) for t in first_infer]}",
    )
    before = snapshot(outputs)

    # Second run: both scenes are up to date, nothing is inferred or rewritten.
    run_bucket(stack, inputs, outputs, config)
    rerun = json.loads((outputs / "manifest.json").read_text())
    stack.check(rerun["summary"]["up-to-date"] == 2 and rerun["summary"]["done"] == 0, json.dumps(rerun))
    stack.check(rerun["tiles_inferred_now"] == 0, json.dumps(rerun))
    for entry in rerun["scenes"]:
        stack.check(entry["status"] == "up-to-date", json.dumps(entry))
        stack.check(entry["run_key"] == entries[entry["scene"]]["run_key"], json.dumps(entry))
    stack.check(
        len(infer_task_runs(stack)) == len(first_infer), "the rerun ran infer-stitch on a finished scene"
    )
    stack.check(snapshot(outputs) == before, "the rerun rewrote outputs of finished scenes")
