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
from pathlib import Path

import jsonschema
import pytest
import yaml

from imaxt_pipeline.service.cli import build_parser
from imaxt_pipeline.service.k8s import KubeSettings

from imaxt_pipeline.testing._k8s import kubectl_parse, validate

CHART = Path(__file__).resolve().parents[2] / "helm" / "imaxt-pipeline"
RELEASE = {"Name": "imaxt", "Namespace": "imaxt"}


def values() -> dict:
    return yaml.safe_load((CHART / "values.yaml").read_text())


def schema() -> dict:
    return json.loads((CHART / "values.schema.json").read_text())


def lookup(expr: str, ctx: dict):
    node = ctx
    for part in expr.strip().lstrip(".").split("."):
        node = node[part]                         # KeyError: template uses an unknown value
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


@pytest.mark.parametrize("path, value", [
    (("bucket", "url"), "not-a-url"),
    (("workers", "replicas"), -1),
    (("watcher", "maxAttempts"), 0),
    (("gpuWorkers", "enabled"), "yes"),
    (("image", "pullPolicy"), "Sometimes"),
    (("workers", "resources", "limits", "memory"), "lots"),
    (("typo",), 1),
])
def test_schema_rejects_bad_values(path, value):
    vals = values()
    node = vals
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(vals, schema())


@pytest.mark.parametrize("gpu, dashboard", [(True, False), (False, True)])
def test_rendered_chart_is_valid_kubernetes(gpu, dashboard, tmp_path):
    vals = values()
    vals["gpuWorkers"]["enabled"] = gpu
    vals["dashboard"]["enabled"] = dashboard
    vals["pipeline"]["steps"] = {"mosaic": {"levels": 2}}
    jsonschema.validate(vals, schema())
    docs = render_chart(vals)
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == sorted(["ServiceAccount", "Role", "RoleBinding", "ConfigMap", "Deployment", "Service"]
                           + (["Service"] if dashboard else []))
    for d in docs:
        validate(d)
    text = "\n---\n".join(yaml.safe_dump(d) for d in docs)
    assert len(kubectl_parse(text, tmp_path)) == len(docs)

    deployment = next(d for d in docs if d["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    args = build_parser().parse_args(container["args"][1:])      # the real CLI accepts them
    assert (args.bucket_url, args.backend, args.max_attempts) == ("s3://imaxt-raw/incoming", "kubernetes", 3)
    assert args.gpu_workers == (1 if gpu else None)
    config_map = next(d for d in docs if d["kind"] == "ConfigMap")
    kube = yaml.safe_load(config_map["data"]["kube.yaml"])
    assert set(kube) <= {f.name for f in dataclasses.fields(KubeSettings)}
    settings = KubeSettings(**kube)
    assert settings.gpu_resources["limits"]["nvidia.com/gpu"] == "1" and settings.workers == 4
    run_config = yaml.safe_load(config_map["data"]["config.yaml"])
    assert run_config == {"steps": {"mosaic": {"levels": 2}}}
    from imaxt_pipeline.config import load_config
    cfg_path = tmp_path / "config.yaml"
    cfg_path.write_text(config_map["data"]["config.yaml"])
    assert load_config(cfg_path, input_url="a", output_url="b").steps.mosaic.levels == 2


def test_rbac_is_least_privilege():
    role = next(d for d in render_chart(values()) if d["kind"] == "Role")
    granted = {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"]
               for r in rule["resources"] for v in rule["verbs"]}
    assert {g for g, _, _ in granted} == {"kubernetes.dask.org", ""}
    assert {r for _, r, _ in granted} == {"daskjobs", "daskworkergroups", "configmaps"}
    assert not any(v in ("*", "update", "patch", "escalate", "bind") for _, _, v in granted)
    assert not any(r == "secrets" for _, r, _ in granted)


def test_renderer_refuses_unknown_values_and_constructs():
    with pytest.raises(KeyError):
        render("x: {{ .Values.nope }}", values())
    with pytest.raises(ValueError, match="not supported"):
        render("x: {{ include \"t\" . }}", values())
    assert render("a:{{- if .Values.dashboard.enabled }}\n  b: 1{{- end }}", values()) == "a:"
    vals = copy.deepcopy(values())
    vals["dashboard"]["enabled"] = True
    assert yaml.safe_load(render("a:{{- if .Values.dashboard.enabled }}\n  b: 1{{- end }}", vals)) == {"a": {"b": 1}}
