"""The deployment files: Dockerfile (+ .dockerignore), the Helm chart, the systemd unit.

None of them can run here (no Docker engine, no cluster, no systemd), so the tests check
what they declare against the real CLI and gateway: the commands parse and run, the
healthcheck works against a real server, and the chart passes the real Helm v4's
`helm lint --strict` and renders with `helm template` (tests/tools.py installs Helm once
per machine) into objects that validate against the Kubernetes schemas
(kubernetes-validate) and carry the probes, mounts, init container, grace period,
secret env and ports the gateway needs.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from gateway.cli import make_parser
from gateway.manifest.load import parse_text
from schemas.manifest import ServerSettings
from tests import tools
from tests.conftest import ROOT, write_manifest

pytestmark = pytest.mark.timeout(120)

CHART = ROOT / "deploy" / "helm" / "nexa-gateway"
KUBERNETES = "1.35"  # the version Helm v4.1's client (and the kubectl beside it) targets
# Custom resources kubernetes-validate has no schema for; their fields are asserted below.
CUSTOM_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}
OPTIONS = {"apiKeys": {"keys": ["a-long-key-123", {"key": "limited-key-12", "models": ["smollm2"]}]},
           "cache": {"persistence": {"enabled": True}}, "offline": True,
           "autoscaling": {"enabled": True}, "metrics": {"serviceMonitor": {"enabled": True}}}


def dockerfile() -> dict:
    """The Dockerfile's instructions: stages (name -> [(instruction, argument)]) and the
    runtime stage's ENV, CMD, ENTRYPOINT, USER, VOLUME, HEALTHCHECK."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    stages: dict[str, list[tuple[str, str]]] = {}
    current = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, argument = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            current = argument.split()[-1] if " AS " in argument.upper() else f"stage{len(stages)}"
            stages[current] = []
        if current is not None:
            stages[current].append((instruction, argument.strip()))
    runtime = stages[list(stages)[-1]]
    info: dict = {"stages": stages, "ENV": {}}
    for instruction, argument in runtime:
        if instruction == "ENV":
            info["ENV"].update(dict(token.split("=", 1) for token in shlex.split(argument)))
        elif instruction in ("CMD", "ENTRYPOINT", "VOLUME"):
            info[instruction] = json.loads(argument)
        elif instruction in ("USER", "HEALTHCHECK", "EXPOSE", "WORKDIR"):
            info[instruction] = argument
    return info


# -- Dockerfile ------------------------------------------------------------------------------------


def test_dockerfile_is_multi_stage_non_root_with_volumes():
    info = dockerfile()
    assert list(info["stages"]) == ["builder", "runtime"]
    builder = " ".join(arg for ins, arg in info["stages"]["builder"] if ins == "RUN")
    assert "pip wheel --wheel-dir /wheels" in builder and ".[image]" in builder
    runtime_runs = " ".join(arg for ins, arg in info["stages"]["runtime"] if ins == "RUN")
    assert "--no-index" in runtime_runs and "build-essential" not in runtime_runs
    assert ("COPY", "--from=builder /wheels /tmp/wheels") in info["stages"]["runtime"]
    assert info["USER"] not in ("root", "0") and "useradd" in runtime_runs
    assert info["ENTRYPOINT"] == ["nexa"]
    assert info["ENV"]["NEXA_CACHE_ROOT"] in info["VOLUME"] and "/etc/nexa" in info["VOLUME"]
    assert info["ENV"]["NEXA_HOST"] == "0.0.0.0" and info["EXPOSE"] == info["ENV"]["NEXA_PORT"]
    args = make_parser().parse_args(info["CMD"])  # the CLI accepts the image's command
    assert args.command == "server" and args.config == "/etc/nexa/nexa.yaml" and args.offline


def test_dockerignore_keeps_what_the_image_copies():
    ignored = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    copied = []
    for stage in dockerfile()["stages"].values():
        for instruction, argument in stage:
            if instruction == "COPY" and not argument.startswith("--from"):
                copied += [a for a in argument.split()[:-1] if not a.startswith("--")]
    assert {"pyproject.toml", "README.md", "schemas/", "gateway/", "nexa.yaml.example"} <= set(copied)
    for path in copied:
        assert (ROOT / path).exists(), path
        assert path.rstrip("/") not in ignored, path
    assert {".venv", ".git", "tests"} <= set(ignored)


def test_the_image_env_validates_its_default_manifest():
    env = {**os.environ, **dockerfile()["ENV"], "NEXA_CACHE_ROOT": "/nonexistent"}
    result = subprocess.run([sys.executable, "-m", "gateway.cli", "check", "-c", "nexa.yaml.example"], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("nexa.yaml.example: ok")


@pytest.mark.e2e
def test_the_healthcheck_command_passes_against_a_server_and_fails_without_one(tmp_path, start_server):
    healthcheck = dockerfile()["HEALTHCHECK"]
    assert "--interval=" in healthcheck and "/health" in healthcheck
    command = json.loads(healthcheck.split("CMD", 1)[1].strip())
    assert command[0] == "python"
    path = write_manifest(tmp_path / "nexa.yaml", [{"name": "a", "source": "/dev/null",
                                                      "backend": "tests.fakes:FakeBackend"}])
    server = start_server(["-c", str(path)])
    run = lambda port: subprocess.run([sys.executable, *command[1:]], env={**os.environ, "NEXA_PORT": str(port)},
                                      capture_output=True, timeout=30)
    assert run(server.port).returncode == 0
    server.stop()
    assert run(server.port).returncode != 0


# -- Helm chart -------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def helm() -> str:
    try:
        return str(tools.helm())
    except tools.ToolError as exc:
        pytest.fail(f"no helm: {exc}")


def run_helm(*args: str, values: dict | None = None) -> str:
    """Run the real helm on the chart with these values (a values file, as users pass them)."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as file:
        yaml.safe_dump(values or {}, file)
        file.flush()
        done = subprocess.run([helm(), *args, str(CHART), "-f", file.name], capture_output=True, text=True,
                              timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def objects(values: dict | None = None) -> dict[str, dict]:
    """`helm template` of the chart, each object validated against the Kubernetes schemas."""
    import kubernetes_validate

    rendered = [doc for doc in yaml.safe_load_all(run_helm("template", "rel", values=values)) if doc]
    for doc in rendered:
        try:
            kubernetes_validate.validate(doc, KUBERNETES, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            assert (doc["apiVersion"], doc["kind"]) in CUSTOM_KINDS, f"no schema for {doc['apiVersion']} {doc['kind']}"
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{doc['kind']} {doc['metadata']['name']} is not a valid Kubernetes object: {exc.message} "
                        f"at {'.'.join(map(str, exc.path))}")
    kinds = [doc["kind"] for doc in rendered]
    assert len(kinds) == len(set(kinds)), kinds
    return {doc["kind"]: doc for doc in rendered}


@pytest.mark.parametrize("values", [None, OPTIONS, {"existingConfigMap": "from-git", "apiKeys": {"existingSecret": "k"}}],
                         ids=["defaults", "options", "external"])
def test_chart_passes_helm_lint_strict(values):
    out = run_helm("lint", "--strict", values=values)
    assert "1 chart(s) linted, 0 chart(s) failed" in out, out
    assert "[WARNING]" not in out and "[ERROR]" not in out, out


def test_invalid_objects_are_caught():
    """The schema check can fail: a chart value of the wrong type makes an invalid Deployment."""
    with pytest.raises(pytest.fail.Exception, match="not a valid Kubernetes object"):
        objects({"readinessProbe": {"periodSeconds": "often"}})


def container(deployment: dict, name: str) -> dict:
    spec = deployment["spec"]["template"]["spec"]
    return next(c for c in spec["containers"] + spec.get("initContainers", []) if c["name"] == name)


def env_of(c: dict) -> dict:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c["env"]}


def test_chart_defaults_render_a_reloadable_gateway(monkeypatch):
    rendered = objects()
    assert set(rendered) == {"ConfigMap", "Deployment", "Service"}
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    deployment = rendered["Deployment"]
    pod = deployment["spec"]["template"]
    gateway, prefetch = container(deployment, "gateway"), container(deployment, "prefetch")
    # probes
    assert gateway["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    assert gateway["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert gateway["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    assert rendered["Service"]["spec"]["ports"][0]["targetPort"] == "http"
    # the manifest: a whole-folder mount (subPath mounts never see ConfigMap updates), reload on, no checksum
    mounts = {m["mountPath"]: m for m in gateway["volumeMounts"]}
    assert mounts["/etc/nexa"]["name"] == "manifest" and "subPath" not in mounts["/etc/nexa"]
    assert mounts["/var/cache/nexa"]["name"] == "cache"
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["manifest"]["configMap"]["name"] == rendered["ConfigMap"]["metadata"]["name"]
    assert "emptyDir" in volumes["cache"]
    assert not any("checksum" in key for key in (pod["metadata"].get("annotations") or {}))
    env = env_of(gateway)
    assert env["NEXA_RELOAD"] == "true" and env["NEXA_CACHE_ROOT"] == "/var/cache/nexa"
    args = make_parser().parse_args(gateway["args"])
    assert args.config == "/etc/nexa/nexa.yaml" and not args.offline and not args.reload  # no code reloader
    # init container pre-fetches into the same cache, with the same environment
    assert prefetch["command"] == ["nexa", "pull", "-c", "/etc/nexa/nexa.yaml"]
    assert make_parser().parse_args(prefetch["command"][1:]).command == "pull"
    assert env_of(prefetch) == env and prefetch["volumeMounts"] == gateway["volumeMounts"]
    # drain: the pod is given the gateway's grace plus the preStop sleep plus a margin
    grace = pod["spec"]["terminationGracePeriodSeconds"]
    assert float(env["NEXA_SHUTDOWN_GRACE_S"]) == values["shutdownGraceSeconds"]
    assert grace == values["shutdownGraceSeconds"] + values["preStopSleepSeconds"] + values["terminationMarginSeconds"]
    assert grace > ServerSettings(shutdown_grace_s=values["shutdownGraceSeconds"]).shutdown_grace_s
    assert gateway["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", str(values["preStopSleepSeconds"])]
    assert gateway["resources"] == values["resources"]
    assert pod["metadata"]["annotations"]["prometheus.io/path"] == "/metrics"
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    # the ConfigMap's manifest is one the gateway accepts with the pod's environment
    manifest = rendered["ConfigMap"]["data"]["nexa.yaml"]
    for key, value in env.items():
        if isinstance(value, str):
            monkeypatch.setenv(key, value)
    served = parse_text(manifest)
    assert served.server.reload and served.server.host == "0.0.0.0" and served.models[0].name == "smollm2"


def test_chart_options_render_secret_keys_pvc_hpa_and_service_monitor(monkeypatch):
    rendered = objects(OPTIONS)
    assert set(rendered) == {"ConfigMap", "Deployment", "Service", "Secret", "PersistentVolumeClaim",
                             "HorizontalPodAutoscaler", "ServiceMonitor"}
    deployment = rendered["Deployment"]
    gateway = container(deployment, "gateway")
    ref = env_of(gateway)["NEXA_API_KEYS"]["secretKeyRef"]
    secret = rendered["Secret"]
    assert ref["name"] == secret["metadata"]["name"]
    monkeypatch.setenv("NEXA_API_KEYS", secret["stringData"][ref["key"]])  # what the pod's environment holds
    parsed = ServerSettings().api_keys
    assert [(k.key, k.models) for k in parsed] == [("a-long-key-123", None), ("limited-key-12", ["smollm2"])]
    assert "--offline" in gateway["args"] and "replicas" not in deployment["spec"]
    claim = deployment["spec"]["template"]["spec"]["volumes"][1]["persistentVolumeClaim"]["claimName"]
    assert claim == rendered["PersistentVolumeClaim"]["metadata"]["name"]
    assert rendered["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    monitor = rendered["ServiceMonitor"]["spec"]
    assert monitor["endpoints"] == [{"port": "http", "path": "/metrics", "interval": "30s"}]
    assert monitor["selector"]["matchLabels"].items() <= rendered["Service"]["metadata"]["labels"].items()

    external = objects({"existingConfigMap": "from-git", "apiKeys": {"existingSecret": "keys"}})
    assert "ConfigMap" not in external and "Secret" not in external
    spec = external["Deployment"]["spec"]["template"]["spec"]
    assert spec["volumes"][0]["configMap"]["name"] == "from-git"
    assert env_of(container(external["Deployment"], "gateway"))["NEXA_API_KEYS"]["secretKeyRef"]["name"] == "keys"


# -- systemd ------------------------------------------------------------------------------------------


def unit_file(path: Path) -> dict[str, list[str]]:
    """systemd's key=value lines; a key may repeat (Environment=)."""
    entries: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            entries.setdefault(key.strip(), []).append(value.strip())
    return entries


def test_systemd_unit_runs_commands_the_cli_accepts():
    unit = unit_file(ROOT / "deploy" / "systemd" / "nexa.service")
    start = shlex.split(unit["ExecStart"][0])
    assert start[0].endswith("/nexa")
    args = make_parser().parse_args(start[1:])
    assert args.command == "server" and args.offline and args.config
    assert make_parser().parse_args(shlex.split(unit["ExecStartPre"][0])[1:]).command == "pull"
    assert unit["ExecReload"] == ["/bin/kill -HUP $MAINPID"] and unit["KillSignal"] == ["SIGTERM"]
    assert int(unit["TimeoutStopSec"][0]) > ServerSettings.model_fields["shutdown_grace_s"].default
    env = dict(item.split("=", 1) for item in unit["Environment"])
    assert env["NEXA_RELOAD"] == "true" and env["NEXA_CACHE_ROOT"] == "/var/cache/nexa"
    assert unit["User"] == ["nexa"]
