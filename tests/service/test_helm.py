"""The Helm chart without helm: values vs schema, and templates rendered by a tiny renderer.

The chart's templates use only the subset rendered here (``.Values``/``.Release``
lookups, ``quote``, ``toYaml | nindent`` and ``if``/``end``); anything else makes
the renderer fail, so the chart stays within what is tested.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from imaxt_pipeline.service import k8s
from imaxt_pipeline.service.cli import build_parser
from imaxt_pipeline.service.k8s import KubeSettings
from imaxt_pipeline.testing._k8s import kubectl_parse, pod_security_violations, pod_specs, validate

CHART = Path(__file__).resolve().parents[2] / "helm" / "imaxt-pipeline"
RELEASE = {"Name": "imaxt", "Namespace": "imaxt"}


def values() -> dict:
    return yaml.safe_load((CHART / "values.yaml").read_text())


def schema() -> dict:
    return json.loads((CHART / "values.schema.json").read_text())


def lookup(expr: str, ctx: dict):
    node = ctx
    for part in expr.strip().lstrip(".").split("."):
        node = node[part]  # KeyError: template uses an unknown value
    return node


def evaluate(expr: str, ctx: dict) -> str:
    m = re.fullmatch(r"toYaml (\S+) \| nindent (\d+)", expr)
    if m:
        dumped = yaml.safe_dump(lookup(m[1], ctx), default_flow_style=False, sort_keys=False).rstrip("\n")
        dumped = "{}" if dumped == "{}" else dumped
        pad = " " * int(m[2])
        return "\n" + "\n".join(pad + line for line in dumped.splitlines())
    m = re.fullmatch(r"(\S+) \| quote", expr)
    if m:
        return json.dumps(str(lookup(m[1], ctx)))
    if re.fullmatch(r"\.[A-Za-z][\w.]*", expr):
        value = lookup(expr, ctx)
        return str(value).lower() if isinstance(value, bool) else str(value)
    raise ValueError(f"template construct not supported by the test renderer: {expr!r}")


def render(text: str, vals: dict) -> str:
    ctx = {"Values": vals, "Release": RELEASE}

    def if_block(m: re.Match) -> str:
        return m[2] if lookup(m[1], ctx) else ""

    text = re.sub(r"\s*\{\{-? if (\S+) \}\}(.*?)\s*\{\{-? end \}\}", if_block, text, flags=re.S)

    def expr(m: re.Match) -> str:
        return ("" if m[2] else m[1]) + evaluate(m[3], ctx)

    out = re.sub(r"(\s*)\{\{(-?) (.*?) \}\}", expr, text)
    assert "{{" not in out and "}}" not in out
    return out


def render_chart(vals: dict) -> list[dict]:
    docs = []
    for path in sorted((CHART / "templates").glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(render(path.read_text(), vals)) if d]
    return docs


def test_default_values_validate_against_schema():
    jsonschema.Draft7Validator.check_schema(schema())
    jsonschema.validate(values(), schema())
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["name"] == "imaxt-pipeline" and chart["apiVersion"] == "v2"


@pytest.mark.parametrize(
    "path, value",
    [
        (("bucket", "url"), "not-a-url"),
        (("workers", "replicas"), -1),
        (("watcher", "maxAttempts"), 0),
        (("gpuWorkers", "replicas"), "one"),
        (("gpuWorkers", "replicas"), -1),
        (("gpuWorkers", "enabled"), True),  # removed: replicas 0 is "no GPU group"
        (("gpuWorkers", "tolerations"), [{"key": "nvidia.com/gpu", "operator": "Maybe"}]),
        (("gpuWorkers", "tolerations"), [{"key": "gpu", "effect": "NoSchedule", "typo": 1}]),
        (("gpuWorkers", "nodeSelector"), {"pool": 1}),
        (("image", "pullPolicy"), "Sometimes"),
        (("workers", "resources", "limits", "memory"), "lots"),
        (("typo",), 1),
    ],
)
def test_schema_rejects_bad_values(path, value):
    vals = values()
    node = vals
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(vals, schema())


def job_objects_of(settings: KubeSettings) -> list[dict]:
    return k8s.job_objects(
        "s1",
        settings,
        raw_url="s3://b/in/s1",
        output_url="s3://b/out/s1.zarr",
        raw_store_url="s3://b/raw/s1.zarr",
        config_yaml="steps: {}\n",
    )


@pytest.mark.parametrize("gpu, dashboard", [(True, False), (False, True)])
def test_rendered_chart_is_valid_kubernetes(gpu, dashboard, tmp_path):
    vals = values()
    vals["gpuWorkers"]["replicas"] = 1 if gpu else 0
    vals["dashboard"]["enabled"] = dashboard
    vals["pipeline"]["steps"] = {"mosaic": {"levels": 2}}
    jsonschema.validate(vals, schema())
    docs = render_chart(vals)
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == sorted(
        ["ServiceAccount", "Role", "RoleBinding"] * 2
        + ["ConfigMap", "Deployment", "Service"]
        + (["Service"] if dashboard else [])
    )
    for d in docs:
        validate(d)
        assert pod_security_violations(d) == []
    text = "\n---\n".join(yaml.safe_dump(d) for d in docs)
    assert len(kubectl_parse(text, tmp_path)) == len(docs)

    deployment = next(d for d in docs if d["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    args = build_parser().parse_args(container["args"][1:])  # the real CLI accepts them
    assert (args.bucket_url, args.backend, args.max_attempts) == ("s3://imaxt-raw/incoming", "kubernetes", 3)
    assert args.gpu_workers is None  # the GPU group comes from kube.yaml, not a flag
    config_map = next(d for d in docs if d["kind"] == "ConfigMap")
    kube = yaml.safe_load(config_map["data"]["kube.yaml"])
    assert set(kube) <= {f.name for f in dataclasses.fields(KubeSettings)}
    settings = KubeSettings(**kube)
    assert settings.gpu_resources["limits"]["nvidia.com/gpu"] == "1" and settings.workers == 4
    assert settings.gpu_workers == (1 if gpu else 0)
    run_config = yaml.safe_load(config_map["data"]["config.yaml"])
    assert run_config == {"steps": {"mosaic": {"levels": 2}}}
    from imaxt_pipeline.config import load_config

    cfg_path = tmp_path / "config.yaml"
    cfg_path.write_text(config_map["data"]["config.yaml"])
    assert load_config(cfg_path, input_url="a", output_url="b").steps.mosaic.levels == 2

    # What the watcher will create from these settings: restricted pods, a GPU group only when asked for.
    objs = job_objects_of(settings)
    assert [o["kind"] for o in objs] == ["ConfigMap", "DaskJob"] + (["DaskWorkerGroup"] if gpu else [])
    for obj in objs:
        validate(obj)
        assert pod_security_violations(obj) == []


def test_default_chart_holds_no_gpu_node():
    """Default values: no GPU worker per run; when enabled, the values reach the GPU group."""
    settings = KubeSettings(
        **yaml.safe_load(next(d for d in render_chart(values()) if d["kind"] == "ConfigMap")["data"]["kube.yaml"])
    )
    assert values()["gpuWorkers"]["replicas"] == 0 and settings.gpu_workers == 0
    assert not any(o["kind"] == "DaskWorkerGroup" for o in job_objects_of(settings))

    vals = values()
    vals["gpuWorkers"].update(
        replicas=2,
        nodeSelector={"cloud.google.com/gke-accelerator": "nvidia-l4"},
        tolerations=[{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}],
    )
    vals["image"]["gpuTag"] = ""  # derived: <tag>-cuda
    jsonschema.validate(vals, schema())
    kube = yaml.safe_load(next(d for d in render_chart(vals) if d["kind"] == "ConfigMap")["data"]["kube.yaml"])
    assert "gpu_image" not in kube
    (group,) = [o for o in job_objects_of(KubeSettings(**kube)) if o["kind"] == "DaskWorkerGroup"]
    pod = group["spec"]["worker"]["spec"]
    assert group["spec"]["worker"]["replicas"] == 0  # scaled up by the job for the segment step only
    (job,) = [o for o in job_objects_of(KubeSettings(**kube)) if o["kind"] == "DaskJob"]
    env = {e["name"]: e.get("value") for e in job["spec"]["job"]["spec"]["containers"][0]["env"]}
    assert env["IMAXT_GPU_WORKERS"] == "2" and env["IMAXT_GPU_WORKER_GROUP"] == group["metadata"]["name"]
    assert job["spec"]["job"]["spec"]["serviceAccountName"] == f"{RELEASE['Name']}-job"
    assert pod["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert pod["tolerations"] == [{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}]
    gc = pod["containers"][0]
    assert gc["image"] == "ghcr.io/imaxt/imaxt-pipeline:0.1.0-cuda"
    assert gc["resources"]["limits"]["nvidia.com/gpu"] == "1" and gc["args"][-2:] == ["--resources", "GPU=1"]


def test_rendered_pods_were_checked():
    found = [(d["kind"], where) for d in render_chart(values()) for where, _ in pod_specs(d)]
    assert found == [("Deployment", ".spec.template.spec")]


def test_rbac_is_least_privilege():
    roles = {d["metadata"]["name"]: d for d in render_chart(values()) if d["kind"] == "Role"}
    job = roles.pop(f"{RELEASE['Name']}-job")  # the job runner scales its GPU group, nothing else
    assert {(r, v) for rule in job["rules"] for r in rule["resources"] for v in rule["verbs"] if v != "get"} == {
        ("daskworkergroups/scale", "patch"),
        ("daskworkergroups/scale", "update"),
    }
    (role,) = roles.values()
    granted = {
        (g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]
    }
    assert {g for g, _, _ in granted} == {"kubernetes.dask.org", ""}
    assert {r for _, r, _ in granted} == {"daskjobs", "daskworkergroups", "configmaps"}
    assert not any(v in ("*", "update", "patch", "escalate", "bind") for _, _, v in granted)
    assert not any(r == "secrets" for _, r, _ in granted)


def test_renderer_refuses_unknown_values_and_constructs():
    with pytest.raises(KeyError):
        render("x: {{ .Values.nope }}", values())
    with pytest.raises(ValueError, match="not supported"):
        render('x: {{ include "t" . }}', values())
    assert render("a:{{- if .Values.dashboard.enabled }}\n  b: 1{{- end }}", values()) == "a:"
    vals = copy.deepcopy(values())
    vals["dashboard"]["enabled"] = True
    assert yaml.safe_load(render("a:{{- if .Values.dashboard.enabled }}\n  b: 1{{- end }}", vals)) == {"a": {"b": 1}}


# -- the real helm (installed by `make install` through .ci/tools.sh) -----------------
HELM = shutil.which("helm") or str(Path(sys.executable).parent.parent / "tools" / "bin" / "helm")


def needs_helm(test):
    """The real-helm tests run everywhere: a missing helm is a failure, not a skip."""
    return test


def helm(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([HELM, *args], capture_output=True, text=True, timeout=120)  # type: ignore[list-item]


def normalised(docs: list[dict]) -> list[dict]:
    """Objects sorted by kind and name, ConfigMap data parsed (helm's toYaml sorts keys and quotes differently)."""
    out = []
    for d in sorted(docs, key=lambda d: (d["kind"], d["metadata"]["name"])):
        d = copy.deepcopy(d)
        if d["kind"] == "ConfigMap":
            d["data"] = {k: yaml.safe_load(v) for k, v in d["data"].items()}
        out.append(d)
    return out


@needs_helm
def test_helm_lint_strict():
    out = helm("lint", "--strict", str(CHART))
    assert out.returncode == 0, out.stdout + out.stderr


@needs_helm
@pytest.mark.parametrize("sets", [[], ["gpuWorkers.replicas=1", "dashboard.enabled=true", "image.gpuTag="]])
def test_helm_template_matches_the_test_renderer(sets):
    """helm renders the chart into the same objects as the tiny renderer the other tests use."""
    flags = [f for s in sets for f in ("--set", s)]
    out = helm("template", RELEASE["Name"], str(CHART), "--namespace", RELEASE["Namespace"], *flags)
    assert out.returncode == 0, out.stderr
    rendered = [d for d in yaml.safe_load_all(out.stdout) if d]
    vals = values()
    for s in sets:
        path, _, value = s.partition("=")
        *parents, last = path.split(".")
        node = vals
        for key in parents:
            node = node[key]
        node[last] = yaml.safe_load(value) if value else ""
    assert normalised(rendered) == normalised(render_chart(vals))
    for d in rendered:
        assert pod_security_violations(d) == []


@needs_helm
def test_helm_enforces_the_values_schema():
    out = helm("template", "imaxt", str(CHART), "--set", "gpuWorkers.enabled=true")
    assert out.returncode != 0 and "enabled" in out.stderr
