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
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import jsonschema
import kubernetes_validate
import yaml

K8S_VERSION = "1.32.0"
DASK_API = "kubernetes.dask.org/v1"


@functools.lru_cache
def _k8s_definitions() -> dict[str, Any]:
    root = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema" / f"v{K8S_VERSION}-local-strict"
    text = (root / "_definitions.json").read_text().replace("/api/_definitions.json#/$defs/", "#/$defs/")
    return json.loads(text)["$defs"]


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
    schema = _resolve(version["schema"]["openAPIV3Schema"], templates)
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
    "/api/v1": [("configmaps", "ConfigMap"), ("secrets", "Secret"), ("services", "Service"),
                ("serviceaccounts", "ServiceAccount"), ("pods", "Pod"), ("namespaces", "Namespace")],
    "/apis/apps/v1": [("deployments", "Deployment")],
    "/apis/rbac.authorization.k8s.io/v1": [("roles", "Role"), ("rolebindings", "RoleBinding")],
    "/apis/kubernetes.dask.org/v1": [("daskjobs", "DaskJob"), ("daskclusters", "DaskCluster"),
                                     ("daskworkergroups", "DaskWorkerGroup"),
                                     ("daskautoscalers", "DaskAutoscaler")],
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
        gv = "v1" if path == "/api/v1" else "/".join(path.split("/")[2:4])
        return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": [
            {"name": n, "singularName": "", "kind": k, "namespaced": k != "Namespace",
             "verbs": ["create", "get", "list", "delete", "patch", "update"]} for n, k in _RESOURCES[path]]}
    if path == "/version":
        return {"major": "1", "minor": "32", "gitVersion": "v1.32.0"}
    return None


class _Discovery(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
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
        out = subprocess.run(["kubectl", "create", "--dry-run=client", "--validate=false", "-f", str(path),
                              "-o", "json", f"--server={server}", "--kubeconfig=/dev/null"],
                             capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    decoder, text_out, pos, items = json.JSONDecoder(), out.stdout, 0, []
    while pos < len(text_out.rstrip()):
        obj, pos = decoder.raw_decode(text_out, pos)
        items.extend(obj["items"] if obj.get("kind") == "List" else [obj])
        while pos < len(text_out) and text_out[pos].isspace():
            pos += 1
    assert len(items) == len(docs), (len(items), len(docs), out.stderr)
    return items
