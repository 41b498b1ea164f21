"""The Kubernetes manifests and the image (deploy/) agree with the code: ports, command lines, probes,
environment variables, the Envoy bootstrap, autoscalers. Static checks: no cluster and no Docker are needed
(the optional `kubectl kustomize` render works offline)."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import json
import re
import shlex
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from callsense.config import Config, load_config, split_host_port
from callsense.storage import REGION_URL_PREFIX
from tools.envoy_config import MeshLayout, build
from tools.supervisor import envoy_binary
from tools.up import self_signed_certificate

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
DOCKERFILE = DEPLOY / "Dockerfile"
CODE_PACKAGES = ("callsense", "asr_service", "chopper_service", "scorer_service", "gateway", "postcall")

# Deployment -> the servers its process runs: (command-line flag of the address, container port name,
# the callsense.config.Config field whose default port it must listen on). Envoy's port is in its bootstrap.
SERVERS: dict[str, list[tuple[str, str, str]]] = {
    "asr": [("--bind", "grpc", "asr_addr")],
    "chopper": [("--bind", "grpc", "chopper_addr")],
    "scorer": [("--bind", "grpc", "scorer_addr")],
    "postcall": [("--bind", "grpc", "postcall_addr")],
    "gateway": [("--http", "http", "gateway_http"), ("--grpc", "grpc", "gateway_grpc")],
}
ENVOY = "envoy"
AUTOSCALED = ("scorer", "asr", "postcall")
"""The architecture asks for CPU-based scaling of these Deployments (post-call: docs/capacity.md)."""

Doc = dict[str, Any]


# --- loading -------------------------------------------------------------------------------------------


def _documents(path: Path) -> list[Doc]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc is not None]


KUSTOMIZATION: Doc = yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))
RESOURCES: list[Doc] = [doc for name in KUSTOMIZATION["resources"] for doc in _documents(K8S / name)]
TEMPLATES: list[Doc] = [doc for path in sorted(K8S.glob("*.example.yaml")) for doc in _documents(path)]
"""Applied by hand (the database Secret), never by the kustomization."""


def _of_kind(kind: str, docs: list[Doc] = RESOURCES) -> dict[str, Doc]:
    return {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == kind}


DEPLOYMENTS = {**_of_kind("Deployment"), **_of_kind("StatefulSet")}
"""The workloads by name: Deployments, and the gateway's StatefulSet (its own volume for the spool)."""
SERVICES = _of_kind("Service")


def _containers() -> Iterator[tuple[str, Doc]]:
    for name, deployment in DEPLOYMENTS.items():
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            yield name, container


def _container(deployment: str) -> Doc:
    (container,) = DEPLOYMENTS[deployment]["spec"]["template"]["spec"]["containers"]
    return container


def _container_ports(deployment: str) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in _container(deployment).get("ports", [])}


def _default_port(field: str) -> int:
    value = getattr(Config(), field)
    return value if isinstance(value, int) else split_host_port(value)[1]


def _generator() -> ModuleType:
    """deploy/kubernetes/generate_envoy_bootstrap.py (deploy/ is no package)."""
    spec = importlib.util.spec_from_file_location(
        "generate_envoy_bootstrap", K8S / "generate_envoy_bootstrap.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _cluster_layout() -> MeshLayout:
    layout: MeshLayout = _generator().cluster_layout()
    return layout


def _bootstrap_file() -> tuple[str, Path]:
    """(the ConfigMap's key, the generated file) of the envoy-bootstrap configMapGenerator."""
    (generator,) = [g for g in KUSTOMIZATION["configMapGenerator"] if g["name"] == "envoy-bootstrap"]
    (entry,) = generator["files"]
    key, _, file = entry.partition("=")
    return key, K8S / file


def _option(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


# --- the kustomization ---------------------------------------------------------------------------------


def test_kustomization_covers_every_file() -> None:
    listed = {"kustomization.yaml", *KUSTOMIZATION["resources"], _bootstrap_file()[1].name}
    templates = {p.name for p in K8S.glob("*.example.yaml")}
    on_disk = {p.name for p in K8S.glob("*.yaml")}
    assert on_disk - templates == listed, "a manifest kubectl apply -k would not apply, or a missing one"
    namespace = KUSTOMIZATION["namespace"]
    assert namespace in _of_kind("Namespace")
    for doc in RESOURCES + TEMPLATES:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == namespace, doc["metadata"]["name"]


def test_one_image_for_every_container() -> None:
    (image,) = KUSTOMIZATION["images"]
    images = {container["image"] for _, container in _containers()}
    assert {i.split(":")[0] for i in images} == {image["name"]}
    assert images == {f"{image['name']}:{image['newTag']}"}


# --- containers ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(DEPLOYMENTS))
def test_containers_have_probes_and_resources(name: str) -> None:
    for container in DEPLOYMENTS[name]["spec"]["template"]["spec"]["containers"]:
        for probe in ("readinessProbe", "livenessProbe"):
            assert probe in container, f"{name}/{container['name']}: no {probe}"
        resources = container["resources"]
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(resources.get(kind, {})), f"{name}: {kind} need cpu and memory"


def test_every_server_is_deployed() -> None:
    assert set(DEPLOYMENTS) == {*SERVERS, ENVOY}


@pytest.mark.parametrize("name", sorted(SERVERS))
def test_command_binds_the_code_default_ports(name: str) -> None:
    """The command line parses with the service's own argparse, binds every interface on the port
    callsense.config gives that server, and that is the port the container, probes and Service name."""
    command = _container(name)["command"]
    assert command[:2] == ["python", "-m"], command
    module = importlib.import_module(f"{command[2]}.__main__")
    args = module.parse_args(command[3:])  # exits (fails) on an unknown flag or a bad value

    ports = _container_ports(name)
    assert ports == {port_name: _default_port(field) for _, port_name, field in SERVERS[name]}
    for flag, _, field in SERVERS[name]:
        host, port = split_host_port(getattr(args, flag.lstrip("-")))
        assert (host, port) == ("0.0.0.0", _default_port(field)), f"{name} {flag}: not reachable on its port"

    container = _container(name)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        spec = container.get(probe)
        if spec is None:
            continue
        if "grpc" in spec:  # Kubernetes' gRPC probe: grpc.health.v1, which every callsense server serves
            assert spec["grpc"]["port"] == ports["grpc"], f"{name} {probe}"
        else:
            port = spec["httpGet"]["port"]
            assert ports.get(port, port) == ports["http"], f"{name} {probe}"


def test_gateway_http_probes_use_its_health_endpoints() -> None:
    container = _container("gateway")
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    from gateway.app import create_app

    paths = {getattr(route, "path", None) for route in create_app(Config()).routes}
    assert {"/readyz", "/healthz"} <= paths


@pytest.mark.parametrize("name", sorted(DEPLOYMENTS))
def test_commands_start_what_the_image_has(name: str) -> None:
    """Each command is `python -m <package with __main__>` or a console script of an installed wheel."""
    scripts = {ep.name for ep in entry_points(group="console_scripts")}
    for container in DEPLOYMENTS[name]["spec"]["template"]["spec"]["containers"]:
        command = container["command"]
        if command[0] == "python":
            assert command[1] == "-m" and importlib.util.find_spec(f"{command[2]}.__main__"), command
        else:
            assert command[0] in scripts, f"{command[0]} is no console script of an installed package"


def _python_snippets(node: Any) -> Iterator[str]:
    """The code of every `python -c CODE` exec command (probes, preStop hooks) under node."""
    if isinstance(node, dict):
        command = node.get("exec", {}).get("command") if isinstance(node.get("exec"), dict) else None
        if command and command[:2] == ["python", "-c"]:
            yield command[2]
        for value in node.values():
            yield from _python_snippets(value)
    elif isinstance(node, list):
        for value in node:
            yield from _python_snippets(value)


def test_exec_python_snippets_compile() -> None:
    snippets = list(_python_snippets(RESOURCES))
    assert snippets, "the envoy probes are python snippets"
    for code in snippets:
        compile(code, "<exec probe>", "exec")


# --- Services ------------------------------------------------------------------------------------------


def _selected_deployment(service: Doc) -> str:
    selector = service["spec"]["selector"]
    matches = [
        name
        for name, d in DEPLOYMENTS.items()
        if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
    ]
    assert len(matches) == 1, f"Service {service['metadata']['name']} selects {matches}"
    return matches[0]


def test_the_gateways_spool_outlives_its_pod() -> None:
    """The data directory (the spool of live writes while PostgreSQL is away) is the replica's own volume
    claim, never an emptyDir, which dies with the pod and what it had not written back with it."""
    gateway = DEPLOYMENTS["gateway"]
    assert gateway["kind"] == "StatefulSet" and gateway["spec"]["serviceName"] in SERVICES
    env = {e["name"]: e.get("value") for e in _container("gateway").get("env", [])}
    (mount,) = [
        m for m in _container("gateway")["volumeMounts"] if m["mountPath"] == env["CALLSENSE_DATA_DIR"]
    ]
    claims = {c["metadata"]["name"] for c in gateway["spec"]["volumeClaimTemplates"]}
    volumes = {v["name"] for v in gateway["spec"]["template"]["spec"].get("volumes", [])}
    assert mount["name"] in claims and mount["name"] not in volumes
    assert gateway["spec"]["persistentVolumeClaimRetentionPolicy"] == {
        "whenDeleted": "Retain",
        "whenScaled": "Retain",
    }


@pytest.mark.parametrize("name", sorted(DEPLOYMENTS))
def test_deployment_selects_its_own_pods(name: str) -> None:
    spec = DEPLOYMENTS[name]["spec"]
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_service_ports_reach_the_container_ports(name: str) -> None:
    service = SERVICES[name]
    deployment = _selected_deployment(service)
    ports = _container_ports(deployment)
    for port in service["spec"]["ports"]:
        target = port.get("targetPort", port["port"])
        target_number = ports[target] if isinstance(target, str) else target
        assert target_number in ports.values(), f"{name}: targetPort {target} is no container port"
        # Headless Services resolve to pod IPs: the port a client dials is the container's.
        assert port["port"] == target_number, f"{name}: port {port['port']} != container port {target_number}"
    if deployment != ENVOY:
        assert service["spec"].get("clusterIP") == "None", (
            f"{name}: Envoy balances only across a headless one"
        )


# --- environment ---------------------------------------------------------------------------------------


class _RecordingEnv(dict[str, str]):
    """An environment that remembers every variable asked for."""

    def __init__(self, asked: set[str]) -> None:
        super().__init__()
        self.asked = asked

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        self.asked.add(key)
        return super().get(key, default)


def _env_names_read_by_code() -> set[str]:
    """Every variable load_config() asks for, plus every string literal elsewhere in the code that is a
    whole environment variable name (the constants the other readers use: CALLSENSE_LOG_LEVEL, ...)."""
    names: set[str] = set()
    load_config(_RecordingEnv(names))
    pattern = re.compile(r"(CALLSENSE|OTEL|DATABASE_URL)[A-Z0-9_]*[A-Z0-9]")
    for package in CODE_PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            if path.parts[-3:-1] == ("callsense", "v1") or path == ROOT / "callsense" / "config.py":
                continue  # generated stubs; config.py's names come from load_config() above
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if (
                    isinstance(node, ast.Constant)
                    and isinstance(node.value, str)
                    and pattern.fullmatch(node.value)
                ):
                    names.add(node.value)
    return names


def _env_entries() -> Iterator[tuple[str, Doc]]:
    for name, container in _containers():
        for entry in container.get("env", []):
            yield name, entry


def test_env_names_are_read_by_the_code() -> None:
    read = _env_names_read_by_code()
    assert {"CALLSENSE_SCORER_ADDR", "DATABASE_URL", "CALLSENSE_LOG_LEVEL"} <= read  # the scan works
    set_here = {(where, entry["name"]) for where, entry in _env_entries()}
    for secret in _of_kind("Secret", TEMPLATES).values():
        set_here |= {(f"Secret {secret['metadata']['name']}", key) for key in secret.get("stringData", {})}
    unknown = {
        (where, name)
        for where, name in set_here
        if name not in read and not (name.startswith(REGION_URL_PREFIX) and name != REGION_URL_PREFIX)
    }
    assert not unknown, f"set in the manifests but read by no code: {sorted(unknown)}"


@pytest.mark.parametrize("name", sorted(DEPLOYMENTS))
def test_env_values_load_and_addresses_name_services(name: str) -> None:
    env = {e["name"]: e["value"] for e in _container(name).get("env", []) if "value" in e}
    load_config(env)  # raises ConfigError on a bad address or port
    for variable, value in env.items():
        if variable.endswith("_ADDR") or variable == "CALLSENSE_MESH_PROXY":
            host, port = split_host_port(value)
            assert host in SERVICES, f"{name} {variable}={value}: no Service {host!r}"
            assert port in {p["port"] for p in SERVICES[host]["spec"]["ports"]}, f"{name} {variable}={value}"
    if "CALLSENSE_MESH_PROXY" in env:
        host, _ = split_host_port(env["CALLSENSE_MESH_PROXY"])
        assert _selected_deployment(SERVICES[host]) == ENVOY  # it routes by authority: only Envoy does


def test_secret_refs_match_the_template() -> None:
    secrets = _of_kind("Secret", TEMPLATES)
    refs = [
        (where, entry["valueFrom"]["secretKeyRef"])
        for where, entry in _env_entries()
        if "secretKeyRef" in entry.get("valueFrom", {})
    ]
    assert refs, "the gateway takes DATABASE_URL from a Secret"
    for where, ref in refs:
        assert ref["key"] in secrets[ref["name"]]["stringData"], f"{where}: {ref}"
    gateway_env = {e["name"] for e in _container("gateway")["env"]}
    assert "DATABASE_URL" in gateway_env, "without it the gateway starts an embedded PostgreSQL in the pod"


def test_postcall_worker_shares_the_gateways_database_and_the_gateway_names_it() -> None:
    """The worker delivers the outbox the gateway writes and completes the reports it owes: the same
    database Secret. The gateway reaches the worker at its Service (through Envoy, by authority)."""

    def database_ref(deployment: str) -> Doc:
        (entry,) = [e for e in _container(deployment)["env"] if e["name"] == "DATABASE_URL"]
        ref: Doc = entry["valueFrom"]["secretKeyRef"]
        return ref

    assert database_ref("postcall") == database_ref("gateway")
    gateway_env = {e["name"]: e.get("value") for e in _container("gateway")["env"]}
    address = gateway_env["CALLSENSE_POSTCALL_ADDR"]
    assert split_host_port(address) == ("postcall", _default_port("postcall_addr"))
    assert _selected_deployment(SERVICES["postcall"]) == "postcall"


# --- Envoy ---------------------------------------------------------------------------------------------


def test_bootstrap_is_current() -> None:
    generator = _generator()
    _, path = _bootstrap_file()
    assert path.read_text(encoding="utf-8") == generator.render(generator.cluster_layout()), (
        f"{path.relative_to(ROOT)} is stale: run `python deploy/kubernetes/generate_envoy_bootstrap.py`"
    )


def test_bootstrap_upstreams_are_headless_services() -> None:
    layout = _cluster_layout()
    clusters = {c["name"]: c for c in build(layout)["static_resources"]["clusters"]}
    for field in ("gateway_http", "gateway_grpc", "asr", "chopper", "scorer", "postcall"):
        assert clusters[field]["type"] == "STRICT_DNS", f"{field}: Envoy would not see every replica"
        for endpoint in getattr(layout, field):
            host, port = split_host_port(endpoint)
            assert SERVICES[host]["spec"].get("clusterIP") == "None", f"{field}: {host} is not headless"
            assert port in _container_ports(_selected_deployment(SERVICES[host])).values(), endpoint


def test_envoy_container_serves_the_bootstrap() -> None:
    layout = _cluster_layout()
    container = _container(ENVOY)
    assert (layout.listener_host, layout.listener_port) == ("0.0.0.0", _container_ports(ENVOY)["http"])
    assert _container_ports(ENVOY)["http"] == _default_port("envoy_port")
    # The internal listener on the pod network (the gateway is another pod), at its code default port.
    assert (layout.internal_host, layout.internal_port) == ("0.0.0.0", _container_ports(ENVOY)["internal"])
    assert _container_ports(ENVOY)["internal"] == _default_port("envoy_internal_port")
    listeners = {
        listener["name"]: listener["address"]["socket_address"]["port_value"]
        for listener in build(layout)["static_resources"]["listeners"]
    }
    assert listeners == {"public": layout.listener_port, "internal": layout.internal_port}

    # The -c path is the ConfigMap's key in a volume of the generated ConfigMap.
    config_path = Path(_option(container["command"], "-c"))
    key, _ = _bootstrap_file()
    assert config_path.name == key
    (mount,) = [m for m in container["volumeMounts"] if Path(m["mountPath"]) == config_path.parent]
    volumes = {v["name"]: v for v in DEPLOYMENTS[ENVOY]["spec"]["template"]["spec"]["volumes"]}
    assert volumes[mount["name"]]["configMap"]["name"] == "envoy-bootstrap"

    # The admin API stays on loopback; the probes reach it from inside the container, on its port.
    assert layout.admin_host == "127.0.0.1" and layout.admin_port == _default_port("envoy_admin_port")
    for probe, path in (("readinessProbe", "/ready"), ("livenessProbe", "/server_info")):
        code = " ".join(container[probe]["exec"]["command"])
        assert f"http://127.0.0.1:{layout.admin_port}{path}" in code, probe


def _service_targets(service: Doc) -> set[int]:
    """The container ports of the selected Deployment that ``service`` forwards to."""
    ports = _container_ports(_selected_deployment(service))
    targets = {p.get("targetPort", p["port"]) for p in service["spec"]["ports"]}
    return {ports[t] if isinstance(t, str) else t for t in targets}


def test_envoy_internal_port_is_inside_the_cluster_only() -> None:
    """No Service that leaves the cluster (LoadBalancer, NodePort) reaches Envoy's internal listener; the
    gateway's mesh proxy is a ClusterIP Service that reaches exactly that listener."""
    layout = _cluster_layout()
    internal, public = layout.internal_port, layout.listener_port
    for name, service in SERVICES.items():
        if _selected_deployment(service) == ENVOY and internal in _service_targets(service):
            spec = service["spec"]
            assert spec.get("type", "ClusterIP") == "ClusterIP" and not spec.get("externalIPs"), (
                f"Service {name} exposes Envoy's internal listener beyond the cluster"
            )
    # The public entry forwards to the public listener and nothing else.
    assert SERVICES[ENVOY]["spec"]["type"] == "LoadBalancer"
    assert _service_targets(SERVICES[ENVOY]) == {public}

    env = {e["name"]: e.get("value") for e in _container("gateway")["env"]}
    host, port = split_host_port(env["CALLSENSE_MESH_PROXY"])
    proxy = SERVICES[host]
    assert proxy["spec"].get("type", "ClusterIP") == "ClusterIP", f"{host}: reachable from outside"
    (forwarded,) = [p for p in proxy["spec"]["ports"] if p["port"] == port]
    target = forwarded.get("targetPort", port)
    assert (_container_ports(ENVOY)[target] if isinstance(target, str) else target) == internal, (
        "the gateway's mesh proxy is not Envoy's internal listener (the public one refuses the services)"
    )


def test_envoy_validates_the_bootstrap_with_the_deployments_flags(tmp_path: Path) -> None:
    _, path = _bootstrap_file()
    _validate_with_the_deployments_flags(path)


def _validate_with_the_deployments_flags(path: Path) -> None:
    command = list(_container(ENVOY)["command"])
    command[command.index("-c") + 1] = str(path)
    result = subprocess.run(
        [envoy_binary(), *command[1:], "--mode", "validate"], capture_output=True, text=True, timeout=60
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Deprecated field" not in output, output


def test_checked_in_bootstrap_is_the_edge_in_plaintext() -> None:
    """Rate limits and security headers on the public listener; TLS only when asked (--tls-dir)."""
    _, path = _bootstrap_file()
    public = _listeners(yaml.safe_load(path.read_text(encoding="utf-8")))["public"]
    assert "transport_socket" not in public["filter_chains"][0]
    hcm = public["filter_chains"][0]["filters"][0]["typed_config"]
    assert "envoy.filters.http.local_ratelimit" in [f["name"] for f in hcm["http_filters"]]
    (host,) = hcm["route_config"]["virtual_hosts"]
    assert "x-content-type-options" in [h["header"]["key"] for h in host["response_headers_to_add"]]


def test_bootstrap_serves_tls_from_a_mounted_certificate_secret(tmp_path: Path) -> None:
    """``generate_envoy_bootstrap.py --tls-dir DIR``: the public listener speaks TLS with the files of a
    ``kubernetes.io/tls`` Secret mounted at DIR (tls.crt, tls.key), and Envoy accepts it with the
    Deployment's flags. The documented mount point is not inside the bootstrap's read-only volume."""
    generator = _generator()
    cert, key = self_signed_certificate(tmp_path / "made")
    secret = tmp_path / "secret"  # what kubelet writes for a kubernetes.io/tls Secret
    secret.mkdir()
    shutil.copy(cert, secret / "tls.crt")
    shutil.copy(key, secret / "tls.key")
    bootstrap = tmp_path / "envoy.yaml"
    assert generator.main(["--tls-dir", str(secret), str(bootstrap)]) == 0
    listeners = _listeners(yaml.safe_load(bootstrap.read_text(encoding="utf-8")))
    assert "transport_socket" not in listeners["internal"]["filter_chains"][0]
    tls = listeners["public"]["filter_chains"][0]["transport_socket"]["typed_config"]
    assert tls["common_tls_context"]["tls_certificates"] == [
        {
            "certificate_chain": {"filename": f"{secret}/tls.crt"},
            "private_key": {"filename": f"{secret}/tls.key"},
        }
    ]
    _validate_with_the_deployments_flags(bootstrap)
    layout = generator.cluster_layout(tls_dir=generator.TLS_DIR)
    assert layout.tls_cert == f"{generator.TLS_DIR}/tls.crt"
    mounts = [Path(m["mountPath"]) for m in _container(ENVOY)["volumeMounts"]]
    assert not [m for m in mounts if Path(generator.TLS_DIR).is_relative_to(m)], mounts


def _listeners(bootstrap: Doc) -> dict[str, Doc]:
    return {listener["name"]: listener for listener in bootstrap["static_resources"]["listeners"]}


# --- scaling -------------------------------------------------------------------------------------------


def test_autoscalers_target_deployments_they_can_scale() -> None:
    hpas = _of_kind("HorizontalPodAutoscaler")
    assert {h["spec"]["scaleTargetRef"]["name"] for h in hpas.values()} >= set(AUTOSCALED)
    for name, hpa in hpas.items():
        spec = hpa["spec"]
        target = spec["scaleTargetRef"]
        assert (hpa["apiVersion"], target["kind"]) == ("autoscaling/v2", "Deployment"), name
        deployment = DEPLOYMENTS[target["name"]]
        assert "replicas" not in deployment["spec"], f"{target['name']}: every apply would undo the HPA"
        assert 1 <= spec["minReplicas"] <= spec["maxReplicas"], name
        (metric,) = spec["metrics"]
        assert metric["resource"]["name"] == "cpu" and metric["resource"]["target"]["type"] == "Utilization"
        # Utilization is a share of the request: without one the HPA cannot compute it.
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            assert "cpu" in container["resources"]["requests"], name


def test_disruption_budgets_leave_room_to_drain() -> None:
    hpas = _of_kind("HorizontalPodAutoscaler").values()
    hpa_min = {h["spec"]["scaleTargetRef"]["name"]: h["spec"]["minReplicas"] for h in hpas}
    for name, pdb in _of_kind("PodDisruptionBudget").items():
        selector = pdb["spec"]["selector"]["matchLabels"]
        (deployment,) = [
            d for d, doc in DEPLOYMENTS.items() if selector == doc["spec"]["selector"]["matchLabels"]
        ]
        replicas = DEPLOYMENTS[deployment]["spec"].get("replicas", hpa_min.get(deployment, 1))
        assert pdb["spec"]["minAvailable"] < replicas, f"{name}: a node drain could never evict a pod"


# --- the monthly retrain -------------------------------------------------------------------------------

TRAIN_DOCKERFILE = DEPLOY / "Dockerfile.train"
THIRD_PARTY_ENV = {"HF_HUB_OFFLINE", "HF_HOME"}
"""Variables the training libraries read (transformers, huggingface_hub), not our code."""


def _retrain_pod() -> Doc:
    (cronjob,) = _of_kind("CronJob").values()
    pod: Doc = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return pod


def _retrain_mounts() -> dict[str, str]:
    """Mount path -> the PersistentVolumeClaim mounted there (emptyDirs: "emptyDir")."""
    pod = _retrain_pod()
    volumes = {v["name"]: v for v in pod["volumes"]}
    (container,) = pod["containers"]
    return {
        m["mountPath"]: volumes[m["name"]].get("persistentVolumeClaim", {}).get("claimName", "emptyDir")
        for m in container["volumeMounts"]
    }


def _mounted_on(path: str, mounts: dict[str, str]) -> str:
    """The claim whose mount holds ``path``; fails when no volume does (the root filesystem is read-only)."""
    owners = [claim for mount, claim in mounts.items() if Path(path).is_relative_to(mount)]
    assert owners, f"{path} is on no volume: the container's root filesystem is read-only"
    return max(owners, key=len)


def test_the_retrain_cronjob_runs_monthly_once_at_a_time_and_never_retries_a_gate_answer() -> None:
    (cronjob,) = _of_kind("CronJob").values()
    spec = cronjob["spec"]
    minute, hour, day, month, weekday = spec["schedule"].split()
    assert (month, weekday) == ("*", "*") and day.isdigit() and 1 <= int(day) <= 28, "once a month"
    assert minute.isdigit() and hour.isdigit()
    assert spec["concurrencyPolicy"] == "Forbid"  # two retrains would race for the registry's pointer
    assert spec["suspend"] is True, "applied suspended until its image and volumes exist (retrain.yaml)"
    job = spec["jobTemplate"]["spec"]
    assert job["backoffLimit"] == 0  # exit 3 (refused by the gate) is an answer, not a failure to retry
    assert _retrain_pod()["restartPolicy"] == "Never"


def test_the_retrain_command_parses_and_reads_and_writes_only_its_volumes() -> None:
    from tools.cli import build_parser

    (container,) = _retrain_pod()["containers"]
    command = container["command"]
    scripts = {ep.name: ep.value for ep in entry_points(group="console_scripts")}
    assert command[0] in scripts and scripts[command[0]] == "tools.cli:main"
    args = build_parser().parse_args(command[1:])  # exits (fails) on an unknown flag or a bad value
    assert args.command == "retrain" and args.promote, "a candidate past the gate is promoted"
    mounts = _retrain_mounts()
    env = {e["name"]: e["value"] for e in container["env"]}
    config = load_config(env)
    for path in (args.labels, args.lines, args.report, config.data_dir, env["CALLSENSE_SHARED_DATA"]):
        assert _mounted_on(str(path), mounts) == "callsense-training", path
    assert _mounted_on(str(config.model_registry), mounts) == "callsense-models"
    assert _mounted_on(env["HF_HOME"], mounts) == "emptyDir"
    assert args.threads <= float(container["resources"]["limits"]["cpu"])
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][kind])


def test_the_retrain_env_is_read_by_the_code() -> None:
    (container,) = _retrain_pod()["containers"]
    names = {e["name"] for e in container["env"]}
    read = _env_names_read_by_code()
    pattern = re.compile(r"(CALLSENSE|OTEL|DATABASE_URL)[A-Z0-9_]*[A-Z0-9]")
    for package in ("tools", "training"):  # the training image runs these too
        for path in (ROOT / package).rglob("*.py"):
            try:
                tree = ast.parse(path.read_text(encoding="utf-8"))
            except SyntaxError:
                continue  # not this test's concern: the linters and the module's own tests say so
            for node in ast.walk(tree):
                if (
                    isinstance(node, ast.Constant)
                    and isinstance(node.value, str)
                    and pattern.fullmatch(node.value)
                ):
                    read.add(node.value)
    assert "CALLSENSE_SHARED_DATA" in read  # the scan reached training/data.py
    assert names - read - THIRD_PARTY_ENV == set(), "set for the retrain but read by no code"


def test_the_registry_volume_is_shared_and_every_claim_is_in_the_kustomization() -> None:
    claims = _of_kind("PersistentVolumeClaim")
    assert set(_retrain_mounts().values()) - {"emptyDir"} <= set(claims)
    assert claims["callsense-models"]["spec"]["accessModes"] == ["ReadWriteMany"], "every scorer reads it"


def _claim_mounts(pod: Doc, container: Doc) -> dict[str, tuple[str, bool]]:
    """Mount path -> (the PersistentVolumeClaim mounted there, whether read-only), claims only."""
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    mounts = {}
    for mount in container.get("volumeMounts", []):
        claim = volumes[mount["name"]].get("persistentVolumeClaim")
        if claim is not None:
            read_only = bool(mount.get("readOnly")) or bool(claim.get("readOnly"))
            mounts[mount["mountPath"]] = (claim["claimName"], read_only)
    return mounts


def test_the_scorers_serve_the_registry_the_cronjob_writes() -> None:
    """The scorer follows the registry (no --model, CALLSENSE_MODEL_REGISTRY) on a read-only mount of the
    claim the CronJob promotes into, at the same path; the claim is ReadWriteMany (every replica, on any
    node, reads it while the job writes it) and no other workload mounts it."""
    import scorer_service.__main__ as scorer_main

    container = _container("scorer")
    args = scorer_main.parse_args(container["command"][3:])
    assert args.model is None and args.registry is None, "the registry decides, named by the environment"
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    registry = load_config(env).model_registry
    assert str(registry) == env["CALLSENSE_MODEL_REGISTRY"] == "/var/lib/callsense/models"
    scorer_pod = DEPLOYMENTS["scorer"]["spec"]["template"]["spec"]
    scorer_mounts = _claim_mounts(scorer_pod, container)
    assert scorer_mounts[str(registry)] == ("callsense-models", True), "mounted read-only: scorers only read"
    (claim,) = [v for v in scorer_pod["volumes"] if "persistentVolumeClaim" in v]
    assert claim["persistentVolumeClaim"]["readOnly"] is True

    (retrain,) = _retrain_pod()["containers"]
    retrain_env = {e["name"]: e["value"] for e in retrain["env"]}
    assert load_config(retrain_env).model_registry == registry, "the CronJob promotes where scorers look"
    assert _claim_mounts(_retrain_pod(), retrain)[str(registry)] == ("callsense-models", False)

    claims = _of_kind("PersistentVolumeClaim")
    assert claims["callsense-models"]["spec"]["accessModes"] == ["ReadWriteMany"]
    pods = {name: d["spec"]["template"]["spec"] for name, d in DEPLOYMENTS.items()}
    pods["retrain"] = _retrain_pod()
    users = {
        name
        for name, pod in pods.items()
        for volume in pod.get("volumes", [])
        if volume.get("persistentVolumeClaim", {}).get("claimName") == "callsense-models"
    }
    assert users == {"scorer", "retrain"}


def test_an_empty_registry_volume_serves_the_shipped_model(tmp_path: Path) -> None:
    """The first deployment, before any retrain: the freshly provisioned claim (empty but for what a file
    system puts there) is a registry whose current version is the model in the image, verified, and
    reading it writes nothing (the scorer's mount is read-only)."""
    from callsense.model_registry import ModelRegistry

    volume = tmp_path / "models"
    (volume / "lost+found").mkdir(parents=True)
    volume.chmod(0o555)
    try:
        registry = ModelRegistry(volume)
        current = registry.current()
        registry.verify(current)
        assert current.shipped and current.model_path.is_file()
        assert registry.pointer_signature() is None  # the reloader waits for the first promotion
        assert [p.name for p in volume.iterdir()] == ["lost+found"]
    finally:
        volume.chmod(0o755)


def test_the_training_image_has_what_the_retrain_needs() -> None:
    """The CronJob's image is the serving image's release built from deploy/Dockerfile.train (torch,
    training/, the sales corpus); the serving image still never trains."""
    (container,) = _retrain_pod()["containers"]
    name, _, tag = container["image"].partition(":")
    (serving,) = KUSTOMIZATION["images"]
    assert name == "callsense-train" and tag == serving["newTag"]
    lines = [line.strip() for line in TRAIN_DOCKERFILE.read_text(encoding="utf-8").splitlines()]
    text = "\n".join(line for line in lines if not line.startswith("#")).replace("\\\n", " ")
    copied = {
        source for line in text.splitlines() if line.startswith("COPY ") for source in shlex.split(line)[1:-1]
    }
    assert {"training", "data/sales", "tools", "callsense", "scorer_service"} <= copied
    for source in copied:
        assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
    ignored = (DEPLOY / "Dockerfile.train.dockerignore").read_text(encoding="utf-8").split()
    assert not {"training", "data", "data/sales"} & set(ignored)
    assert "torch==" in text and ".[train]" in text


# --- the image -----------------------------------------------------------------------------------------


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    lines = [line.strip() for line in DOCKERFILE.read_text(encoding="utf-8").splitlines()]
    text = "\n".join(line for line in lines if not line.startswith("#")).replace("\\\n", " ")
    instructions = []
    for line in filter(None, text.splitlines()):
        op, _, arg = line.partition(" ")
        instructions.append((op.upper(), arg.strip()))
    return instructions


def test_dockerfile_copies_every_package_and_runs_a_module() -> None:
    instructions = _dockerfile_instructions()
    copied = {  # COPY SOURCE... DEST
        source
        for op, arg in instructions
        if op == "COPY" and not arg.startswith("--from")
        for source in shlex.split(arg)[:-1]
    }
    for source in copied:
        assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    packages = {p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]}
    # The image serves and never trains: training/ (the `train` extra's code) stays out of it.
    served = packages - {"training"}
    assert served | {"pyproject.toml", pyproject["project"]["readme"], "requirements.lock"} <= copied
    assert "training" not in copied
    ignored = (ROOT / "deploy" / "Dockerfile.dockerignore").read_text(encoding="utf-8").split()
    assert "training" in ignored

    (cmd,) = [json.loads(arg) for op, arg in instructions if op == "CMD"]
    assert cmd[:2] == ["python", "-m"] and importlib.util.find_spec(f"{cmd[2]}.__main__"), cmd
    (user,) = [arg for op, arg in instructions if op == "USER"]
    assert not user.startswith(("0", "root")), "the image runs as root"
    exposed = {int(p) for op, arg in instructions if op == "EXPOSE" for p in arg.split()}
    assert exposed == {port for name in DEPLOYMENTS for port in _container_ports(name).values()}


def test_kubectl_kustomize_renders_the_mesh() -> None:
    """What `kubectl apply -k` would send (offline); skipped where kubectl is not installed."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed: the kustomization is checked above without it")
    result = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    rendered = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    (config_map,) = _of_kind("ConfigMap", rendered).values()
    key, path = _bootstrap_file()
    assert config_map["data"][key] == path.read_text(encoding="utf-8")
    envoy = _of_kind("Deployment", rendered)[ENVOY]
    volumes = envoy["spec"]["template"]["spec"]["volumes"]
    # kustomize renamed the ConfigMap (content hash) and the Deployment's reference with it.
    assert config_map["metadata"]["name"] in {v.get("configMap", {}).get("name") for v in volumes}
    assert {(d["kind"], d["metadata"]["name"]) for d in rendered} >= {
        (d["kind"], d["metadata"]["name"]) for d in RESOURCES
    }
