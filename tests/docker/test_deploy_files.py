"""Static checks of the deployment files: linters, schemas, and the numbers that must agree across them.

The container smoke test itself (build, compose up, a real photo through the stack) is `.ci/docker.sh`; these run
in the default suite, in about a second, without a Docker engine.
"""

from __future__ import annotations

import http.server
import re
import stat
import subprocess
import sys
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from kind_serve.service.app import create_app
from kind_serve.service.config import Settings, split_address
from tests.docker import container_smoke

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
K8S = DOCKER / "k8s"
DOCKERFILES = [DOCKER / "Dockerfile", DOCKER / "redis" / "Dockerfile", DOCKER / "prometheus" / "Dockerfile"]
HADOLINT = Path(sys.executable).with_name("hadolint")
K8S_VERSION = "1.30"
# KIND_* variables read by something other than the service's Settings
NON_SETTINGS_VARS = {"KIND_HEALTHCHECK_URL"}
# stand-ins for values that deployments take from secrets (compose secret files, the Kubernetes Secret)
SECRET_STAND_INS = {
    "auth_tokens": "stand-in-token-0123456789abcdef",
    "redis_password": "stand-in-password",
    "store_key": "stand-in-store-key-0123456789abcdef0123",
}
SECRETS = {"KIND_AUTH_TOKENS", "KIND_REDIS_PASSWORD", "KIND_STORE_KEY"}


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


class _ComposeLoader(yaml.SafeLoader):
    """Compose v2's ``!reset`` tag (used by the CI override) read as the value it resets to."""


_ComposeLoader.add_constructor("!reset", lambda loader, node: loader.construct_sequence(node))


def compose_ci() -> dict:
    return yaml.load((DOCKER / "compose.ci.yml").read_text(), Loader=_ComposeLoader)  # noqa: S506 (a SafeLoader)


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


def resolved_settings(env: dict[str, str], *, host: str, secrets: bool = True) -> Settings:
    """The Settings a container gets from ``env`` (compose defaults resolved), secrets as stand-ins."""
    fields = {f"KIND_{name.upper()}" for name in Settings.model_fields}
    values = {}
    for key, value in env.items():
        text = str(value)
        if text.startswith("${") and ":-" in text:
            text = text.split(":-", 1)[1].rstrip("}")
        name = key.removesuffix("_FILE") if key.endswith("_FILE") else key
        if name in fields:
            field = name[len("KIND_") :].lower()
            values[field] = SECRET_STAND_INS[field] if key.endswith("_FILE") else text
    if secrets:  # the Kubernetes Secret, compose's secret files
        values.update({k.lower(): v for k, v in SECRET_STAND_INS.items() if k.lower() not in values})
    else:
        values = {k: v for k, v in values.items() if k not in SECRET_STAND_INS}
    return Settings(host=host, **values)


@pytest.mark.parametrize(("where", "env"), configured_env(), ids=[w for w, _ in configured_env()])
def test_configured_variables_are_real_settings(where: str, env: dict[str, str]) -> None:
    """Settings ignores unknown KIND_* names, so a typo would silently do nothing: catch it here."""
    fields = {f"KIND_{name.upper()}" for name in Settings.model_fields}
    names = {k.removesuffix("_FILE") if k.endswith("_FILE") else k for k in env if k.startswith("KIND_")}
    unknown = names - fields - NON_SETTINGS_VARS
    assert not unknown, f"{where}: not service settings: {sorted(unknown)}"
    # the API listens on 0.0.0.0 in its container: with the deployment's secrets it must validate ...
    settings = resolved_settings(env, host="0.0.0.0")
    assert settings.auth_enabled and settings.store_key is not None
    # ... and without them it must refuse to start, never fall back to serving without auth
    with pytest.raises(ValueError):
        resolved_settings(env, host="0.0.0.0", secrets=False)


def test_ci_variables_are_real_settings() -> None:
    """The CI stack's service variables, as the deployments' above (their values need docker.sh's ports)."""
    fields = {f"KIND_{name.upper()}" for name in Settings.model_fields}
    env = compose_ci()["services"]["api"]["environment"]
    unknown = {k for k in env if k.startswith("KIND_")} - fields - NON_SETTINGS_VARS
    assert not unknown, f"compose.ci.yml: not service settings: {sorted(unknown)}"


@pytest.mark.parametrize(("where", "env"), configured_env(), ids=[w for w, _ in configured_env()])
def test_secrets_are_never_plain_configuration(where: str, env: dict[str, str]) -> None:
    """Tokens, the Redis password and the store key come from secrets, never from a default or the ConfigMap."""
    assert not SECRETS & set(env), f"{where}: a secret set as plain configuration: {sorted(SECRETS & set(env))}"
    assert urllib.parse.urlsplit(env["KIND_REDIS_URL"]).password is None, f"{where}: a password in KIND_REDIS_URL"


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
    pod = k8s_object("Deployment")["spec"]["template"]
    ports = {p["name"]: p["containerPort"] for p in pod["spec"]["containers"][0]["ports"]}
    assert ports["http"] == 8000
    for name in ("api", "api-gpu"):
        assert all(p.endswith(":8000") for p in compose()["services"][name]["ports"])


def test_prometheus_scrapes_the_metrics_port_everywhere() -> None:
    """/metrics lives on its own port in both deployments; every place that names that port must agree."""
    address = k8s_object("ConfigMap")["data"]["KIND_METRICS_ADDRESS"]
    metrics_port = split_address(address)[1]
    assert compose()["services"]["api"]["environment"]["KIND_METRICS_ADDRESS"] == address
    scrape = yaml.safe_load((DOCKER / "prometheus" / "prometheus.yml").read_text())["scrape_configs"][0]
    assert scrape["dns_sd_configs"][0]["port"] == metrics_port
    pod = k8s_object("Deployment")["spec"]["template"]
    ports = {p["name"]: p["containerPort"] for p in pod["spec"]["containers"][0]["ports"]}
    assert ports["metrics"] == metrics_port
    assert int(pod["metadata"]["annotations"]["prometheus.io/port"]) == metrics_port
    # the API port no longer serves /metrics there; the metrics port is never published on the host
    assert resolved_settings(k8s_object("ConfigMap")["data"], host="0.0.0.0").metrics_address == address
    for name in ("api", "api-gpu"):
        assert not any(p.endswith(f":{metrics_port}") for p in compose()["services"][name]["ports"])


def test_compose_publishes_on_loopback_by_default() -> None:
    """The API on KIND_BIND, Prometheus on its own KIND_PROMETHEUS_BIND (exposing the API leaves it on
    loopback), Redis never."""
    binds = {"api": "KIND_BIND", "api-gpu": "KIND_BIND", "prometheus": "KIND_PROMETHEUS_BIND"}
    for name, service in compose()["services"].items():
        for port in service.get("ports", []):
            assert port.startswith(f"${{{binds[name]}:-127.0.0.1}}:"), (name, port)
    assert "ports" not in compose()["services"]["redis"]


def redis_acl() -> str:
    script = (DOCKER / "redis" / "start-redis.sh").read_text()
    return script.split("<<ACL\n", 1)[1].split("\nACL\n", 1)[0]


def test_redis_is_locked_down_everywhere() -> None:
    """Protected mode on, no unauthenticated user, one ACL user held to the store's and the job queue's commands
    and key prefix."""
    dockerfile = (DOCKER / "redis" / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["/usr/local/bin/start-redis.sh"]' in dockerfile
    redis = k8s_object("StatefulSet", "kind-serve-redis")["spec"]["template"]["spec"]["containers"][0]
    ci = compose_ci()["services"]["redis"]
    cmd = dockerfile.split("\nCMD ", 1)[1]
    for where, args in (("Dockerfile", cmd), ("k8s", " ".join(redis["args"])), ("CI", " ".join(ci["command"]))):
        assert re.search(r'"?--protected-mode"?,? "?yes', args), where
        assert "redis-server" not in args, f"{where}: the arguments would start a second, unlocked redis-server"
    acl = redis_acl().splitlines()
    assert acl[0].split()[:3] == ["user", "default", "off"] and "nopass" not in acl[0]
    user = acl[1].split()
    assert user[:3] == ["user", "$user", "on"] and user[3].startswith("#$")  # a hashed password, from the file
    assert "~kind:*" in user and "-@all" in user and "allkeys" not in user and "~*" not in user
    allowed = {word[1:] for word in user if word.startswith("+")}
    store = {"get", "set", "del", "ping", "select"}
    queue = {"xadd", "xreadgroup", "xautoclaim", "xclaim", "xack", "xdel", "xpending", "xgroup|create"}
    queue |= {"zadd", "zrem", "zremrangebyscore", "zcard", "expireat", "multi", "exec"}
    assert allowed <= store | queue, allowed  # no eval, keys, scan, config, flushall …
    # the service's key prefix is the one the ACL allows
    assert 'f"kind:{key}"' in (ROOT / "service" / "store.py").read_text()
    assert 'STREAM = "kind:' in (ROOT / "service" / "store.py").read_text()
    for probe in (ci["healthcheck"]["test"], redis["readinessProbe"]["exec"]["command"]):
        assert probe[-1] == "/usr/local/bin/healthcheck.sh", probe


def test_secrets_are_required_everywhere() -> None:
    pod = k8s_object("Deployment")["spec"]["template"]["spec"]
    refs = [e["secretRef"] for e in pod["containers"][0]["envFrom"] if "secretRef" in e]
    assert refs == [{"name": "kind-serve-auth", "optional": False}]
    redis = k8s_object("StatefulSet", "kind-serve-redis")["spec"]["template"]["spec"]
    volume = next(v for v in redis["volumes"] if "secret" in v)["secret"]
    assert volume["secretName"] == "kind-serve-auth" and volume["optional"] is False
    assert volume["items"] == [{"key": "KIND_REDIS_PASSWORD", "path": "redis_password"}]
    services = compose()["services"]
    for name in ("api", "api-gpu"):
        env = services[name]["environment"]
        assert set(services[name]["secrets"]) == {"auth_tokens", "redis_password", "store_key"}
        for secret in ("auth_tokens", "redis_password", "store_key"):
            assert env[f"KIND_{secret.upper()}_FILE"] == f"/run/secrets/{secret}"
    assert services["redis"]["secrets"] == ["redis_password"]
    declared = compose()["secrets"]
    assert set(declared) == {"auth_tokens", "redis_password", "store_key"}
    assert all(set(s) == {"file"} for s in declared.values()), "secrets come from files, never defaults"


def test_make_secrets_writes_what_compose_mounts(tmp_path: Path) -> None:
    target = tmp_path / "secrets"
    script = DOCKER / "make-secrets.sh"
    subprocess.run(["sh", str(script), str(target)], check=True, capture_output=True, timeout=30)
    names = {path.name for path in target.iterdir()}
    files = {Path(s["file"]).name for s in compose()["secrets"].values()}
    assert names == files
    assert stat.S_IMODE(target.stat().st_mode) == 0o700
    values = {}
    for path in target.iterdir():
        values[path.name] = path.read_text()
        assert stat.S_IMODE(path.stat().st_mode) == 0o644  # readable by the containers' own users
        assert len(values[path.name].strip()) >= 32
    # what the files hold passes the settings' own rules, and a rerun keeps them (clients keep their token)
    Settings(auth_tokens=values["auth_tokens"], store_key=values["store_key"].strip())
    subprocess.run(["sh", str(script), str(target)], check=True, capture_output=True, timeout=30)
    assert {p.name: p.read_text() for p in target.iterdir()} == values


def test_network_policies_admit_only_what_they_must() -> None:
    policies = {d["metadata"]["name"]: d["spec"] for d in k8s_documents() if d["kind"] == "NetworkPolicy"}
    deny = policies["kind-serve-default-deny"]
    assert deny["podSelector"] == {} and deny["policyTypes"] == ["Ingress"] and "ingress" not in deny
    api_labels = k8s_object("Deployment")["spec"]["template"]["metadata"]["labels"]
    redis_labels = k8s_object("StatefulSet", "kind-serve-redis")["spec"]["template"]["metadata"]["labels"]
    redis = policies["kind-serve-redis"]
    assert redis["podSelector"]["matchLabels"] == redis_labels
    [rule] = redis["ingress"]
    assert rule["from"] == [{"podSelector": {"matchLabels": api_labels}}]
    assert rule["ports"] == [{"protocol": "TCP", "port": 6379}]
    api = policies["kind-serve-api"]
    assert api["podSelector"]["matchLabels"] == api_labels
    open_rule, scrape_rule = api["ingress"]
    assert "from" not in open_rule and open_rule["ports"] == [{"protocol": "TCP", "port": "http"}]
    assert scrape_rule["ports"] == [{"protocol": "TCP", "port": "metrics"}]
    assert scrape_rule["from"][0]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "prometheus"}
    ports = {p["name"] for p in k8s_object("Deployment")["spec"]["template"]["spec"]["containers"][0]["ports"]}
    assert {"http", "metrics"} <= ports


def test_ci_smoke_test_gets_every_option_it_requires() -> None:
    """.ci/docker.sh must pass the smoke test each required option (it cannot run here without an engine)."""
    script = (ROOT / ".ci" / "docker.sh").read_text()
    block = script.split("smoke=(", 1)[1].split(")\n", 1)[0]
    given = set(re.findall(r"(--[a-z-]+)", block))
    parser = container_smoke.build_parser()
    required = {a.option_strings[0] for a in parser._actions if a.required}
    assert required <= given, required - given
    ci = compose_ci()["services"]
    for variable in re.findall(r"\$\{(KIND_CI_[A-Z_]+):\?\}", (DOCKER / "compose.ci.yml").read_text()):
        assert f"export {variable}=" in script or f"{variable}=$" in script, f"{variable} not exported by docker.sh"
    assert ci["api"]["environment"]["KIND_REDIS_URL"].startswith("redis://kind@")
    assert "KIND_SECRETS_DIR" in script and "make-secrets.sh" in script


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
