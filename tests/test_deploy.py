"""The deployment artefacts: deploy/Dockerfile and the Kustomize sidecar manifests, checked statically.

No container engine or cluster is needed. The linters and scanners live in .venv-tools (``make tools``;
``make test`` runs it) and ``kubectl`` (with its built-in kustomize) is on PATH:

- hadolint lints the Dockerfile; any finding at warning level or above fails;
- ``kubectl kustomize`` renders the base and the example overlay;
- kubernetes-validate checks every rendered object offline against the Kubernetes schemas, strictly (an
  unknown field is an error), for the oldest version the manifests need and for a recent one;
- checkov scans the Dockerfile and the rendered manifests; nothing may fail, and every skip must be one
  of the justified skips listed here, with its reason written next to it;
- structural assertions pin what the sidecar pattern relies on (E1-E3 of the resource-server checklist,
  and the isolation of the MCP server), and the gateway.yaml in the ConfigMap passes
  ``mcp-auth-gateway validate`` with the rendered policies.

The helpers at the top (rendering, materialising the pod's mounts) are shared with tests/test_sidecar.py.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.config import ENV_VAR, parse_duration

REPO = Path(__file__).resolve().parents[1]
TOOLS_BIN = REPO / ".venv-tools" / "bin"
DOCKERFILE = REPO / "deploy" / "Dockerfile"
DEPLOY_README = REPO / "deploy" / "README.md"
# The sidecar layout (the MCP server and the gateway in one pod), and every layout that renders to objects
# kubernetes-validate knows: the sidecar ones plus the shared gateway (O7). The monitoring kustomization
# holds Prometheus Operator custom resources, checked by promtool and by the structure tests instead.
KUSTOMIZATIONS = {
    "base": REPO / "deploy" / "kubernetes" / "base",
    "overlay-example": REPO / "deploy" / "kubernetes" / "overlays" / "example",
}
SHARED = "overlay-shared"
RENDERABLE = {**KUSTOMIZATIONS, SHARED: REPO / "deploy" / "kubernetes" / "overlays" / "shared"}
MONITORING = REPO / "deploy" / "kubernetes" / "monitoring"
# Secrets the manifests mount but never generate (a session key in the repository would let its readers
# forge session bindings): the platform creates them. Tests lay them out with fresh random values.
EXTERNAL_SECRETS = {"mcp-auth-gateway-session-key": ("session-key",)}
# kubernetes-validate schema versions: the oldest the manifests need (lifecycle.preStop.sleep is beta and on
# by default from 1.30) and a recent one.
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")
GATEWAY_USER = 10001
GATEWAY_CONTAINER = "gateway"

# Every skip the scanners may report, with the reason it is acceptable. The reason itself must also be
# written next to the skip (an annotation value in the manifest, a comment in the Dockerfile).
ALLOWED_CHECKOV_SKIPS = {
    "dockerfile": {
        "CKV_DOCKER_2": "no HEALTHCHECK: Kubernetes probes /healthz and /readyz; the image has no shell or curl",
    },
    "kubernetes": {
        "CKV_K8S_43": "placeholder images in the example; overlays pin digests",
        "CKV_K8S_8": "the MCP server listens on loopback, which kubelet probes cannot reach",
        "CKV_K8S_9": "the MCP server listens on loopback, which kubelet probes cannot reach",
    },
}


# ---- tools ---------------------------------------------------------------------------------------------

def tool(name: str) -> str:
    path = TOOLS_BIN / name
    if not path.exists():
        pytest.fail(f"{path.relative_to(REPO)} is missing: run `make tools` (make test runs it) to install the "
                    "deployment linters and scanners into .venv-tools")
    return str(path)


def kubectl() -> str:
    found = shutil.which("kubectl")
    if found is None:
        pytest.fail("kubectl is not on PATH: run `make tools` (it installs kubectl; Debian: apt-get install kubernetes-client)")
    return found


def run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, cwd=REPO, timeout=300, **kwargs)


# ---- rendering -----------------------------------------------------------------------------------------

@functools.cache
def rendered_text(name: str) -> str:
    folder = MONITORING if name == "monitoring" else RENDERABLE[name]
    result = run([kubectl(), "kustomize", str(folder)])
    assert result.returncode == 0, f"kubectl kustomize {name} failed:\n{result.stderr}"
    return result.stdout


def rendered(name: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(rendered_text(name)) if doc]


def objects(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [doc for doc in objects(docs, kind) if name is None or doc["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {[d['metadata']['name'] for d in found]}"
    return found[0]


def pod_spec(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return one(docs, "Deployment")["spec"]["template"]["spec"]


def containers(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in pod_spec(docs)["containers"]}


def gateway_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return containers(docs)[GATEWAY_CONTAINER]


def mcp_server_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    others = [c for name, c in containers(docs).items() if name != GATEWAY_CONTAINER]
    assert len(others) == 1, "the pod has exactly two containers: the MCP server and the gateway"
    return others[0]


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def config_path_of(container: dict[str, Any]) -> str:
    """The configuration file the gateway container is told to read (its --config argument)."""
    args = container.get("args", [])
    assert "--config" in args, f"the gateway's args name its configuration: {args}"
    return args[args.index("--config") + 1]


def volume_files(docs: list[dict[str, Any]], volume: dict[str, Any]) -> dict[str, bytes]:
    """The files a ConfigMap or Secret volume shows in the container, by name."""
    if "configMap" in volume:
        source = one(docs, "ConfigMap", volume["configMap"]["name"])
        files = {key: value.encode() for key, value in source.get("data", {}).items()}
        files.update({key: base64.b64decode(value) for key, value in source.get("binaryData", {}).items()})
    elif "secret" in volume and volume["secret"]["secretName"] in EXTERNAL_SECRETS:
        files = {key: secrets.token_hex(32).encode() for key in EXTERNAL_SECRETS[volume["secret"]["secretName"]]}
    elif "secret" in volume:
        source = one(docs, "Secret", volume["secret"]["secretName"])
        files = {key: base64.b64decode(value) for key, value in source.get("data", {}).items()}
        files.update({key: value.encode() for key, value in source.get("stringData", {}).items()})
    else:
        raise AssertionError(f"volume {volume['name']}: only ConfigMap and Secret volumes are expected")
    return files


def write_atomic_dir(directory: Path, files: dict[str, bytes]) -> None:
    """Write ``files`` the way the kubelet lays out a ConfigMap/Secret volume, or swap in a new version.

    The kubelet's atomic writer puts each version in a hidden timestamped folder, points the ``..data``
    symlink at it, and gives every key a symlink ``key -> ..data/key``. An update writes a new folder and
    renames a new ``..data`` link over the old one, so readers see the old or the new set, never a mix.
    """
    directory.mkdir(parents=True, exist_ok=True)
    version = directory / f"..{time.strftime('%Y_%m_%d_%H_%M_%S')}.{time.monotonic_ns()}"
    version.mkdir()
    for key, content in files.items():
        (version / key).write_bytes(content)
    old = os.readlink(directory / "..data") if (directory / "..data").is_symlink() else None
    (directory / "..data_tmp").symlink_to(version.name)
    os.replace(directory / "..data_tmp", directory / "..data")
    for key in files:
        if not (directory / key).is_symlink():
            (directory / key).symlink_to(Path("..data") / key)
    for entry in directory.iterdir():  # keys that are gone
        if entry.is_symlink() and not entry.name.startswith("..") and entry.name not in files:
            entry.unlink()
    if old is not None:
        shutil.rmtree(directory / old)


def materialize_mounts(docs: list[dict[str, Any]], container: dict[str, Any], root: Path) -> dict[str, Path]:
    """Lay out ``container``'s ConfigMap and Secret mounts under ``root`` as the kubelet would in the pod.

    Returns mount path -> local path. A subPath mount is a plain file (the kubelet resolves it once, so it
    never sees updates); a directory mount has the atomic-writer layout, so hot reload sees real swaps.
    """
    volumes = {v["name"]: v for v in pod_spec(docs).get("volumes", [])}
    mounts: dict[str, Path] = {}
    for mount in container.get("volumeMounts", []):
        files = volume_files(docs, volumes[mount["name"]])
        local = root / mount["mountPath"].lstrip("/")
        if "subPath" in mount:
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_bytes(files[mount["subPath"]])
        else:
            write_atomic_dir(local, files)
        mounts[mount["mountPath"]] = local
    return mounts


def rewrite_paths(value: Any, mounts: dict[str, Path]) -> Any:
    """Every string that is a path under a mount point, moved to where that mount was materialized."""
    if isinstance(value, dict):
        return {key: rewrite_paths(item, mounts) for key, item in value.items()}
    if isinstance(value, list):
        return [rewrite_paths(item, mounts) for item in value]
    if isinstance(value, str):
        for mount_path in sorted(mounts, key=len, reverse=True):
            if value == mount_path or value.startswith(mount_path.rstrip("/") + "/"):
                return str(mounts[mount_path]) + value[len(mount_path):]
    return value


def rendered_gateway_config(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """The gateway.yaml the gateway container reads, parsed."""
    gateway = gateway_container(docs)
    config_path = config_path_of(gateway)
    volumes = {v["name"]: v for v in pod_spec(docs)["volumes"]}
    for mount in gateway["volumeMounts"]:
        file_name = mount.get("subPath") or Path(config_path).name
        mounted_at = mount["mountPath"] if "subPath" in mount else f"{mount['mountPath'].rstrip('/')}/{file_name}"
        if mounted_at == config_path:
            return yaml.safe_load(volume_files(docs, volumes[mount["name"]])[file_name])
    raise AssertionError(f"no volume mount provides {config_path}")


def dockerfile_runtime_stage() -> list[str]:
    """The instructions of the Dockerfile's last stage, continuation lines joined, comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        lines.append(pending + stripped)
        pending = ""
    last_from = max(i for i, line in enumerate(lines) if line.upper().startswith("FROM "))
    return lines[last_from:]


def dockerfile_instruction(name: str) -> list[str]:
    return [line.split(None, 1)[1] for line in dockerfile_runtime_stage() if line.split(None, 1)[0].upper() == name]


def dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for arguments in dockerfile_instruction("ENV"):
        for key, value in re.findall(r'([A-Za-z_][A-Za-z0-9_]*)=("[^"]*"|\S+)', arguments):
            env[key] = value.strip('"')
    return env


# ---- (a) hadolint --------------------------------------------------------------------------------------

def test_deploy_dockerfile_passes_hadolint_at_warning_level():
    result = run([tool("hadolint"), "--no-color", "-f", "json", str(DOCKERFILE)])
    findings = json.loads(result.stdout or "[]")
    serious = [f for f in findings if f["level"] in ("error", "warning")]
    assert not serious, "hadolint:\n" + "\n".join(f"line {f['line']}: {f['code']} {f['level']}: {f['message']}" for f in serious)


def test_deploy_every_lint_or_scan_skip_in_the_dockerfile_carries_a_reason():
    lines = DOCKERFILE.read_text().splitlines()
    for number, line in enumerate(lines):
        if "hadolint ignore=" in line:
            previous = lines[number - 1].strip() if number else ""
            assert previous.startswith("#") and "hadolint" not in previous and len(previous) > 10, (
                f"Dockerfile:{number + 1}: a `# hadolint ignore=` needs a comment line above it saying why")
        if "checkov:skip=" in line:
            match = re.search(r"checkov:skip=([A-Z0-9_]+)\s*:\s*(\S.{10,})", line)
            assert match, f"Dockerfile:{number + 1}: a checkov skip needs a reason: `# checkov:skip=CKV_X: why`"
            assert match.group(1) in ALLOWED_CHECKOV_SKIPS["dockerfile"], f"unexpected skip {match.group(1)}"


# ---- (b) kustomize renders -----------------------------------------------------------------------------

@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_deploy_sidecar_kustomization_renders(name):
    kinds = sorted(doc["kind"] for doc in rendered(name))
    assert kinds == sorted(["ServiceAccount", "ConfigMap", "ConfigMap", "Secret", "Service", "Deployment",
                            "PodDisruptionBudget", "NetworkPolicy"]), kinds
    for doc in rendered(name):
        assert doc["metadata"].get("namespace") not in (None, "default"), f"{doc['kind']} has no namespace of its own"
        assert doc["metadata"]["labels"]["app.kubernetes.io/name"] == "mcp-server"


# ---- (c) kubernetes-validate ---------------------------------------------------------------------------

@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("name", RENDERABLE)
def test_deploy_rendered_objects_validate_against_kubernetes_schemas(name, version, tmp_path):
    manifest = tmp_path / f"{name}.yaml"
    manifest.write_text(rendered_text(name))
    result = run([tool("kubernetes-validate"), "--strict", "--kubernetes-version", version, str(manifest)])
    assert result.returncode == 0, f"kubernetes-validate {version} {name}:\n{result.stdout}{result.stderr}"
    passed = result.stdout.count(" passed for resource ")
    assert passed == len(rendered(name)), result.stdout


# ---- (d) checkov ---------------------------------------------------------------------------------------

def checkov(path: Path, framework: str) -> dict[str, Any]:
    result = run([tool("checkov"), "-f", str(path), "--framework", framework, "--compact", "--skip-download",
                  "--output", "json"], env={**os.environ, "LOG_LEVEL": "ERROR"})
    try:
        report = json.loads(result.stdout)
    except json.JSONDecodeError:
        raise AssertionError(f"checkov gave no JSON report:\n{result.stdout}\n{result.stderr}") from None
    report = report[0] if isinstance(report, list) else report
    assert report.get("summary", {}).get("resource_count", 0) > 0, f"checkov scanned nothing in {path}: {report}"
    failed = report["results"].get("failed_checks", [])
    assert not failed, "checkov:\n" + "\n".join(f"{c['check_id']} {c['check_name']} ({c['resource']})" for c in failed)
    assert report["summary"]["parsing_errors"] == 0
    assert result.returncode == 0, result.stderr
    return report


def skipped(report: dict[str, Any]) -> set[str]:
    return {c["check_id"] for c in report["results"].get("skipped_checks", [])}


def test_deploy_dockerfile_passes_checkov_with_only_justified_skips():
    report = checkov(DOCKERFILE, "dockerfile")
    assert skipped(report) <= set(ALLOWED_CHECKOV_SKIPS["dockerfile"]), skipped(report)


@pytest.mark.parametrize("name", RENDERABLE)
def test_deploy_rendered_manifests_pass_checkov_with_only_justified_skips(name, tmp_path):
    manifest = tmp_path / f"{name}.yaml"
    manifest.write_text(rendered_text(name))
    report = checkov(manifest, "kubernetes")
    assert skipped(report) <= set(ALLOWED_CHECKOV_SKIPS["kubernetes"]), skipped(report)
    # Each skip annotation carries its reason: `checkov.io/skipN: CKV_K8S_xx=why`.
    for doc in rendered(name):
        for key, value in (doc["metadata"].get("annotations") or {}).items():
            if key.startswith("checkov.io/skip"):
                check, _, reason = value.partition("=")
                assert check in ALLOWED_CHECKOV_SKIPS["kubernetes"], f"{doc['kind']}: unexpected skip {value}"
                assert len(reason.strip()) > 20, f"{doc['kind']}: skip {check} without a reason"


# ---- (e) structure -------------------------------------------------------------------------------------

@pytest.fixture(params=list(KUSTOMIZATIONS))
def docs(request) -> list[dict[str, Any]]:
    """The sidecar layouts."""
    return rendered(request.param)


@pytest.fixture(params=list(RENDERABLE))
def any_docs(request) -> list[dict[str, Any]]:
    """Every layout: the sidecar ones and the shared gateway."""
    return rendered(request.param)


def test_deploy_mcp_server_is_reachable_only_through_the_gateway(docs):
    mcp = mcp_server_container(docs)
    assert not mcp.get("ports"), "the MCP server container declares no port: it listens on loopback only"
    env = env_of(mcp)
    assert env.get("HOST") == "127.0.0.1", "the MCP server is told to bind loopback"
    upstream = rendered_gateway_config(docs)["upstream"]["url"]
    assert upstream.startswith(f"http://127.0.0.1:{env['PORT']}/"), "the gateway's upstream is that loopback address"
    assert not pod_spec(docs).get("hostNetwork"), "loopback is the pod's own only without hostNetwork"
    assert not pod_spec(docs).get("shareProcessNamespace")


def test_deploy_service_targets_only_the_gateway_port(any_docs):
    """O1: the admin port is a container port (probes, PodMonitor) but never a Service port."""
    docs = any_docs
    service = one(docs, "Service")
    gateway_ports = {p["name"]: p["containerPort"] for p in gateway_container(docs)["ports"]}
    assert gateway_ports == {"http": 8080, "admin": 9090}
    assert rendered_gateway_config(docs)["server"]["admin_port"] == gateway_ports["admin"]
    assert [port["targetPort"] for port in service["spec"]["ports"]] == ["http"], "only the MCP port is in the Service"
    labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"].get("type", "ClusterIP") == "ClusterIP"


def test_e1_network_policy_admits_only_the_gateway_port_and_lets_out_dns_and_https(docs):
    policy = one(docs, "NetworkPolicy")
    labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    assert sorted(policy["spec"]["policyTypes"]) == ["Egress", "Ingress"]
    ingress_ports = {(p["port"], p.get("protocol", "TCP")) for rule in policy["spec"]["ingress"] for p in rule["ports"]}
    assert ingress_ports == {(8080, "TCP"), (9090, "TCP")}
    egress_ports = {(p["port"], p.get("protocol", "TCP")) for rule in policy["spec"]["egress"] for p in rule["ports"]}
    assert egress_ports == {(53, "UDP"), (53, "TCP"), (443, "TCP")}


def test_O1_network_policy_admits_the_admin_port_from_the_monitoring_namespace_only(any_docs):
    policy = one(any_docs, "NetworkPolicy")
    admin_rules = [rule for rule in policy["spec"]["ingress"] if any(p["port"] == 9090 for p in rule["ports"])]
    assert len(admin_rules) == 1 and [p["port"] for p in admin_rules[0]["ports"]] == [9090], "the admin port has a rule of its own"
    assert admin_rules[0]["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    for rule in policy["spec"]["ingress"]:
        if rule is not admin_rules[0]:
            assert all(p["port"] != 9090 for p in rule["ports"])


def test_deploy_dns_egress_selects_the_dns_pods_only(any_docs):
    """A pod label kustomize writes into selectors must not end up in the kube-dns podSelector (it would
    then match no DNS pod, and the gateway could not resolve its identity provider)."""
    policy = one(any_docs, "NetworkPolicy")
    dns = [rule for rule in policy["spec"]["egress"] if any(p["port"] == 53 for p in rule["ports"])]
    assert len(dns) == 1
    assert [peer.get("podSelector") for peer in dns[0]["to"]] == [{"matchLabels": {"k8s-app": "kube-dns"}}]


def test_e2_O1_probes_ask_the_admin_port_for_readyz_and_healthz(any_docs):
    docs = any_docs
    gateway = gateway_container(docs)
    assert gateway["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert gateway["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    annotations = one(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == "9090" and annotations["prometheus.io/path"] == "/metrics"
    config = rendered_gateway_config(docs)
    assert config["server"].get("port", 8080) == 8080 and config["server"].get("host", "0.0.0.0") == "0.0.0.0"


def test_e2_config_path_is_the_same_in_the_image_and_the_manifest(any_docs):
    docs = any_docs
    gateway = gateway_container(docs)
    assert env_of(gateway)[ENV_VAR] == config_path_of(gateway) == dockerfile_env()[ENV_VAR]


def test_e3_drain_fits_in_the_termination_grace_period(docs):
    spec = pod_spec(docs)
    grace = parse_duration(rendered_gateway_config(docs)["server"].get("shutdown_grace", "20s"))
    gateway_pre_stop = gateway_container(docs).get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    mcp_pre_stop = mcp_server_container(docs).get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    period = spec["terminationGracePeriodSeconds"]
    # The gateway's drain ends before the pod is killed...
    assert gateway_pre_stop + grace < period
    # ...and before the MCP server is even told to stop, so calls being drained can still complete.
    assert gateway_pre_stop + grace < mcp_pre_stop < period
    # preStop hooks are kubelet sleep actions: neither image needs a shell.
    for container in spec["containers"]:
        assert "exec" not in container.get("lifecycle", {}).get("preStop", {})


def test_deploy_gateway_runs_restricted(any_docs):
    docs = any_docs
    spec = pod_spec(docs)
    assert spec["automountServiceAccountToken"] is False
    account = one(docs, "ServiceAccount", spec["serviceAccountName"])
    assert account["automountServiceAccountToken"] is False
    pod = spec["securityContext"]
    assert pod["runAsNonRoot"] is True and pod["seccompProfile"] == {"type": "RuntimeDefault"}
    for container in spec["containers"]:
        context = container["securityContext"]
        assert context["runAsNonRoot"] is True
        assert context["readOnlyRootFilesystem"] is True
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"] == {"drop": ["ALL"]}
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}
        assert not context.get("privileged")
        assert set(container["resources"]["requests"]) == set(container["resources"]["limits"]) == {"cpu", "memory"}
    assert gateway_container(docs)["securityContext"]["runAsUser"] == GATEWAY_USER
    # Nothing writable: no emptyDir, no hostPath; only ConfigMaps and Secrets, all mounted read-only.
    for volume in spec["volumes"]:
        assert set(volume) - {"name"} <= {"configMap", "secret"}, volume
    for container in spec["containers"]:
        for mount in container.get("volumeMounts", []):
            assert mount.get("readOnly") is True, mount


def test_deploy_image_runs_as_the_manifests_user_without_shell_or_healthcheck():
    stage = dockerfile_runtime_stage()
    assert dockerfile_instruction("USER") == [f"{GATEWAY_USER}:{GATEWAY_USER}"]
    assert json.loads(dockerfile_instruction("ENTRYPOINT")[-1]) == ["mcp-auth-gateway", "serve"]  # exec form
    assert not dockerfile_instruction("HEALTHCHECK") and not dockerfile_instruction("CMD")
    assert dockerfile_instruction("EXPOSE") == ["8080 9090"]
    assert dockerfile_env()["PYTHONDONTWRITEBYTECODE"] == "1"
    assert stage[0].split()[1] == "python:3.11-slim-bookworm"
    assert any("/bin/sh" in line for line in dockerfile_instruction("RUN")), "the runtime stage removes the shell"


def test_z2_policies_config_map_updates_in_place_and_reaches_the_gateway(docs):
    volumes = {v["name"]: v for v in pod_spec(docs)["volumes"]}
    policy_mounts = [m for m in gateway_container(docs)["volumeMounts"] if m["mountPath"].endswith("/policies")]
    assert len(policy_mounts) == 1
    mount = policy_mounts[0]
    assert "subPath" not in mount, "a subPath mount never sees ConfigMap updates"
    name = volumes[mount["name"]]["configMap"]["name"]
    assert name == "mcp-auth-gateway-policies", "no name hash: updates change the files in place (hot reload)"
    assert rendered_gateway_config(docs)["authorization"]["policies"] == mount["mountPath"]
    # The configuration, read once at start, does carry a hash: changing it rolls the pods.
    config_volume = next(v for v in volumes.values() if v.get("configMap", {}).get("name", "").startswith("mcp-auth-gateway-config"))
    assert re.fullmatch(r"mcp-auth-gateway-config-[a-z0-9]{10}", config_volume["configMap"]["name"])


def test_deploy_pod_disruption_budget_selects_the_pods(any_docs):
    docs = any_docs
    budget = one(docs, "PodDisruptionBudget")
    labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert budget["spec"].get("maxUnavailable") == 1 or budget["spec"].get("minAvailable") == 1


def test_deploy_config_map_passes_validate_with_the_rendered_policies(any_docs, tmp_path):
    """``mcp-auth-gateway validate`` on the ConfigMap's gateway.yaml, the mounts laid out under tmp_path.

    Rewritten: only the mount points (/etc/mcp-auth-gateway/..., /var/run/secrets/gateway) move under
    tmp_path. validate makes no network calls, so the issuer stays as rendered.
    """
    docs = any_docs
    gateway = gateway_container(docs)
    mounts = materialize_mounts(docs, gateway, tmp_path)
    config_file = Path(rewrite_paths(config_path_of(gateway), mounts))
    config_file.write_text(yaml.safe_dump(rewrite_paths(rendered_gateway_config(docs), mounts)))
    result = run([sys.executable, "-m", "gateway", "validate", "--config", str(config_file)])
    assert result.returncode == 0, result.stderr
    assert re.search(r": ok \(\d+ policies, validated against the schema\)", result.stdout), result.stdout
    assert "warning" not in result.stderr, result.stderr


def test_e2_metric_names_in_the_deploy_readme_exist():
    """The alerting advice in deploy/README.md names metrics the gateway really exports."""
    source = (REPO / "gateway" / "observe" / "metrics.py").read_text()
    declared = set(re.findall(r'f"\{PREFIX\}_([a-z_]+)"', source))
    assert declared, "no metric declarations found in gateway/observe/metrics.py"
    exported = {f"mcp_gateway_{name}{suffix}" for name in declared for suffix in ("", "_total", "_bucket", "_count", "_sum")}
    named = set(re.findall(r"\bmcp_gateway_[a-z_]+", DEPLOY_README.read_text()))
    assert named, "deploy/README.md names no metric"
    assert named <= exported, f"not exported by the gateway: {sorted(named - exported)}"


# ---- (f) the shared gateway (O7) -----------------------------------------------------------------------

def test_O7_shared_gateway_renders_a_gateway_only_deployment_with_hpa_and_pdb():
    docs = rendered(SHARED)
    kinds = sorted(doc["kind"] for doc in docs)
    assert kinds == sorted(["ServiceAccount", "ConfigMap", "ConfigMap", "Secret", "Service", "Deployment",
                            "PodDisruptionBudget", "NetworkPolicy", "HorizontalPodAutoscaler"]), kinds
    assert list(containers(docs)) == [GATEWAY_CONTAINER], "the MCP server runs elsewhere"
    deployment = one(docs, "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert labels["app.kubernetes.io/name"] == "mcp-auth-gateway"
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    for kind in ("Service", "PodDisruptionBudget"):
        selector = one(docs, kind)["spec"]["selector"]
        assert selector.get("matchLabels", selector).items() <= labels.items(), kind
    assert one(docs, "NetworkPolicy")["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    spread = pod_spec(docs)["topologySpreadConstraints"][0]["labelSelector"]["matchLabels"]
    assert spread.items() <= labels.items()

    hpa = one(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment["metadata"]["name"]}
    assert 2 <= hpa["spec"]["minReplicas"] <= deployment["spec"]["replicas"] <= hpa["spec"]["maxReplicas"]
    budget = one(docs, "PodDisruptionBudget")["spec"]
    assert budget.get("maxUnavailable") == 1 and budget["maxUnavailable"] < hpa["spec"]["minReplicas"]


def test_O7_shared_gateway_needs_no_session_affinity_and_shares_one_session_key():
    docs = rendered(SHARED)
    assert one(docs, "Service")["spec"]["sessionAffinity"] == "None"
    config = rendered_gateway_config(docs)
    key_file = config["server"]["session_key_file"]
    mounts = {m["mountPath"]: m for m in gateway_container(docs)["volumeMounts"]}
    mount_path = next(path for path in mounts if key_file.startswith(path.rstrip("/") + "/"))
    volume = next(v for v in pod_spec(docs)["volumes"] if v["name"] == mounts[mount_path]["name"])
    # The same Secret in every replica, made by the platform, not by the repository.
    assert volume["secret"]["secretName"] in EXTERNAL_SECRETS and volume["secret"]["optional"] is False
    assert not [d for d in objects(docs, "Secret") if d["metadata"]["name"] == volume["secret"]["secretName"]]
    assert key_file.rsplit("/", 1)[1] in EXTERNAL_SECRETS[volume["secret"]["secretName"]]


def test_O7_shared_gateway_reaches_its_upstream_elsewhere_and_only_that(tmp_path):
    docs = rendered(SHARED)
    upstream = yaml.safe_load(yaml.safe_dump(rendered_gateway_config(docs)))["upstream"]["url"]
    host_port = upstream.split("/")[2]
    assert not host_port.startswith(("127.", "localhost")), "a shared gateway's upstream is another Service"
    policy = one(docs, "NetworkPolicy")
    upstream_rules = [rule for rule in policy["spec"]["egress"] if any(p["port"] == int(host_port.rsplit(":", 1)[1]) for p in rule["ports"])]
    assert len(upstream_rules) == 1 and upstream_rules[0]["to"], "egress to the upstream port names its namespace and pods"


# ---- (g) monitoring: PrometheusRule and Grafana dashboard (O4) --------------------------------------------

PROMTOOL_HINT = "promtool is not on PATH: run `make tools` (Debian: apt-get install prometheus)"


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail(PROMTOOL_HINT)
    return found


def rule_groups() -> dict[str, Any]:
    rule = one(rendered("monitoring"), "PrometheusRule")
    return {"groups": rule["spec"]["groups"]}


def dashboard() -> dict[str, Any]:
    config_map = one(rendered("monitoring"), "ConfigMap", "mcp-auth-gateway-dashboard")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    return json.loads(config_map["data"]["mcp-auth-gateway-dashboard.json"])


def dashboard_exprs() -> list[str]:
    return [target["expr"] for panel in dashboard()["panels"] for target in panel.get("targets", [])]


def test_O4_monitoring_renders_a_prometheus_rule_a_pod_monitor_and_the_dashboard():
    docs = rendered("monitoring")
    assert sorted(doc["kind"] for doc in docs) == ["ConfigMap", "PodMonitor", "PrometheusRule"]
    monitor = one(docs, "PodMonitor")["spec"]
    assert monitor["podMetricsEndpoints"] == [{"port": "admin", "path": "/metrics", "interval": "30s"}]
    for name in RENDERABLE:  # the PodMonitor selects the gateway pods of every layout, on their admin port
        pods = one(rendered(name), "Deployment")["spec"]["template"]["metadata"]["labels"]
        assert monitor["selector"]["matchLabels"].items() <= pods.items(), name
        assert "admin" in {p["name"] for p in gateway_container(rendered(name))["ports"]}
    alerts = {rule["alert"] for group in rule_groups()["groups"] for rule in group["rules"]}
    assert alerts >= {"McpGatewayTokenRefusalsSpike", "McpGatewayJwksStale", "McpGatewayJwksFailing",
                      "McpGatewayIntrospectionErrors", "McpGatewayUpstreamErrors", "McpGatewayUpstreamSlow",
                      "McpGatewayPolicyReloadFailed", "McpGatewayDenialsSpike", "McpGatewayTooManyRequests"}
    assert len(dashboard()["panels"]) >= 10 and dashboard()["uid"] == "mcp-auth-gateway"


def test_O4_promtool_checks_the_alerting_rules(tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump(rule_groups()))
    result = run([promtool(), "check", "rules", str(rules)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout, result.stdout


def test_O4_promtool_checks_every_dashboard_query(tmp_path):
    """Each panel's query parses as PromQL: promtool checks it as the expression of a recording rule
    (Grafana's $variables replaced by what they stand for)."""
    records = []
    for index, expr in enumerate(dashboard_exprs()):
        concrete = expr.replace("$__rate_interval", "5m").replace('"$namespace"', '".*"')
        assert "$" not in concrete, f"a dashboard variable this test does not know: {expr}"
        records.append({"record": f"dashboard:query_{index}", "expr": concrete})
    rules = tmp_path / "dashboard.yaml"
    rules.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": records}]}))
    result = run([promtool(), "check", "rules", str(rules)])
    assert result.returncode == 0, result.stdout + result.stderr


PROMTOOL_TESTS = {
    "evaluation_interval": "1m",
    "tests": [
        {   # A refused policy reload fires at once; an applied one does not.
            "interval": "1m",
            "input_series": [
                {"series": 'mcp_gateway_policy_reloads_total{result="refused", namespace="tickets"}', "values": "0 0 1 1 1"},
                {"series": 'mcp_gateway_policy_reloads_total{result="applied", namespace="tickets"}', "values": "0 1 2 3 4"},
            ],
            "alert_rule_test": [
                {"eval_time": "1m", "alertname": "McpGatewayPolicyReloadFailed", "exp_alerts": []},
                {"eval_time": "3m", "alertname": "McpGatewayPolicyReloadFailed", "exp_alerts": [
                    {"exp_labels": {"severity": "warning", "result": "refused", "namespace": "tickets"}}]},
            ],
        },
        {   # Two 429s per second for longer than 10 minutes fire; the same for 5 minutes does not yet.
            "interval": "1m",
            "input_series": [
                {"series": 'mcp_gateway_requests_total{outcome="refused", status="429", namespace="tickets"}', "values": "0+120x30"},
                {"series": 'mcp_gateway_requests_total{outcome="forwarded", status="200", namespace="tickets"}', "values": "0+600x30"},
            ],
            "alert_rule_test": [
                {"eval_time": "8m", "alertname": "McpGatewayTooManyRequests", "exp_alerts": []},
                {"eval_time": "20m", "alertname": "McpGatewayTooManyRequests", "exp_alerts": [
                    {"exp_labels": {"severity": "warning", "namespace": "tickets"}}]},
            ],
        },
        {   # Keys not refreshed for over two hours while requests come in: stale. The idle gateway's are not.
            "interval": "1m",
            "input_series": [
                {"series": 'mcp_gateway_jwks_age_seconds{issuer="https://idp.example.com", namespace="tickets"}', "values": "7000+60x20"},
                {"series": 'mcp_gateway_requests_total{outcome="forwarded", status="200", namespace="tickets"}', "values": "0+60x20"},
                {"series": 'mcp_gateway_jwks_age_seconds{issuer="https://idp.example.com", namespace="idle"}', "values": "7000+60x20"},
                {"series": 'mcp_gateway_requests_total{outcome="forwarded", status="200", namespace="idle"}', "values": "5x20"},
            ],
            "alert_rule_test": [
                {"eval_time": "2m", "alertname": "McpGatewayJwksStale", "exp_alerts": []},
                {"eval_time": "15m", "alertname": "McpGatewayJwksStale", "exp_alerts": [
                    {"exp_labels": {"severity": "warning", "issuer": "https://idp.example.com", "namespace": "tickets"}}]},
            ],
        },
    ],
}


def expected_annotations(alert: str, **values: str) -> dict[str, str]:
    """The alert's annotations as Prometheus renders them: template-free ones as written, others from ``values``."""
    rule = next(r for group in rule_groups()["groups"] for r in group["rules"] if r.get("alert") == alert)
    rendered_annotations = {key: text for key, text in rule["annotations"].items() if "{{" not in text}
    rendered_annotations.update(values)
    assert set(rendered_annotations) == set(rule["annotations"]), f"give the rendered text of {alert}'s templated annotations"
    return rendered_annotations


def test_O4_promtool_unit_tests_of_the_alerts(tmp_path):
    stale = "Keys of https://idp.example.com in tickets are 2h 11m 40s old; rotated keys will not be known and their tokens will be refused."
    tests = json.loads(json.dumps(PROMTOOL_TESTS))
    for case in tests["tests"]:
        for check in case["alert_rule_test"]:
            for alert in check["exp_alerts"]:
                extra = {"description": stale} if check["alertname"] == "McpGatewayJwksStale" else {}
                alert["exp_annotations"] = expected_annotations(check["alertname"], **extra)
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rule_groups()))
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump({"rule_files": ["rules.yaml"], **tests}))
    result = subprocess.run([promtool(), "test", "rules", "tests.yaml"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def exported_sample_names(metrics_text: str) -> set[str]:
    """Every sample name the families of a /metrics page can have, with or without samples yet."""
    from prometheus_client.parser import text_string_to_metric_families

    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum", "_created"),
                "gauge": ("",), "summary": ("", "_count", "_sum")}
    names: set[str] = set()
    for family in text_string_to_metric_families(metrics_text):
        names.update(family.name + suffix for suffix in suffixes.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names


async def test_O4_every_metric_a_rule_or_panel_names_exists_on_a_running_gateway(serve_gateway, upstream, issuer):
    import aiohttp

    from tests.factories import bearer

    gateway = await serve_gateway(upstream.url, auth={"introspection": {"client_id": "gateway", "client_secret": "gateway-secret"}})
    call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "echo", "arguments": {}}}
    async with aiohttp.ClientSession() as http:
        for headers in (bearer(issuer.mint()), {}, {"Authorization": "Bearer not-a-jwt"}):  # allowed, 401, introspected
            async with http.post(f"{gateway.url}/mcp", json=call, headers=headers) as response:
                await response.read()
        async with http.get(f"{gateway.admin_url}/metrics") as response:
            exported = exported_sample_names(await response.text())
    named = set()
    for text in [rule["expr"] for group in rule_groups()["groups"] for rule in group["rules"]] + dashboard_exprs():
        named.update(re.findall(r"\bmcp_gateway_[a-z_]+", text))
    assert len(named) >= 12, named
    assert named <= exported, f"named by a rule or panel but not exported: {sorted(named - exported)}"
