"""Static checks of the deployment files: docker-compose.yml, deploy/Dockerfile.*, deploy/k8s/*.yaml.

No Docker engine or cluster runs here, so these tests read the files the way compose, BuildKit and
Kubernetes would and cross-check them against the code they launch: every LAYERQ_* variable is a
Settings field, every command is a real `layerq` subcommand, ports, selectors and references line up.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from layerq.config import Settings, env_var_names

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
API_DOCKERFILE = DEPLOY / "Dockerfile.api"
WORKER_DOCKERFILE = DEPLOY / "Dockerfile.worker"
REQUIREMENTS_SCRIPT = DEPLOY / "pyproject_requirements.py"

# Subcommands of the `layerq` console script; used only when layerq.cli has no build_parser() yet.
KNOWN_SUBCOMMANDS = {"api", "worker", "up", "submit"}
# A variable name; `LAYERQ_S3_*` (a family, in prose) is not one.
LAYERQ_VAR = re.compile(r"\bLAYERQ_[A-Z0-9_]*[A-Z0-9](?![A-Z0-9_*])")
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet"}


# --- helpers: the layerq CLI --------------------------------------------------------------------


def _cli_parser() -> argparse.ArgumentParser | None:
    try:
        from layerq import cli
    except ModuleNotFoundError as e:
        if e.name == "layerq.cli":
            return None
        raise
    build = getattr(cli, "build_parser", None)
    return build() if build else None


def _subcommands(parser: argparse.ArgumentParser) -> set[str]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return set(action.choices)
    raise AssertionError("layerq.cli.build_parser() has no subcommands")


def assert_layerq_command(argv: list[str], where: str) -> None:
    """`argv` runs the console script with a subcommand and options the CLI really accepts."""
    assert argv and argv[0] == "layerq", f"{where}: {argv} does not run the `layerq` console script"
    assert len(argv) > 1, f"{where}: {argv} names no subcommand"
    parser = _cli_parser()
    if parser is None:
        assert argv[1] in KNOWN_SUBCOMMANDS, f"{where}: unknown subcommand {argv[1]!r}"
        return
    assert argv[1] in _subcommands(parser), f"{where}: `layerq {argv[1]}` is not a subcommand"
    try:
        parser.parse_args(argv[1:])
    except SystemExit as e:  # argparse exits on an unknown option or a bad value
        pytest.fail(f"{where}: layerq's parser rejects {argv[1:]} (exit {e.code})")


def option(argv: list[str], name: str) -> str | None:
    """Value of `--name V` or `--name=V` in argv."""
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def queues(argv: list[str]) -> set[str]:
    return set((option(argv, "--queues") or "").split(",")) - {""}


# --- helpers: compose ----------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def services() -> dict[str, dict[str, Any]]:
    return compose()["services"]


def interpolate(value: str) -> str:
    """Compose's `${VAR:-default}` with VAR unset, and `$$` → `$`."""
    value = re.sub(r"\$\{(\w+)(?::?-([^}]*))?\}", lambda m: m.group(2) or "", value)
    return value.replace("$$", "$")


def env_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {k: interpolate(str(v)) for k, v in env.items()}


def command_of(service: dict[str, Any]) -> list[str]:
    cmd = service.get("command")
    return shlex.split(cmd) if isinstance(cmd, str) else list(cmd or [])


def duration_s(value: str | int) -> float:
    """Compose duration ("61m", "1h1m30s", "90s") in seconds."""
    if isinstance(value, int):
        return value
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(h|ms|us|m|s)", value)
    assert parts and "".join(n + u for n, u in parts) == value, f"bad duration {value!r}"
    return sum(float(n) * units[u] for n, u in parts)


def layerq_services() -> dict[str, dict[str, Any]]:
    return {n: s for n, s in services().items() if str(s.get("image", "")).startswith("layerq-")}


def gpu_workers() -> dict[str, dict[str, Any]]:
    return {n: s for n, s in layerq_services().items() if "decompose" in queues(command_of(s))}


def gpu_devices(service: dict[str, Any]) -> list[dict[str, Any]]:
    devices = service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
    return [d for d in devices if "gpu" in d.get("capabilities", [])]


# --- helpers: Dockerfiles -------------------------------------------------------------------------


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = pending + stripped
        pending = ""
        keyword, _, args = full.partition(" ")
        out.append((keyword.upper(), args.strip()))
    assert not pending, f"{path.name}: dangling line continuation"
    return out


def build_args(path: Path) -> dict[str, str]:
    out = {}
    for keyword, args in instructions(path):
        if keyword == "ARG" and "=" in args:
            name, value = args.split("=", 1)
            out[name] = value
    return out


def resolve_args(text: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), text)


def final_from(path: Path) -> str:
    froms = [a.split()[0] for k, a in instructions(path) if k == "FROM"]
    return resolve_args(froms[-1], build_args(path))


def cmd(path: Path) -> list[str]:
    cmds = [a for k, a in instructions(path) if k == "CMD"]
    assert len(cmds) == 1, f"{path.name}: expected one CMD, found {len(cmds)}"
    assert not [a for k, a in instructions(path) if k == "ENTRYPOINT"], "CMD is the whole command line"
    return json.loads(cmds[0])  # exec form, so signals reach the process


def run_lines(path: Path) -> list[str]:
    return [a for k, a in instructions(path) if k == "RUN"]


# --- helpers: Kubernetes ---------------------------------------------------------------------------


def k8s_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def k8s_docs() -> list[dict[str, Any]]:
    docs = []
    for path in k8s_files():
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    return docs


def of_kind(*kinds: str) -> list[dict[str, Any]]:
    return [d for d in k8s_docs() if d["kind"] in kinds]


def named(kind: str, name: str) -> dict[str, Any]:
    found = [d for d in of_kind(kind) if d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name!r}, found {len(found)}"
    return found[0]


def containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    spec = workload["spec"]["template"]["spec"]
    return spec.get("initContainers", []) + spec["containers"]


def configmap_data() -> dict[str, str]:
    return named("ConfigMap", "layerq-config")["data"]


def port_number(container: dict[str, Any], port: int | str) -> int:
    """A probe's or Service's port (number or name) as the container's port number."""
    ports = container.get("ports", [])
    if isinstance(port, int):
        assert port in [p["containerPort"] for p in ports], f"{container['name']}: no port {port}"
        return port
    by_name = {p.get("name"): p["containerPort"] for p in ports}
    assert port in by_name, f"{container['name']}: no port named {port!r}"
    return by_name[port]


# === docker-compose.yml ==========================================================================


def test_compose_has_the_services_of_the_architecture():
    assert {"redis", "minio", "api", "worker-gpu", "worker-cpu"} <= set(services())


def test_compose_named_volumes_are_declared():
    declared = set(compose().get("volumes") or {})
    for name, svc in services().items():
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0] if isinstance(volume, str) else volume.get("source", "")
            if source and not source.startswith((".", "/", "~")):
                assert source in declared, f"{name}: volume {source!r} is not declared"


def test_compose_depends_on_targets_exist_and_conditions_can_be_met():
    svcs = services()
    for name, svc in svcs.items():
        deps = svc.get("depends_on") or {}
        if isinstance(deps, list):
            deps = {d: {"condition": "service_started"} for d in deps}
        for target, spec in deps.items():
            assert target in svcs, f"{name} depends on missing service {target!r}"
            assert target != name
            condition = spec.get("condition", "service_started")
            if condition == "service_healthy":
                assert "healthcheck" in svcs[target], f"{name} waits for {target} to be healthy, it has no healthcheck"
            elif condition == "service_completed_successfully":
                assert svcs[target].get("restart", "no") == "no", f"{target} is one-shot, it must not restart"
            else:
                assert condition == "service_started", f"{name}: unknown condition {condition!r}"
            # A service outside a profile cannot wait for one that only starts with that profile.
            if svcs[target].get("profiles"):
                assert set(svc.get("profiles", [])) & set(svcs[target]["profiles"]), f"{name} needs profiled {target}"


def test_compose_dependencies_have_no_cycle():
    graph = {n: set(s.get("depends_on") or []) for n, s in services().items()}
    done: set[str] = set()
    while graph.keys() - done:
        ready = {n for n in graph.keys() - done if graph[n] <= done}
        assert ready, f"depends_on cycle among {sorted(graph.keys() - done)}"
        done |= ready


def test_every_layerq_variable_in_the_deploy_files_is_a_settings_field():
    known = set(env_var_names())
    seen = set()
    for path in [COMPOSE_FILE, *DEPLOY.rglob("*")]:
        if path.is_file():
            for var in LAYERQ_VAR.findall(path.read_text()):
                assert var in known, f"{path.relative_to(ROOT)} uses {var}, which is not a Settings field"
                seen.add(var)
    assert {"LAYERQ_REDIS_URL", "LAYERQ_STORAGE", "LAYERQ_S3_BUCKET"} <= seen


def test_compose_environment_keys_are_settings_fields():
    known = set(env_var_names())
    for name, svc in services().items():
        for key in env_of(svc):
            if key.startswith("LAYERQ_"):
                assert key in known, f"{name}: {key} is not a Settings field"


def test_compose_settings_parse_and_time_limits_are_consistent():
    for name, svc in layerq_services().items():
        settings = Settings.from_env(env_of(svc))  # raises on a value of the wrong type
        assert settings.storage == "s3", name
        assert settings.s3_endpoint_url and settings.s3_public_endpoint_url, name
        assert settings.job_soft_time_limit_s < settings.job_time_limit_s < settings.visibility_timeout_s, name
        assert settings.redis_url.startswith("redis://redis:"), f"{name}: Redis is reached as `redis` in compose"


def test_compose_layerq_services_run_real_cli_commands():
    assert layerq_services(), "no service runs a layerq image"
    for name, svc in layerq_services().items():
        assert_layerq_command(command_of(svc), f"compose service {name}")


def test_compose_api_port_matches_command_mapping_and_healthcheck():
    api = services()["api"]
    argv = command_of(api)
    assert argv[1] == "api"
    assert option(argv, "--host") == "0.0.0.0", "inside a container the API must listen on all interfaces"
    port = option(argv, "--port")
    container_ports = [str(p).rsplit(":", 1)[-1].split("/")[0] for p in api["ports"]]
    assert port in container_ports, f"api listens on {port}, publishes {container_ports}"
    check = " ".join(api["healthcheck"]["test"])
    assert f":{port}/healthz" in check, "the healthcheck must probe /healthz on the port the API listens on"


def test_compose_api_matches_its_image():
    argv = command_of(services()["api"])
    assert argv == cmd(API_DOCKERFILE), "compose runs the API the way its image does by default"
    exposed = [a for k, a in instructions(API_DOCKERFILE) if k == "EXPOSE"]
    assert exposed == [option(argv, "--port")]


def test_compose_gpu_workers_reserve_their_gpus_and_never_share_one():
    workers = gpu_workers()
    assert "worker-gpu" in workers
    claims: dict[str, list[str] | str] = {}  # service → the GPUs it reserves, or "all"
    for name, svc in workers.items():
        argv = command_of(svc)
        assert option(argv, "--queues") == "decompose", name
        devices = gpu_devices(svc)
        assert len(devices) == 1 and devices[0]["driver"] == "nvidia", f"{name}: needs one nvidia GPU reservation"
        device = devices[0]
        assert ("count" in device) != ("device_ids" in device), f"{name}: count and device_ids exclude each other"
        gpus = option(argv, "--gpus")
        if gpus is None:  # one worker process: exactly one GPU
            assert device.get("count") == 1 or len(device.get("device_ids", [])) == 1, f"{name}: one GPU per worker"
        else:
            # A container sees its GPUs renumbered from 0, so the supervisor takes all it is given.
            assert gpus == "all", f"{name}: inside a container use --gpus all and reserve the GPUs"
        if device.get("count") == "all":
            claims[name] = "all"
        elif "count" in device:
            claims[name] = [str(i) for i in range(device["count"])]  # docker hands `count: N` the first N GPUs
        else:
            claims[name] = [str(d) for d in device["device_ids"]]
        assert env_of(svc)["LAYERQ_DEVICE"] == "cuda", f"{name}: fail loudly without a GPU"
    # Which GPU workers run together: those without a profile, plus a profile's. A profile whose
    # documented command scales worker-gpu (every GPU) to 0 runs instead of it.
    always = [n for n in workers if not workers[n].get("profiles")]
    text = COMPOSE_FILE.read_text()
    groups = [always]
    for profile in sorted({p for svc in workers.values() for p in svc.get("profiles", [])}):
        members = [n for n in workers if profile in workers[n].get("profiles", [])]
        replaces = f"--profile {profile} up -d --scale worker-gpu=0" in text
        groups.append(members + [n for n in always if not (replaces and n == "worker-gpu")])
    for group in groups:
        takes_all = [n for n in group if claims[n] == "all"]
        pinned = [g for n in group if claims[n] != "all" for g in claims[n]]
        assert len(pinned) == len(set(pinned)), f"two GPU workers share a GPU: {group}"
        assert not takes_all or len(group) == 1, f"{takes_all} take every GPU, another GPU worker would share one"
    assert option(command_of(workers["worker-gpu"]), "--gpus") == "all", "compose supervises one worker per GPU"


def test_compose_flower_is_an_optional_profile_with_layerq_broker_settings(monkeypatch):
    import runpy

    from layerq.celery_app import celery_config

    flower = services()["flower"]
    assert flower["profiles"] == ["flower"], "Flower is optional"
    argv = command_of(flower)
    assert argv[:3] == ["celery", "--config", "layerq_celeryconfig"] and "flower" in argv
    port = option(argv, "--port")
    assert any(str(p).endswith(f":{port}") for p in flower["ports"])
    env = env_of(flower)
    mounts = {v.split(":")[1]: v.split(":")[0] for v in flower["volumes"]}
    module = ROOT / mounts[env["PYTHONPATH"]] / "layerq_celeryconfig.py"
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    conf = runpy.run_path(str(module))
    layerq = celery_config(Settings.from_env(env_of(services()["api"])))
    assert conf["broker_url"] == layerq["broker_url"]
    assert conf["broker_transport_options"]["global_keyprefix"] == layerq["broker_transport_options"]["global_keyprefix"]


def test_compose_gpu_workers_keep_weights_on_a_volume_and_stop_gracefully():
    declared = set(compose().get("volumes") or {})
    for name, svc in gpu_workers().items():
        env = env_of(svc)
        mounts = {v.split(":")[1]: v.split(":")[0] for v in svc["volumes"]}
        hf_home = env["HF_HOME"]
        assert any(hf_home == m or hf_home.startswith(m.rstrip("/") + "/") for m in mounts), (
            f"{name}: HF_HOME={hf_home} is not on a volume; the ~54 GB download would repeat"
        )
        assert all(src in declared for src in mounts.values())
        limit = Settings.from_env(env).job_time_limit_s
        assert duration_s(svc["stop_grace_period"]) >= limit, f"{name}: stop_grace_period shorter than a job"
        if option(command_of(svc), "--gpus"):
            from worker.supervisor import default_drain_timeout_s

            assert duration_s(svc["stop_grace_period"]) > default_drain_timeout_s(limit), (
                f"{name}: docker would kill the supervisor before it has drained its workers")
        assert svc.get("init") is True, f"{name}: an init process forwards SIGTERM and reaps children"


def test_compose_mixed_profile_runs_an_80_and_a_48_gb_worker_the_api_routes_to():
    svcs = services()
    for name in ("worker-gpu-80", "worker-gpu-48"):
        svc = svcs[name]
        assert svc["profiles"] == ["mixed"], name
        # `decompose`: the worker derives its class's queues from its card (worker/memory_budget.py).
        assert queues(command_of(svc)) == {"decompose"}, name
        env = env_of(svc)
        assert env["LAYERQ_MEMORY_CLASSES"] == env_of(svcs["api"])["LAYERQ_MEMORY_CLASSES"]
    fleet = [c.name for c in Settings.from_env(env_of(svcs["api"])).fleet_memory_classes]
    assert fleet == ["80", "48"]
    text = COMPOSE_FILE.read_text()
    assert "--profile mixed up -d --scale worker-gpu=0" in text


def test_compose_cpu_worker_runs_from_the_api_image():
    svc = services()["worker-cpu"]
    assert queues(command_of(svc)) == {"cpu"}
    assert svc["image"] == services()["api"]["image"]
    assert svc["build"]["dockerfile"] == "deploy/Dockerfile.api"


def test_compose_redis_persists_queued_jobs():
    redis = services()["redis"]
    argv = command_of(redis)
    assert option(argv, "--appendonly") == "yes", "without AOF a Redis restart loses queued jobs"
    assert option(argv, "--maxmemory-policy") == "noeviction", "evicting keys would drop queued jobs"
    assert any(v.endswith(":/data") for v in redis["volumes"])


def test_compose_bucket_and_credentials_line_up_with_minio():
    svcs = services()
    api_env = env_of(svcs["api"])
    minio_env = env_of(svcs["minio"])
    assert api_env["LAYERQ_S3_ACCESS_KEY_ID"] == minio_env["MINIO_ROOT_USER"]
    assert api_env["LAYERQ_S3_SECRET_ACCESS_KEY"] == minio_env["MINIO_ROOT_PASSWORD"]
    assert len(minio_env["MINIO_ROOT_PASSWORD"]) >= 8, "MinIO refuses a root password under 8 characters"
    assert api_env["LAYERQ_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert any(str(p).startswith("9000:") for p in svcs["minio"]["ports"]), "presigned URLs point at host :9000"
    assert api_env["LAYERQ_S3_PUBLIC_ENDPOINT_URL"] == "http://localhost:9000"

    init = svcs["minio-init"]
    script = interpolate(" ".join(init["command"]))
    init_env = env_of(init)
    target = re.search(r"mc mb .*?store/([${}\w-]+)", script).group(1)  # a name or $VARIABLE
    bucket = init_env.get(target.strip("${}"), target)
    assert bucket == api_env["LAYERQ_S3_BUCKET"], "minio-init must create the bucket layerq uses"
    assert "http://minio:9000" in script


# === Dockerfiles ===================================================================================


def test_requirements_script_keeps_torch_out_of_the_base_install():
    def reqs(*extras: str) -> list[str]:
        out = subprocess.run(
            [sys.executable, str(REQUIREMENTS_SCRIPT), str(ROOT / "pyproject.toml"), *extras],
            capture_output=True, text=True, check=True,
        ).stdout.split()
        return [re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower() for r in out]

    base, worker = reqs(), reqs("worker")
    assert "flask" in base and "celery" in base
    assert "torch" not in base and "diffusers" not in base
    assert {"torch", "diffusers", "transformers"} <= set(worker)
    bad = subprocess.run([sys.executable, str(REQUIREMENTS_SCRIPT), str(ROOT / "pyproject.toml"), "nope"],
                         check=False, capture_output=True, text=True)
    assert bad.returncode != 0


def test_api_image_installs_no_torch():
    assert final_from(API_DOCKERFILE).startswith("python:3.11")
    runs = " ".join(run_lines(API_DOCKERFILE))
    assert "[worker]" not in runs and "torch" not in runs.lower()
    assert "pyproject_requirements.py /tmp/build/pyproject.toml >" in runs, "base requirements, no extras"
    assert re.search(r"pip install (--\S+ )*/src(\s|$)", runs), "the API image installs the project itself"


def test_worker_image_is_cuda_with_python_311_and_the_worker_extra():
    base = final_from(WORKER_DOCKERFILE)
    m = re.fullmatch(r"nvidia/cuda:(\d+)\.(\d+)\.\d+-(?:cudnn-)?runtime-ubuntu\d+\.\d+", base)
    assert m, f"worker base {base!r} is not a CUDA runtime image"
    major, minor = int(m.group(1)), int(m.group(2))
    assert major in (12, 13)
    args = build_args(WORKER_DOCKERFILE)
    assert args["PYTHON_VERSION"] == "3.11"
    # torch's wheels must target the base image's CUDA (cu130 on 13.0, cu128 on 12.8).
    assert args["TORCH_INDEX_URL"].rstrip("/").endswith(f"/cu{major}{minor}")
    runs = " ".join(run_lines(WORKER_DOCKERFILE))
    assert '"/src[worker]"' in runs
    assert "pyproject.toml worker >" in runs
    assert runs.count("--extra-index-url \"${TORCH_INDEX_URL}\"") == 2


def test_worker_image_puts_the_hf_cache_under_the_mounted_volume():
    env = " ".join(a for k, a in instructions(WORKER_DOCKERFILE) if k == "ENV")
    hf_home = re.search(r"HF_HOME=(\S+)", env).group(1)
    for name, svc in gpu_workers().items():
        assert env_of(svc)["HF_HOME"] == hf_home, f"{name} and the image disagree on HF_HOME"
    runs = " ".join(run_lines(WORKER_DOCKERFILE))
    assert re.search(rf"mkdir -p {re.escape(hf_home)}\b", runs), "a fresh volume inherits the image's directory"


@pytest.mark.parametrize("dockerfile", [API_DOCKERFILE, WORKER_DOCKERFILE], ids=lambda p: p.name)
def test_dockerfile_cmd_runs_a_layerq_subcommand_as_non_root(dockerfile):
    argv = cmd(dockerfile)
    assert_layerq_command(argv, dockerfile.name)
    users = [a for k, a in instructions(dockerfile) if k == "USER"]
    assert users and users[-1] not in {"root", "0"}


def test_worker_dockerfile_cmd_serves_the_decompose_queue():
    assert queues(cmd(WORKER_DOCKERFILE)) == {"decompose"}


def _dockerignore_excludes(rules: list[str], path: str) -> bool:
    excluded = False
    for rule in rules:
        negated = rule.startswith("!")
        pattern = rule.lstrip("!").rstrip("/")
        parents = [path] + ["/".join(path.split("/")[:i]) for i in range(1, path.count("/") + 1)]
        if any(fnmatch.fnmatchcase(p, pattern) for p in parents):
            excluded = not negated
    return excluded


@pytest.mark.parametrize("dockerfile", [API_DOCKERFILE, WORKER_DOCKERFILE], ids=lambda p: p.name)
def test_build_context_holds_everything_pip_install_needs(dockerfile):
    ignore = dockerfile.with_name(dockerfile.name + ".dockerignore")
    rules = [r.strip() for r in ignore.read_text().splitlines() if r.strip() and not r.startswith("#")]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    needed = ["pyproject.toml", project["project"]["readme"], "deploy/pyproject_requirements.py"]
    for pattern in project["tool"]["setuptools"]["packages"]["find"]["include"]:
        packages = [p.name for p in ROOT.iterdir() if (p / "__init__.py").exists() and fnmatch.fnmatch(p.name, pattern)]
        needed += [f"{pkg}/__init__.py" for pkg in packages]
    assert "layerq/__init__.py" in needed
    needed.append("layerq/config.py")  # a module, not only the package marker
    for path in needed:
        assert not _dockerignore_excludes(rules, path), f"{ignore.name} leaves {path} out of the build context"
    for path in [".venv/bin/python", ".git/HEAD", ".layerq/data/x", "tests/test_deploy.py", "layerq/__pycache__/a.pyc"]:
        assert _dockerignore_excludes(rules, path), f"{ignore.name} sends {path} to the builder"
    # Files bind-mounted or copied by the Dockerfile must be in the context too.
    for source in re.findall(r"source=([^,\s]+)", " ".join(run_lines(dockerfile))):
        if source != "." and not source.startswith("/"):
            assert not _dockerignore_excludes(rules, source), f"{dockerfile.name} mounts {source}, ignored"


# === Kubernetes ====================================================================================


def test_k8s_manifests_parse_and_carry_no_namespace():
    docs = k8s_docs()
    assert docs
    for doc in docs:
        assert {"apiVersion", "kind", "metadata"} <= set(doc), doc
        assert doc["metadata"].get("name")
        assert "namespace" not in doc["metadata"], f"{doc['kind']} {doc['metadata']['name']} pins a namespace"
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "ConfigMap", "Secret", "StatefulSet"} <= kinds


def test_kustomization_lists_every_manifest_and_its_images():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(p.name for p in k8s_files())
    assert "namespace" not in kustomization
    renamed = {i["name"] for i in kustomization["images"]}
    layerq_images = {c["image"] for w in of_kind(*WORKLOAD_KINDS) for c in containers(w) if c["image"].startswith("layerq")}
    assert layerq_images == renamed == {"layerq-api", "layerq-worker"}


def test_k8s_workload_selectors_match_their_pod_labels():
    for workload in of_kind(*WORKLOAD_KINDS):
        selector = workload["spec"]["selector"]["matchLabels"]
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert selector and selector.items() <= labels.items(), workload["metadata"]["name"]
    selectors = [tuple(sorted(w["spec"]["selector"]["matchLabels"].items())) for w in of_kind(*WORKLOAD_KINDS)]
    assert len(selectors) == len(set(selectors)), "two workloads select the same pods"


def test_k8s_services_select_a_workload_and_target_its_ports():
    workloads = of_kind(*WORKLOAD_KINDS)
    for service in of_kind("Service"):
        selector = service["spec"]["selector"]
        matches = [w for w in workloads if selector.items() <= w["spec"]["template"]["metadata"]["labels"].items()]
        assert len(matches) == 1, f"Service {service['metadata']['name']} selects {len(matches)} workloads"
        for port in service["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            assert any(
                target in [p["containerPort"] for p in c.get("ports", [])] + [p.get("name") for p in c.get("ports", [])]
                for c in containers(matches[0])
            ), f"Service {service['metadata']['name']} targets port {target!r}, which no container opens"
    for statefulset in of_kind("StatefulSet"):
        named("Service", statefulset["spec"]["serviceName"])


def test_k8s_referenced_configmaps_secrets_and_claims_exist():
    configmaps = {d["metadata"]["name"] for d in of_kind("ConfigMap")}
    secrets = {d["metadata"]["name"] for d in of_kind("Secret")}
    claims = {d["metadata"]["name"] for d in of_kind("PersistentVolumeClaim")}
    refs = 0
    for workload in of_kind(*WORKLOAD_KINDS):
        spec = workload["spec"]["template"]["spec"]
        templates = {t["metadata"]["name"] for t in workload["spec"].get("volumeClaimTemplates", [])}
        for c in containers(workload):
            for source in c.get("envFrom", []):
                if "configMapRef" in source:
                    assert source["configMapRef"]["name"] in configmaps
                    refs += 1
                if "secretRef" in source:
                    assert source["secretRef"]["name"] in secrets
                    refs += 1
            for var in c.get("env", []):
                ref = var.get("valueFrom", {})
                if "configMapKeyRef" in ref:
                    assert ref["configMapKeyRef"]["name"] in configmaps
                if "secretKeyRef" in ref:
                    assert ref["secretKeyRef"]["name"] in secrets
            volumes = {v["name"] for v in spec.get("volumes", [])} | templates
            for mount in c.get("volumeMounts", []):
                assert mount["name"] in volumes, f"{c['name']} mounts undeclared volume {mount['name']}"
        for volume in spec.get("volumes", []):
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims
            if "configMap" in volume:
                assert volume["configMap"]["name"] in configmaps
            if "secret" in volume:
                assert volume["secret"]["secretName"] in secrets
    assert refs >= 6, "api, cpu and gpu workers all take the ConfigMap and the Secret"


def test_k8s_environment_names_are_settings_fields_and_parse():
    known = set(env_var_names())
    env: dict[str, str] = dict(configmap_data())
    secret = named("Secret", "layerq-secrets")
    env.update(secret.get("stringData", {}))
    assert set(secret.get("stringData", {})) == {"LAYERQ_S3_ACCESS_KEY_ID", "LAYERQ_S3_SECRET_ACCESS_KEY"}
    for workload in of_kind(*WORKLOAD_KINDS):
        for c in containers(workload):
            env.update({v["name"]: str(v.get("value", "")) for v in c.get("env", [])})
    layerq_vars = {k for k in env if k.startswith("LAYERQ_")}
    assert layerq_vars and layerq_vars <= known, sorted(layerq_vars - known)
    settings = Settings.from_env(env)
    assert settings.storage == "s3"
    assert settings.job_soft_time_limit_s < settings.job_time_limit_s < settings.visibility_timeout_s
    assert settings.redis_url.startswith("redis://redis:")
    named("Service", "redis")  # the host in LAYERQ_REDIS_URL


def test_k8s_layerq_containers_run_real_cli_commands():
    count = 0
    for workload in of_kind(*WORKLOAD_KINDS):
        for c in containers(workload):
            if c["image"].startswith("layerq"):
                assert_layerq_command(c["command"] + c.get("args", []), f"{workload['metadata']['name']}/{c['name']}")
                count += 1
    assert count >= 3


def test_k8s_api_probes_hit_healthz_on_the_port_it_listens_on():
    api = named("Deployment", "layerq-api")
    (container,) = containers(api)
    listen = int(option(container["command"], "--port"))
    assert option(container["command"], "--host") == "0.0.0.0"
    assert listen in [p["containerPort"] for p in container["ports"]]
    for probe in ("readinessProbe", "livenessProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] == "/healthz", probe
        assert port_number(container, get["port"]) == listen, f"{probe} probes another port than {listen}"


def test_k8s_every_http_probe_targets_an_open_port():
    for workload in of_kind(*WORKLOAD_KINDS):
        for c in containers(workload):
            for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                for handler in ("httpGet", "tcpSocket"):
                    if handler in c.get(probe, {}):
                        port_number(c, c[probe][handler]["port"])


def test_k8s_gpu_worker_requests_one_gpu_and_waits_for_its_job():
    gpu = [w for w in of_kind("Deployment") for c in containers(w) if "decompose" in queues(c.get("command", []))]
    assert {w["metadata"]["name"] for w in gpu} == {"layerq-worker-gpu", "layerq-worker-gpu-48"}
    for worker in gpu:
        _check_gpu_worker(worker)


def _check_gpu_worker(worker: dict[str, Any]) -> None:
    (container,) = containers(worker)
    assert container["image"] == "layerq-worker"
    resources = container["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == 1
    assert resources["requests"]["nvidia.com/gpu"] == 1
    spec = worker["spec"]["template"]["spec"]
    limit = Settings.from_env(configmap_data()).job_time_limit_s
    assert spec["terminationGracePeriodSeconds"] >= limit, "SIGKILL would land before a running job ends"
    assert worker["spec"]["strategy"]["rollingUpdate"]["maxSurge"] == 0, "a surge pod would wait for a free GPU"
    env = {v["name"]: v.get("value") for v in container["env"]}
    assert env["LAYERQ_DEVICE"] == "cuda"
    assert option(container["command"], "--gpus") is None, "Kubernetes runs one pod per GPU, no supervisor"
    mounts = [m["mountPath"] for m in container["volumeMounts"]]
    assert any(env["HF_HOME"].startswith(m.rstrip("/") + "/") for m in mounts), "HF cache must be on the volume"


def test_k8s_memory_class_workers_land_on_cards_of_their_class_and_the_api_routes_to_it():
    from layerq.memory_classes import BY_NAME

    def mib(gib: float) -> int:
        return int(gib * 1024)

    def terms(worker: dict[str, Any], kind: str) -> list[dict[str, Any]]:
        affinity = worker["spec"]["template"]["spec"]["affinity"]["nodeAffinity"][kind]
        if kind.startswith("required"):
            return [e for t in affinity["nodeSelectorTerms"] for e in t["matchExpressions"]]
        return [e for p in affinity for e in p["preference"]["matchExpressions"]]

    small = {e["operator"]: int(e["values"][0]) for e in
             terms(named("Deployment", "layerq-worker-gpu-48"), "requiredDuringSchedulingIgnoredDuringExecution")
             if e["key"] == "nvidia.com/gpu.memory"}
    # GPU Feature Discovery's label is the card's memory in MiB: the band of the 48 GB class.
    assert small == {"Gt": mib(BY_NAME["48"].floor_gib) - 1, "Lt": mib(BY_NAME["80"].floor_gib)}
    (big,) = terms(named("Deployment", "layerq-worker-gpu"), "preferredDuringSchedulingIgnoredDuringExecution")
    assert big["key"] == "nvidia.com/gpu.memory" and int(big["values"][0]) == mib(BY_NAME["80"].floor_gib) - 1
    fleet = [c.name for c in Settings.from_env(configmap_data()).fleet_memory_classes]
    assert fleet == ["80", "48"], "the API must route to the classes the Deployments run"


KEDA_SCALEDOBJECT_48 = K8S / "optional" / "keda-scaledobject-48.yaml"


def test_keda_scales_the_48_gb_workers_on_their_class_queue():
    from layerq.celery_app import celery_config
    from layerq.memory_classes import BY_NAME
    from layerq.queues import decompose_queue

    (scaled,) = [d for d in yaml.safe_load_all(KEDA_SCALEDOBJECT_48.read_text()) if d]
    target = named("Deployment", scaled["spec"]["scaleTargetRef"]["name"])
    assert target["metadata"]["name"] == "layerq-worker-gpu-48"
    (trigger,) = scaled["spec"]["triggers"]
    prefix = celery_config(Settings.from_env(configmap_data()))["broker_transport_options"]["global_keyprefix"]
    assert trigger["metadata"]["listName"] == prefix + decompose_queue(BY_NAME["48"])
    other = [d for d in yaml.safe_load_all(KEDA_SCALEDOBJECT.read_text()) if d][0]
    assert other["metadata"]["name"] != scaled["metadata"]["name"]
    assert trigger["metadata"]["address"] == other["spec"]["triggers"][0]["metadata"]["address"]


def test_k8s_cpu_worker_runs_without_torch():
    (container,) = containers(named("Deployment", "layerq-worker-cpu"))
    assert container["image"] == "layerq-api"
    assert queues(container["command"]) == {"cpu"}
    assert "nvidia.com/gpu" not in container["resources"].get("limits", {})


def test_k8s_redis_persists_queued_jobs():
    redis = named("StatefulSet", "redis")
    (container,) = containers(redis)
    argv = container["args"]
    assert option(argv, "--appendonly") == "yes"
    assert option(argv, "--maxmemory-policy") == "noeviction"
    claim = {t["metadata"]["name"] for t in redis["spec"]["volumeClaimTemplates"]}
    assert any(m["mountPath"] == "/data" and m["name"] in claim for m in container["volumeMounts"])


def test_k8s_hpa_scales_an_existing_deployment_with_cpu_requests():
    for hpa in of_kind("HorizontalPodAutoscaler"):
        target = named(hpa["spec"]["scaleTargetRef"]["kind"], hpa["spec"]["scaleTargetRef"]["name"])
        assert all("cpu" in c["resources"]["requests"] for c in containers(target)), "Utilization needs requests"
        assert hpa["spec"]["minReplicas"] <= target["spec"]["replicas"] <= hpa["spec"]["maxReplicas"]


def test_k8s_disruption_budgets_select_one_workload_and_let_drains_proceed():
    pdbs = {p["metadata"]["name"]: p for p in of_kind("PodDisruptionBudget")}
    assert {"layerq-worker-gpu", "layerq-api"} <= set(pdbs)
    hpas = {h["spec"]["scaleTargetRef"]["name"]: h for h in of_kind("HorizontalPodAutoscaler")}
    for name, pdb in pdbs.items():
        spec = pdb["spec"]
        assert ("minAvailable" in spec) != ("maxUnavailable" in spec), name
        selector = spec["selector"]["matchLabels"]
        matches = [w for w in of_kind(*WORKLOAD_KINDS)
                   if selector.items() <= w["spec"]["template"]["metadata"]["labels"].items()]
        assert len(matches) == 1, f"PodDisruptionBudget {name} selects {len(matches)} workloads"
        target = matches[0]
        if "maxUnavailable" in spec:
            assert spec["maxUnavailable"] >= 1, f"{name}: a node drain could never evict a pod"
        else:
            fewest = hpas.get(target["metadata"]["name"], {}).get("spec", {}).get("minReplicas", target["spec"]["replicas"])
            assert spec["minAvailable"] < fewest, f"{name}: a node drain could never evict a pod"
    assert pdbs["layerq-worker-gpu"]["spec"]["maxUnavailable"] == 1, "GPU workers drain one at a time"


KEDA_SCALEDOBJECT = K8S / "optional" / "keda-scaledobject.yaml"


def test_keda_scales_the_gpu_workers_on_the_length_of_their_celery_queue():
    from urllib.parse import urlsplit

    from layerq.celery_app import celery_config
    from layerq.messages import DECOMPOSE_QUEUE

    (scaled,) = [d for d in yaml.safe_load_all(KEDA_SCALEDOBJECT.read_text()) if d]
    assert scaled["apiVersion"].startswith("keda.sh/") and scaled["kind"] == "ScaledObject"
    assert "namespace" not in scaled["metadata"]
    target = named("Deployment", scaled["spec"]["scaleTargetRef"]["name"])
    assert any("decompose" in queues(c.get("command", [])) for c in containers(target))
    assert not [h for h in of_kind("HorizontalPodAutoscaler")
                if h["spec"]["scaleTargetRef"]["name"] == target["metadata"]["name"]], "two autoscalers, one target"
    assert 1 <= scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"], "keep a loaded worker warm"
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "redis"
    meta = trigger["metadata"]
    settings = Settings.from_env(configmap_data())
    prefix = celery_config(settings)["broker_transport_options"]["global_keyprefix"]
    assert meta["listName"] == prefix + DECOMPOSE_QUEUE, "the Redis list Celery queues decompose jobs in"
    assert int(meta["listLength"]) >= 1
    url = urlsplit(settings.redis_url)
    host, port = meta["address"].rsplit(":", 1)
    assert host.split(".")[0] == url.hostname and int(port) == (url.port or 6379)
    assert meta.get("databaseIndex", "0") == (url.path.strip("/") or "0")
    named("Service", url.hostname)
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert not [r for r in kustomization["resources"] if "keda" in r], "KEDA is optional: its CRD may be absent"


def test_k8s_metrics_annotations_point_at_open_ports():
    metrics_port = Settings.from_env(configmap_data()).worker_metrics_port
    for workload in of_kind(*WORKLOAD_KINDS):
        annotations = workload["spec"]["template"]["metadata"].get("annotations", {})
        if annotations.get("prometheus.io/scrape") == "true":
            (container,) = containers(workload)
            port_number(container, int(annotations["prometheus.io/port"]))
    (gpu,) = containers(named("Deployment", "layerq-worker-gpu"))
    assert port_number(gpu, "metrics") == metrics_port, "the worker serves metrics on LAYERQ_WORKER_METRICS_PORT"


def test_compose_ha_profile_is_a_master_a_replica_and_three_sentinels_quorum_two():
    # docs/redis-ha.md: the `ha` profile shows a Redis that survives losing its master.
    svcs = {n: s for n, s in services().items() if "ha" in (s.get("profiles") or [])}
    sentinels = sorted(n for n in svcs if n.startswith("redis-sentinel-"))
    assert len(sentinels) == 3 and {"redis-ha-master", "redis-ha-replica"} <= set(svcs)
    replica = command_of(svcs["redis-ha-replica"])
    assert replica[replica.index("--replicaof") + 1:][:2] == ["redis-ha-master", "6379"]
    for name in ("redis-ha-master", "redis-ha-replica"):
        argv = command_of(svcs[name])
        assert option(argv, "--appendonly") == "yes" and option(argv, "--maxmemory-policy") == "noeviction"
    for name in sentinels:
        script = svcs[name]["command"][0]
        assert "sentinel monitor mymaster redis-ha-master 6379 2" in script and "--sentinel" in script
        assert svcs[name]["hostname"] == name and "healthcheck" in svcs[name]
    # The URL the compose comments and the docs give names exactly these Sentinels.
    url = "sentinel://" + ";sentinel://".join(f"{n}:26379" for n in sentinels) + "/0"
    assert url in COMPOSE_FILE.read_text() and url in (ROOT / "docs" / "redis-ha.md").read_text()
    from storage.client import parse_sentinel_url

    assert [h for h, _ in parse_sentinel_url(url).sentinels] == sentinels


def test_flower_follows_a_sentinel_master(monkeypatch):
    import runpy

    monkeypatch.setenv("LAYERQ_REDIS_URL", "sentinel://s1:26379;sentinel://s2:26379/0")
    monkeypatch.setenv("LAYERQ_REDIS_SENTINEL_MASTER", "jobs")
    conf = runpy.run_path(str(DEPLOY / "flower" / "layerq_celeryconfig.py"))
    assert conf["broker_transport_options"]["master_name"] == "jobs"
