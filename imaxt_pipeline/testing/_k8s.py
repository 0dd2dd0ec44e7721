"""Validation helpers for Kubernetes objects (used by the k8s, deploy and helm tests).

* built-in kinds: ``kubernetes_validate`` (strict: unknown fields are errors);
* dask-kubernetes kinds: the operator's own CRD OpenAPI schemas, shipped in the
  installed ``dask_kubernetes`` package, with their ``python://`` references
  resolved (PodSpec etc. from the Kubernetes definitions ``kubernetes_validate``
  ships), checked with ``jsonschema``;
* ``kubectl create --dry-run=client --validate=false``: kubectl needs API
  discovery even for a client-side dry run, so it talks to a tiny local
  discovery server that lists the resource types used here.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

K8S_VERSION = "1.32.0"
DASK_API = "kubernetes.dask.org/v1"


@functools.lru_cache
def _k8s_definitions() -> dict[str, Any]:
    root = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema" / f"v{K8S_VERSION}-local-strict"
    text = (root / "_definitions.json").read_text().replace("/api/_definitions.json#/$defs/", "#/$defs/")
    defs: dict[str, Any] = json.loads(text)["$defs"]
    return defs


def _resolve(node: Any, templates: dict[str, Any]) -> Any:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("python://"):
            name = ref.rsplit("/", 1)[-1]
            if "templates.yaml" in ref:
                return _resolve(copy.deepcopy(templates[name]), templates)
            return {"$ref": f"#/$defs/{name}"}
        return {k: _resolve(v, templates) for k, v in node.items()}
    if isinstance(node, list):
        return [_resolve(v, templates) for v in node]
    return node


@functools.lru_cache
def crd_schema(kind: str) -> dict[str, Any]:
    """The resolved OpenAPI schema of a dask-kubernetes kind, e.g. ``"DaskJob"``."""
    import dask_kubernetes.operator

    folder = Path(dask_kubernetes.operator.__file__).parent / "customresources"
    templates = yaml.safe_load((folder / "templates.yaml").read_text())["definitions"]
    crd = yaml.safe_load((folder / f"{kind.lower()}.yaml").read_text())
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    schema: dict[str, Any] = _resolve(version["schema"]["openAPIV3Schema"], templates)
    schema["$defs"] = _k8s_definitions()
    return schema


def validate(obj: dict[str, Any]) -> None:
    """Raise if ``obj`` is not a valid object of its kind."""
    for key in ("apiVersion", "kind", "metadata"):
        assert key in obj, f"{obj.get('kind')}: missing {key}"
    assert obj["metadata"].get("name"), f"{obj['kind']}: metadata.name missing"
    if obj["apiVersion"] == DASK_API:
        jsonschema.Draft7Validator(crd_schema(obj["kind"])).validate(obj)
    else:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


# -- kubectl -----------------------------------------------------------------
_RESOURCES = {
    "/api/v1": [
        ("configmaps", "ConfigMap"),
        ("secrets", "Secret"),
        ("services", "Service"),
        ("serviceaccounts", "ServiceAccount"),
        ("pods", "Pod"),
        ("namespaces", "Namespace"),
    ],
    "/apis/apps/v1": [("deployments", "Deployment")],
    "/apis/rbac.authorization.k8s.io/v1": [("roles", "Role"), ("rolebindings", "RoleBinding")],
    "/apis/kubernetes.dask.org/v1": [
        ("daskjobs", "DaskJob"),
        ("daskclusters", "DaskCluster"),
        ("daskworkergroups", "DaskWorkerGroup"),
        ("daskautoscalers", "DaskAutoscaler"),
    ],
}


def _discovery(path: str) -> dict[str, Any] | None:
    if path == "/api":
        return {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}
    if path == "/apis":
        groups = []
        for p in _RESOURCES:
            if p.startswith("/apis/"):
                group, version = p.split("/")[2:4]
                gv = {"groupVersion": f"{group}/{version}", "version": version}
                groups.append({"name": group, "versions": [gv], "preferredVersion": gv})
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}
    if path in _RESOURCES:
        group_version = "v1" if path == "/api/v1" else "/".join(path.split("/")[2:4])
        return {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": group_version,
            "resources": [
                {
                    "name": n,
                    "singularName": "",
                    "kind": k,
                    "namespaced": k != "Namespace",
                    "verbs": ["create", "get", "list", "delete", "patch", "update"],
                }
                for n, k in _RESOURCES[path]
            ],
        }
    if path == "/version":
        return {"major": "1", "minor": "32", "gitVersion": "v1.32.0"}
    return None


class _Discovery(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        doc = _discovery(self.path.split("?")[0])
        data = json.dumps(doc if doc is not None else {"kind": "Status", "code": 404}).encode()
        self.send_response(200 if doc is not None else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@contextlib.contextmanager
def discovery_server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Discovery)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def kubectl_parse(text: str, tmp_dir: Path) -> list[dict[str, Any]]:
    """Objects as kubectl parses ``text`` (``create --dry-run=client --validate=false``).

    Without a ``kubectl`` binary, falls back to PyYAML plus the same
    apiVersion/kind/metadata.name checks.
    """
    docs = [d for d in yaml.safe_load_all(text) if d]
    if shutil.which("kubectl") is None:  # pragma: no cover - kubectl is installed here
        for d in docs:
            assert d.get("apiVersion") and d.get("kind") and d.get("metadata", {}).get("name")
        return docs
    path = tmp_dir / "objects.yaml"
    path.write_text(text)
    with discovery_server() as server:
        out = subprocess.run(
            [
                "kubectl",
                "create",
                "--dry-run=client",
                "--validate=false",
                "-f",
                str(path),
                "-o",
                "json",
                f"--server={server}",
                "--kubeconfig=/dev/null",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert out.returncode == 0, out.stderr
    decoder, text_out, pos = json.JSONDecoder(), out.stdout, 0
    items: list[dict[str, Any]] = []
    while pos < len(text_out.rstrip()):
        obj, pos = decoder.raw_decode(text_out, pos)
        items.extend(obj["items"] if obj.get("kind") == "List" else [obj])
        while pos < len(text_out) and text_out[pos].isspace():
            pos += 1
    assert len(items) == len(docs), (len(items), len(docs), out.stderr)
    return items


# -- Pod Security Standards, "restricted" profile -------------------------------
# https://kubernetes.io/docs/concepts/security/pod-security-standards/ (baseline + restricted, v1.32).
# Each rule is one row: (name, scope, check). A "pod" check gets the PodSpec; a "container" check gets
# (container, PodSpec) for every container, init container and ephemeral container. A check returns
# None when the rule holds, else what is wrong. :func:`pod_specs` finds every PodSpec in an object
# (Deployment templates, DaskJob runner, DaskCluster scheduler and workers, DaskWorkerGroup), so a
# new kind or a new pod in an existing one is checked without touching this table.
RESTRICTED_VOLUME_SOURCES = frozenset(
    {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret"}
)
SAFE_SYSCTLS = frozenset(
    {
        "kernel.shm_rmid_forced",
        "net.ipv4.ip_local_port_range",
        "net.ipv4.ip_local_reserved_ports",
        "net.ipv4.ip_unprivileged_port_start",
        "net.ipv4.ping_group_range",
        "net.ipv4.tcp_syncookies",
        "net.ipv4.tcp_keepalive_time",
        "net.ipv4.tcp_fin_timeout",
        "net.ipv4.tcp_keepalive_intvl",
        "net.ipv4.tcp_keepalive_probes",
    }
)
_SELINUX_TYPES = {None, "", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}


def _sc(node: dict[str, Any]) -> dict[str, Any]:
    return node.get("securityContext") or {}


def _effective(container: dict[str, Any], pod: dict[str, Any], key: str) -> Any:
    """A container's security setting, falling back to the pod's (as the kubelet does)."""
    value = _sc(container).get(key)
    return _sc(pod).get(key) if value is None else value


def _selinux(sc: dict[str, Any]) -> str | None:
    opts = sc.get("seLinuxOptions") or {}
    if opts.get("type") not in _SELINUX_TYPES or opts.get("user") or opts.get("role"):
        return f"seLinuxOptions {opts}"
    return None


def _apparmor(sc: dict[str, Any]) -> str | None:
    kind = (sc.get("appArmorProfile") or {}).get("type")
    return None if kind in (None, "RuntimeDefault", "Localhost") else f"appArmorProfile {kind}"


def _volume_source(volume: dict[str, Any]) -> str:
    return next((k for k in volume if k != "name"), "<none>")


def _first(messages: Iterator[str]) -> str | None:
    return next(messages, None)


# Pod-level checks: f(pod) -> None or what is wrong.
def _host_namespaces(pod: dict[str, Any]) -> str | None:
    return _first(f"{k}: true" for k in ("hostNetwork", "hostPID", "hostIPC") if pod.get(k))


def _host_process(node: dict[str, Any]) -> str | None:
    return "hostProcess: true" if (_sc(node).get("windowsOptions") or {}).get("hostProcess") else None


def _volume_types(pod: dict[str, Any]) -> str | None:
    volumes = pod.get("volumes") or []
    bad = (v for v in volumes if _volume_source(v) not in RESTRICTED_VOLUME_SOURCES)
    return _first(f"volume {v.get('name')}: {_volume_source(v)}" for v in bad)


def _sysctls(pod: dict[str, Any]) -> str | None:
    return _first(f"sysctl {s.get('name')}" for s in _sc(pod).get("sysctls") or [] if s.get("name") not in SAFE_SYSCTLS)


def _pod_seccomp(pod: dict[str, Any]) -> str | None:
    unconfined = (_sc(pod).get("seccompProfile") or {}).get("type") == "Unconfined"
    return "pod seccompProfile Unconfined" if unconfined else None


def _pod_non_root(pod: dict[str, Any]) -> str | None:
    return "pod runAsNonRoot: false" if _sc(pod).get("runAsNonRoot") is False else None


def _pod_user(pod: dict[str, Any]) -> str | None:
    return "pod runAsUser: 0" if _sc(pod).get("runAsUser") == 0 else None


# Container-level checks: f(container, pod) -> None or what is wrong.
def _privileged(c: dict[str, Any], pod: dict[str, Any]) -> str | None:
    return "privileged: true" if _sc(c).get("privileged") else None


def _host_ports(c: dict[str, Any], pod: dict[str, Any]) -> str | None:
    return _first(f"hostPort {p['hostPort']}" for p in c.get("ports") or [] if p.get("hostPort"))


def _proc_mount(c: dict[str, Any], pod: dict[str, Any]) -> str | None:
    mount = _sc(c).get("procMount")
    return None if mount in (None, "Default") else f"procMount {mount}"


def _no_escalation(c: dict[str, Any], pod: dict[str, Any]) -> str | None:
    return None if _sc(c).get("allowPrivilegeEscalation") is False else "allowPrivilegeEscalation must be false"


def _non_root(c: dict[str, Any], pod: dict[str, Any]) -> str | None:
    return None if _effective(c, pod, "runAsNonRoot") is True else "runAsNonRoot must be true (pod or container)"


def _user(c: dict[str, Any], pod: dict[str, Any]) -> str | None:
    # Stricter than the profile, which allows it unset: the image's USER is numeric, so say the UID here too.
    uid = _effective(c, pod, "runAsUser")
    return None if isinstance(uid, int) and uid > 0 else f"runAsUser {uid!r} must be a UID > 0 (pod or container)"


def _seccomp(c: dict[str, Any], pod: dict[str, Any]) -> str | None:
    kind = (_effective(c, pod, "seccompProfile") or {}).get("type")
    return None if kind in ("RuntimeDefault", "Localhost") else f"seccompProfile {kind!r}: RuntimeDefault or Localhost"


def _drop_all(c: dict[str, Any], pod: dict[str, Any]) -> str | None:
    dropped = (_sc(c).get("capabilities") or {}).get("drop") or []
    return None if "ALL" in dropped else "capabilities.drop must include ALL"


def _add_caps(c: dict[str, Any], pod: dict[str, Any]) -> str | None:
    added = (_sc(c).get("capabilities") or {}).get("add") or []
    return _first(f"capability {cap} added" for cap in added if cap != "NET_BIND_SERVICE")


RESTRICTED_POD_RULES: list[tuple[str, Callable[[dict[str, Any]], str | None]]] = [
    ("host namespaces", _host_namespaces),
    ("host process", _host_process),
    ("volume types", _volume_types),
    ("sysctls", _sysctls),
    ("selinux", lambda pod: _selinux(_sc(pod))),
    ("apparmor", lambda pod: _apparmor(_sc(pod))),
    ("seccomp", _pod_seccomp),
    ("run as non-root", _pod_non_root),
    ("run as user", _pod_user),
]

RESTRICTED_CONTAINER_RULES: list[tuple[str, Callable[[dict[str, Any], dict[str, Any]], str | None]]] = [
    ("privileged", _privileged),
    ("host process", lambda c, pod: _host_process(c)),
    ("host ports", _host_ports),
    ("selinux", lambda c, pod: _selinux(_sc(c))),
    ("apparmor", lambda c, pod: _apparmor(_sc(c))),
    ("proc mount", _proc_mount),
    ("privilege escalation", _no_escalation),
    ("run as non-root", _non_root),
    ("run as user", _user),
    ("seccomp", _seccomp),
    ("capabilities drop", _drop_all),
    ("capabilities add", _add_caps),
]


def pod_specs(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    """Every PodSpec inside ``node`` (any dict whose ``containers`` is a list), with its path."""
    found: list[tuple[str, dict[str, Any]]] = []
    if isinstance(node, dict):
        if isinstance(node.get("containers"), list):
            found.append((path or ".", node))
        for key, value in node.items():
            found += pod_specs(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += pod_specs(value, f"{path}[{i}]")
    return found


def pod_security_violations(obj: dict[str, Any]) -> list[str]:
    """What in ``obj`` breaks the ``restricted`` Pod Security profile, one line per broken rule."""
    where = f"{obj.get('kind')}/{(obj.get('metadata') or {}).get('name')}"
    problems = []
    for path, pod in pod_specs(obj):
        for name, pod_check in RESTRICTED_POD_RULES:
            if (msg := pod_check(pod)) is not None:
                problems.append(f"{where} {path}: [{name}] {msg}")
        containers = [c for key in ("initContainers", "containers", "ephemeralContainers") for c in pod.get(key) or []]
        for container in containers:
            for name, container_check in RESTRICTED_CONTAINER_RULES:
                if (msg := container_check(container, pod)) is not None:
                    problems.append(f"{where} {path} container {container.get('name')}: [{name}] {msg}")
    return problems
