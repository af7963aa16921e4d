"""Static checks of the deployment files: linters, schemas, and the numbers that must agree across them.

The container smoke test itself (build, compose up, a real photo through the stack) is `.ci/docker.sh`; these run
in the default suite, in about a second, without a Docker engine.
"""

from __future__ import annotations

import http.server
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from service.app import create_app
from service.config import Settings

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
K8S = DOCKER / "k8s"
DOCKERFILES = [DOCKER / "Dockerfile", DOCKER / "redis" / "Dockerfile", DOCKER / "prometheus" / "Dockerfile"]
HADOLINT = Path(sys.executable).with_name("hadolint")
K8S_VERSION = "1.30"
# KIND_* variables read by something other than the service's Settings
NON_SETTINGS_VARS = {"KIND_HEALTHCHECK_URL"}


def k8s_documents() -> list[dict]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


def k8s_object(kind: str, name: str = "kind-serve") -> dict:
    return next(d for d in k8s_documents() if d["kind"] == kind and d["metadata"]["name"] == name)


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def hadolint(*paths: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(HADOLINT), "--no-color", *map(str, paths)], capture_output=True, text=True, timeout=60)


def test_dockerfiles_pass_hadolint() -> None:
    result = hadolint(*DOCKERFILES)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_reports_a_bad_dockerfile(tmp_path: Path) -> None:
    # control: the linter really runs and fails, so the check above can fail too
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian\nRUN apt-get install curl\nUSER kind\n")
    result = hadolint(bad)
    assert result.returncode != 0
    assert "DL3008" in result.stdout and "DL3006" in result.stdout


def test_kustomization_lists_every_manifest() -> None:
    listed = set(yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk


@pytest.mark.parametrize("doc", k8s_documents(), ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_k8s_manifest_matches_schema(doc: dict) -> None:
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_k8s_schema_check_rejects_a_typo() -> None:
    deployment = k8s_object("Deployment")
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessprobe"] = {"httpGet": {"path": "/readyz"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_termination_grace_covers_prestop_and_drain() -> None:
    """SIGTERM comes after preStop; the pod must then have the service's whole drain time before SIGKILL."""
    pod = k8s_object("Deployment")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    drain = float(k8s_object("ConfigMap")["data"]["KIND_SHUTDOWN_GRACE_S"])
    assert pod["terminationGracePeriodSeconds"] >= float(command[1]) + drain + 5


def test_compose_stop_grace_covers_drain() -> None:
    drain = Settings().shutdown_grace_s  # compose leaves KIND_SHUTDOWN_GRACE_S at the service default
    for name in ("api", "api-gpu"):
        grace = compose()["services"][name]["stop_grace_period"]
        assert grace.endswith("s") and float(grace[:-1]) >= drain + 5, (name, grace, drain)


def configured_env() -> list[tuple[str, dict[str, str]]]:
    services = compose()["services"]
    envs = [(f"compose:{name}", services[name]["environment"]) for name in ("api", "api-gpu")]
    envs.append(("k8s:ConfigMap", k8s_object("ConfigMap")["data"]))
    return envs


@pytest.mark.parametrize(("where", "env"), configured_env(), ids=[w for w, _ in configured_env()])
def test_configured_variables_are_real_settings(where: str, env: dict[str, str]) -> None:
    """Settings ignores unknown KIND_* names, so a typo would silently do nothing: catch it here."""
    fields = {f"KIND_{name.upper()}" for name in Settings.model_fields}
    unknown = {k for k in env if k.startswith("KIND_")} - fields - NON_SETTINGS_VARS
    assert not unknown, f"{where}: not service settings: {sorted(unknown)}"
    # values with compose's ${VAR:-default} substitution resolved to their defaults must validate
    values = {}
    for key, value in env.items():
        text = str(value)
        if text.startswith("${") and ":-" in text:
            text = text.split(":-", 1)[1].rstrip("}")
        if key in fields:
            values[key[len("KIND_") :].lower()] = text
    Settings(**values)


def test_probe_and_scrape_paths_are_service_routes() -> None:
    routes = set(create_app(Settings()).openapi()["paths"])
    container = k8s_object("Deployment")["spec"]["template"]["spec"]["containers"][0]
    probe_paths = {container[p]["httpGet"]["path"] for p in ("startupProbe", "readinessProbe", "livenessProbe")}
    scrape = yaml.safe_load((DOCKER / "prometheus" / "prometheus.yml").read_text())["scrape_configs"][0]
    assert probe_paths | {scrape["metrics_path"], "/readyz"} <= routes
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"


def test_container_port_agrees_everywhere() -> None:
    dockerfile = (DOCKER / "Dockerfile").read_text()
    assert "EXPOSE 8000" in dockerfile and '"--port", "8000"' in dockerfile
    container = k8s_object("Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert container["ports"][0]["containerPort"] == 8000
    scrape = yaml.safe_load((DOCKER / "prometheus" / "prometheus.yml").read_text())["scrape_configs"][0]
    assert scrape["dns_sd_configs"][0]["port"] == 8000
    for name in ("api", "api-gpu"):
        assert all(p.endswith(":8000") for p in compose()["services"][name]["ports"])


def test_compose_publishes_on_loopback_by_default() -> None:
    for name, service in compose()["services"].items():
        for port in service.get("ports", []):
            assert port.startswith("${KIND_BIND:-127.0.0.1}:"), (name, port)


def test_gpu_variant_reserves_gpus() -> None:
    gpu = compose()["services"]["api-gpu"]
    assert gpu["profiles"] == ["gpu"]
    assert gpu["build"]["args"]["VARIANT"] == "cuda"
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    limits = k8s_object("Deployment")["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == 1


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self.send_response(self.status if self.path == "/readyz" else 404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[http.server.HTTPServer]:
    server = http.server.HTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(("status", "exit_code"), [(200, 0), (503, 1)])
def test_healthcheck_follows_readyz(health_server: http.server.HTTPServer, status: int, exit_code: int) -> None:
    _Health.status = status
    url = f"http://127.0.0.1:{health_server.server_address[1]}/readyz"
    env = {"KIND_HEALTHCHECK_URL": url, "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, str(DOCKER / "healthcheck.py")], env=env, capture_output=True, timeout=30)
    assert result.returncode == exit_code


def test_healthcheck_fails_when_nothing_listens(health_server: http.server.HTTPServer) -> None:
    port = health_server.server_address[1]
    health_server.shutdown()
    health_server.server_close()
    env = {"KIND_HEALTHCHECK_URL": f"http://127.0.0.1:{port}/readyz", "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, str(DOCKER / "healthcheck.py")], env=env, capture_output=True, timeout=30)
    assert result.returncode == 1
    assert b"not ready" in result.stderr


def test_hpa_scales_before_pods_reject_work() -> None:
    """The queue-depth target must sit below the admission limit, or pods answer 503 before the HPA reacts."""
    hpa = k8s_object("HorizontalPodAutoscaler")
    metric = hpa["spec"]["metrics"][0]["pods"]
    assert metric["metric"]["name"] == "kind_pending_requests"
    max_pending = int(k8s_object("ConfigMap")["data"]["KIND_MAX_PENDING_REQUESTS"])
    assert float(metric["target"]["averageValue"]) <= max_pending / 2
    assert hpa["spec"]["minReplicas"] >= 2  # with the PDB's maxUnavailable 1, a drain never empties the Service
