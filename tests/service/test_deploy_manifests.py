"""Every manifest in deploy/ validates against the Kubernetes / dask-kubernetes schemas and kubectl parses it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from imaxt_pipeline.service.cli import build_parser

from imaxt_pipeline.testing._k8s import kubectl_parse, validate

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
MANIFESTS = sorted(DEPLOY.glob("*.yaml"))


def test_expected_manifests_exist():
    assert {p.name for p in MANIFESTS} >= {"daskjob-sample.yaml", "rbac.yaml", "watcher.yaml",
                                           "secret-s3.template.yaml"}
    assert "kubectl apply" in (DEPLOY / "README.md").read_text()


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_validates_and_parses(path, tmp_path):
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert docs
    for doc in docs:
        validate(doc)
        assert doc["metadata"]["namespace"] == "imaxt"
    parsed = kubectl_parse(path.read_text(), tmp_path)
    assert [(p["kind"], p["metadata"]["name"]) for p in parsed] == [
        (d["kind"], d["metadata"]["name"]) for d in docs]


def test_commands_in_manifests_are_accepted_by_the_cli():
    parser = build_parser()
    watcher = next(yaml.safe_load_all((DEPLOY / "watcher.yaml").read_text()))
    container = watcher["spec"]["template"]["spec"]["containers"][0]
    args = parser.parse_args(container["args"][1:])
    assert args.backend == "kubernetes" and args.notify_port == 8080
    assert watcher["spec"]["template"]["spec"]["serviceAccountName"] == "imaxt-watcher"
    job = [d for d in yaml.safe_load_all((DEPLOY / "daskjob-sample.yaml").read_text())][1]
    runner = job["spec"]["job"]["spec"]["containers"][0]["args"]
    assert parser.parse_args(runner[1:]).command == "process"


def test_rbac_binds_the_watcher_service_account():
    sa, role, binding = yaml.safe_load_all((DEPLOY / "rbac.yaml").read_text())
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"],
                                    "namespace": "imaxt"}]
    resources = {r for rule in role["rules"] for r in rule["resources"]}
    assert resources == {"daskjobs", "daskworkergroups", "configmaps"}
