"""Static checks of docker/: compose.yaml, the Dockerfile and the entrypoint (no Docker engine needed).

The entrypoint is also run for real with stub ``dask`` and ``prefect`` executables on PATH, so
the commands each mode execs are checked, not just grepped.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shlex
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
COMPOSE = DOCKER / "compose.yaml"
DOCKERFILE = DOCKER / "Dockerfile"
ENTRYPOINT = DOCKER / "entrypoint.sh"
ENV_EXAMPLE = DOCKER / ".env.example"

REQUIRED_SERVICES = {
    "prefect-server",
    "minio",
    "minio-init",
    "dask-scheduler",
    "dask-gpu-worker-0",
    "dask-gpu-worker-1",
    "prefect-worker",
}
PUBLISHED = {"prefect-server": {4200}, "dask-scheduler": {8786, 8787}, "minio": {9000, 9001}}
SECRET_KEYS = ("AWS_SECRET_ACCESS_KEY", "MINIO_ROOT_PASSWORD")
# ${NAME}, ${NAME?msg} or ${NAME:?msg}: a reference without a default, so no secret is in the file.
SECRET_REFERENCE = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*(:?\?[^}]*)?\}")
VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:?[-?+])?([^}]*)\}")


# ----------------------------------------------------------------------------- helpers


def load_compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def services() -> dict[str, dict[str, Any]]:
    svc = load_compose().get("services")
    assert isinstance(svc, dict) and svc, "compose.yaml has no services"
    return svc


def gpu_workers() -> dict[str, dict[str, Any]]:
    return {name: s for name, s in services().items() if name.startswith("dask-gpu-worker-")}


def environment(service: dict[str, Any]) -> dict[str, str | None]:
    """A service's environment as a dict, from either the mapping or the KEY=VALUE list form."""
    env = service.get("environment") or {}
    if isinstance(env, dict):
        return {str(k): None if v is None else str(v) for k, v in env.items()}
    out: dict[str, str | None] = {}
    for item in env:
        key, sep, value = str(item).partition("=")
        out[key] = value if sep else None
    return out


def published_ports(service: dict[str, Any]) -> set[int]:
    """Host ports of a service's ``ports`` (short "[IP:]HOST:CONTAINER[/proto]" or long syntax)."""
    out: set[int] = set()
    for entry in service.get("ports") or []:
        if isinstance(entry, dict):
            if entry.get("published") is not None:
                out.add(int(str(entry["published"]).split("-")[0]))
            continue
        spec = str(entry).split("/")[0]
        parts = spec.rsplit(":", 2)
        if len(parts) >= 2 and parts[-2]:
            out.add(int(parts[-2].split("-")[0]))
    return out


def dockerfile_cmd(text: str) -> list[str]:
    cmd: list[str] = []
    for instruction, args in dockerfile_instructions(text):
        if instruction == "CMD":
            cmd = json.loads(args) if args.startswith("[") else shlex.split(args)
    return cmd


def mode(service: dict[str, Any]) -> str:
    """The entrypoint mode a service of our image runs: its command's first word, else the CMD."""
    assert "entrypoint" not in service, "services of the footprints image keep docker/entrypoint.sh"
    command = service.get("command")
    if command is None:
        words = dockerfile_cmd(DOCKERFILE.read_text())
    else:
        words = command if isinstance(command, list) else shlex.split(command)
    assert words, "empty command"
    return str(words[0])


def builds_our_image(service: dict[str, Any]) -> bool:
    build = service.get("build")
    if build is None:
        return False
    context, dockerfile = build_paths(build)
    return dockerfile.resolve() == DOCKERFILE.resolve() and context.resolve() == ROOT


def build_paths(build: str | dict[str, Any]) -> tuple[Path, Path]:
    """(context, Dockerfile) of a ``build`` entry: context relative to docker/, Dockerfile to it."""
    if isinstance(build, str):
        context, dockerfile = build, "Dockerfile"
    else:
        context, dockerfile = build.get("context", "."), build.get("dockerfile", "Dockerfile")
    ctx = (DOCKER / context).resolve()
    return ctx, (ctx / dockerfile)


def local_paths(service: dict[str, Any]) -> list[Path]:
    """Relative host paths a service needs: bind-mount sources and env files (relative to docker/)."""
    out: list[str] = []
    for volume in service.get("volumes") or []:
        if isinstance(volume, dict):
            if volume.get("type") == "bind" and str(volume.get("source", "")).startswith("."):
                out.append(str(volume["source"]))
        else:
            source = str(volume).split(":")[0]
            if source.startswith("."):
                out.append(source)
    env_files = service.get("env_file") or []
    for entry in [env_files] if isinstance(env_files, str | dict) else env_files:
        if isinstance(entry, dict):
            if entry.get("required", True):
                out.append(str(entry["path"]))
        else:
            out.append(str(entry))
    return [DOCKER / p for p in out if not os.path.isabs(p)]


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with comments dropped and continuation lines joined."""
    out: list[tuple[str, str]] = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        if current.strip():
            word, _, args = current.strip().partition(" ")
            out.append((word.upper(), args.strip()))
        current = ""
    return out


def copy_sources(text: str) -> list[str]:
    """Sources of COPY/ADD instructions that read the build context (``--from`` ones excluded)."""
    out: list[str] = []
    for instruction, args in dockerfile_instructions(text):
        if instruction not in ("COPY", "ADD"):
            continue
        words = json.loads(args) if args.startswith("[") else shlex.split(args)
        flags = [w for w in words if w.startswith("--")]
        if any(f.startswith("--from") for f in flags):
            continue
        paths = [w for w in words if not w.startswith("--")]
        assert len(paths) >= 2, f"{instruction} {args}: needs a source and a destination"
        out.extend(paths[:-1])
    return out


def missing_sources(text: str, root: Path) -> list[str]:
    return [s for s in copy_sources(text) if not glob.glob(str(root / s))]


def base_image(text: str) -> str:
    """The image of the (last) FROM, with ``${ARG}`` resolved from the ARG defaults before it."""
    args: dict[str, str] = {}
    image = ""
    for instruction, rest in dockerfile_instructions(text):
        if instruction == "ARG" and "=" in rest:
            key, _, value = rest.partition("=")
            args[key.strip()] = value.strip().strip("\"'")
        elif instruction == "FROM":
            image = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), rest.split()[0])
    return image


def is_secret_reference(value: str | None) -> bool:
    return value is not None and SECRET_REFERENCE.fullmatch(value) is not None


# ----------------------------------------------------------------------------- helper self-checks


def test_helpers_detect_problems(tmp_path: Path) -> None:
    (tmp_path / "present").mkdir()
    bad = "FROM x\nCOPY present ./\nCOPY --chown=1:1 absent other \\\n  ./dst/\nCOPY --from=build /a /b\n"
    assert missing_sources(bad, tmp_path) == ["absent", "other"]
    assert base_image("ARG B=pytorch/pytorch:9.9.9-cuda1.0-cudnn9-runtime\nFROM ${B}\n").startswith(
        "pytorch/"
    )
    assert not is_secret_reference("minio123")
    assert not is_secret_reference("${MINIO_ROOT_PASSWORD:-minio123}")
    assert not is_secret_reference("prefix-${MINIO_ROOT_PASSWORD}")
    assert is_secret_reference("${MINIO_ROOT_PASSWORD:?set it}")
    assert published_ports(
        {"ports": ["127.0.0.1:9000:9000", "8787:80/tcp", {"published": 1, "target": 2}]}
    ) == {
        9000,
        8787,
        1,
    }
    assert published_ports({"ports": ["9000"]}) == set()
    svc = {"volumes": ["./nope:/x", "named:/y", "/abs:/z"], "env_file": [".env"]}
    assert local_paths(svc) == [DOCKER / "nope", DOCKER / ".env"]
    assert environment({"environment": ["A=1", "B"]}) == {"A": "1", "B": None}


# ----------------------------------------------------------------------------- compose.yaml


def test_required_services_exist() -> None:
    missing = REQUIRED_SERVICES - set(services())
    assert not missing, f"compose.yaml lacks services {sorted(missing)}"


def test_worker_settings_are_shared_through_an_anchor() -> None:
    data = load_compose()
    assert "x-footprints-worker" in data
    assert "<<: *footprints-worker" in COMPOSE.read_text()


@pytest.mark.parametrize(("name", "ports"), sorted(PUBLISHED.items()))
def test_published_ports(name: str, ports: set[int]) -> None:
    got = published_ports(services()[name])
    assert ports <= got, f"{name} publishes {sorted(got)}, expected {sorted(ports)}"


def test_gpu_workers_reserve_one_distinct_nvidia_gpu_each() -> None:
    workers = gpu_workers()
    assert len(workers) >= 2
    seen: dict[str, str] = {}
    for name, service in workers.items():
        devices = service["deploy"]["resources"]["reservations"]["devices"]
        assert len(devices) == 1, f"{name}: one device reservation per worker"
        device = devices[0]
        assert device.get("driver") == "nvidia", name
        assert device.get("capabilities") == ["gpu"], name
        assert "count" not in device, f"{name}: pin a device id, not a count"
        ids = device.get("device_ids")
        assert isinstance(ids, list) and len(ids) == 1, f"{name}: exactly one device id (it declares GPU=1)"
        gpu = str(ids[0])
        assert gpu not in seen, f"{name} and {seen.get(gpu)} share GPU {gpu}"
        seen[gpu] = name


def test_gpu_workers_run_dask_worker_mode_against_the_scheduler() -> None:
    for name, service in gpu_workers().items():
        assert mode(service) == "dask-worker", name
        assert builds_our_image(service), f"{name} must run the image of docker/Dockerfile"
        env = environment(service)
        assert env.get("DASK_SCHEDULER_ADDRESS") == "tcp://dask-scheduler:8786", name
        assert env.get("AWS_ENDPOINT_URL") == "http://minio:9000", name
        assert env.get("AWS_REGION"), name
        depends = service.get("depends_on") or {}
        assert "dask-scheduler" in depends, name


def test_worker_names_are_distinct() -> None:
    names = [environment(s).get("DASK_WORKER_NAME") for s in gpu_workers().values()]
    assert all(names) and len(set(names)) == len(names), names


def test_scheduler_and_prefect_worker_modes() -> None:
    svc = services()
    assert mode(svc["dask-scheduler"]) == "dask-scheduler"
    assert mode(svc["prefect-worker"]) == "prefect-worker"
    assert builds_our_image(svc["dask-scheduler"])
    assert builds_our_image(svc["prefect-worker"])


def test_prefect_worker_talks_to_prefect_server_and_dask() -> None:
    svc = services()
    worker = svc["prefect-worker"]
    env = environment(worker)
    assert env.get("PREFECT_API_URL") == "http://prefect-server:4200/api"
    assert env.get("FOOTPRINTS_DASK_SCHEDULER") == "tcp://dask-scheduler:8786"
    assert env.get("AWS_ENDPOINT_URL") == "http://minio:9000"
    depends = worker.get("depends_on")
    assert isinstance(depends, dict)
    assert depends["prefect-server"]["condition"] == "service_healthy"
    assert "dask-scheduler" in depends
    assert depends["minio-init"]["condition"] == "service_completed_successfully"


def test_prefect_server_and_minio() -> None:
    svc = services()
    server = svc["prefect-server"]
    lock = (ROOT / "requirements.lock").read_text()
    prefect = re.search(r"^prefect==(\S+)$", lock, re.MULTILINE)
    assert prefect, "requirements.lock pins prefect"
    assert server["image"] == f"prefecthq/prefect:{prefect.group(1)}-python3.11", "server = client version"
    command = server["command"]
    words = command if isinstance(command, list) else shlex.split(command)
    assert words[:3] == ["prefect", "server", "start"] and "0.0.0.0" in words
    assert environment(server).get("PREFECT_SERVER_ANALYTICS_ENABLED") == "false"
    assert "healthcheck" in server and "healthcheck" in svc["minio"]
    assert re.fullmatch(r"minio/minio:RELEASE\.[0-9TZ-]+", svc["minio"]["image"])
    init = svc["minio-init"]
    assert init["depends_on"]["minio"]["condition"] == "service_healthy"
    script = " ".join(init.get("command") or [])
    for bucket in ("imagery", "footprints"):
        assert re.search(rf"\S+/{bucket}\b", script), f"minio-init does not create bucket {bucket}"


def test_pulled_images_are_pinned() -> None:
    for name, service in services().items():
        if "build" in service:
            continue
        image = str(service.get("image", ""))
        tag = image.rpartition(":")[2] if ":" in image.rpartition("/")[2] else ""
        assert tag and tag != "latest", f"{name}: pin the image tag of {image!r}"


def test_build_contexts_and_dockerfiles_exist() -> None:
    built = {name: s["build"] for name, s in services().items() if "build" in s}
    assert built, "no service builds the footprints image"
    for name, build in built.items():
        context, dockerfile = build_paths(build)
        assert context.is_dir(), f"{name}: build context {context} does not exist"
        assert dockerfile.is_file(), f"{name}: Dockerfile {dockerfile} does not exist"


def test_local_files_referenced_by_services_exist() -> None:
    for name, service in services().items():
        for path in local_paths(service):
            assert path.exists(), f"{name} refers to {path}, which is not in the repository"


def test_secrets_are_variable_references() -> None:
    found = {key: 0 for key in SECRET_KEYS}
    for name, service in services().items():
        for key, value in environment(service).items():
            if key in SECRET_KEYS:
                found[key] += 1
                assert is_secret_reference(value), (
                    f"{name}: {key} must be a ${{VAR}} reference without a default"
                )
    assert all(found.values()), f"expected every secret to be set somewhere: {found}"


def test_required_variables_are_documented_in_env_example() -> None:
    required = {m.group(1) for m in VARIABLE.finditer(COMPOSE.read_text()) if m.group(2) in (None, "?", ":?")}
    assert required, "compose.yaml is expected to require MINIO_ROOT_PASSWORD"
    documented = set(re.findall(r"^([A-Za-z_][A-Za-z0-9_]*)=", ENV_EXAMPLE.read_text(), re.MULTILINE))
    assert required <= documented, f"not in docker/.env.example: {sorted(required - documented)}"


# ----------------------------------------------------------------------------- Dockerfile


def test_dockerfile_copy_sources_exist() -> None:
    text = DOCKERFILE.read_text()
    sources = copy_sources(text)
    for needed in ("requirements.lock", "pyproject.toml", "pipeline", "flows", "configs", "models"):
        assert any(s.rstrip("/") == needed for s in sources), f"Dockerfile does not COPY {needed}"
    assert "docker/entrypoint.sh" in sources
    assert missing_sources(text, ROOT) == []


def test_dockerfile_base_is_a_cuda_pytorch_image() -> None:
    image = base_image(DOCKERFILE.read_text())
    match = re.fullmatch(r"pytorch/pytorch:(\d+)\.(\d+)\.\d+-cuda\d+\.\d+-cudnn\d+-(runtime|devel)", image)
    assert match, f"base image {image!r} is not a CUDA pytorch/pytorch image"
    # torch 2.5/2.6 pin sympy==1.13.1, which conflicts with the sympy of requirements.lock.
    assert (int(match.group(1)), int(match.group(2))) >= (2, 7), image


def test_dockerfile_installs_the_lock_without_torch_and_uses_the_entrypoint() -> None:
    instructions = dockerfile_instructions(DOCKERFILE.read_text())
    runs = " ".join(args for instruction, args in instructions if instruction == "RUN")
    assert "requirements.lock" in runs and "pip install --no-deps -e ." in runs
    grep = re.search(r"grep -v -E '([^']+)' requirements\.lock", runs)
    assert grep, "the lock is filtered with grep -v -E"
    dropped = re.compile(grep.group(1))
    lock = (ROOT / "requirements.lock").read_text().splitlines()
    kept = [line for line in lock if line and not dropped.search(line)]
    names = {re.split(r"[=<>~!]", line)[0].lower() for line in kept}
    assert not names & {"torch", "torchvision", "triton"}, "torch comes from the base image"
    assert not [n for n in names if n.startswith(("nvidia-", "cuda-"))], (
        "CUDA wheels come from the base image"
    )
    assert {"prefect", "dask", "distributed", "rasterio", "segmentation_models_pytorch"} <= names
    entrypoint = [json.loads(a) for i, a in instructions if i == "ENTRYPOINT"]
    assert entrypoint and entrypoint[-1] == ["/usr/local/bin/footprints-entrypoint"]
    assert dockerfile_cmd(DOCKERFILE.read_text()) == ["dask-worker"]


# ----------------------------------------------------------------------------- entrypoint.sh


def test_entrypoint_is_an_executable_strict_bash_script() -> None:
    assert ENTRYPOINT.is_file()
    assert ENTRYPOINT.stat().st_mode & stat.S_IXUSR and os.access(ENTRYPOINT, os.X_OK)
    text = ENTRYPOINT.read_text()
    assert text.splitlines()[0] in ("#!/usr/bin/env bash", "#!/bin/bash")
    assert re.search(r"^set -euo pipefail$", text, re.MULTILINE)
    for case in ("dask-worker)", "dask-scheduler)", "prefect-worker)", "*)"):
        assert re.search(rf"^\s*{re.escape(case)}", text, re.MULTILINE), f"no case {case}"
    result = subprocess.run(["bash", "-n", str(ENTRYPOINT)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr


def run_entrypoint(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> list[str]:
    """Run the entrypoint with stub dask/prefect that print their argv and working directory."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for tool in ("dask", "prefect"):
        stub = bin_dir / tool
        stub.write_text(f'#!/bin/sh\necho "{tool} $*"\npwd\n')
        stub.chmod(0o755)
    base = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOSTNAME": "stub-host", "FOOTPRINTS_HOME": str(tmp_path)}
    result = subprocess.run(
        ["bash", str(ENTRYPOINT), *args],
        env={**base, **(env or {})},
        cwd="/",
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def test_entrypoint_dask_worker_is_the_default(tmp_path: Path) -> None:
    expected = (
        "dask worker tcp://dask-scheduler:8786 --nworkers 1 --nthreads 1 --resources GPU=1 --name stub-host"
    )
    assert run_entrypoint(tmp_path)[0] == expected
    assert run_entrypoint(tmp_path, "dask-worker")[0] == expected


def test_entrypoint_dask_worker_reads_its_environment(tmp_path: Path) -> None:
    env = {"DASK_SCHEDULER_ADDRESS": "tcp://sched:9999", "DASK_WORKER_NAME": "gpu-7"}
    out = run_entrypoint(tmp_path, "dask-worker", "--memory-limit", "8GB", env=env)
    assert out[0] == (
        "dask worker tcp://sched:9999 --nworkers 1 --nthreads 1 --resources GPU=1 --name gpu-7"
        " --memory-limit 8GB"
    )


def test_entrypoint_dask_scheduler(tmp_path: Path) -> None:
    assert (
        run_entrypoint(tmp_path, "dask-scheduler")[0]
        == "dask scheduler --port 8786 --dashboard-address :8787"
    )


def test_entrypoint_prefect_worker(tmp_path: Path) -> None:
    out = run_entrypoint(tmp_path, "prefect-worker")
    assert out == ["prefect worker start --pool footprints --type process", str(tmp_path)]
    out = run_entrypoint(tmp_path, "prefect-worker", env={"PREFECT_WORK_POOL": "gpu"})
    assert out[0] == "prefect worker start --pool gpu --type process"


def test_entrypoint_execs_other_commands(tmp_path: Path) -> None:
    assert run_entrypoint(tmp_path, "echo", "hello", "world") == ["hello world"]
    failed = subprocess.run(["bash", str(ENTRYPOINT), "false"], capture_output=True, timeout=30)
    assert failed.returncode != 0
