# imaxt-pipeline image: the watcher, the job runner and the Dask scheduler/workers.
#   CPU:  docker build -t ghcr.io/imaxt/imaxt-pipeline:0.1.0 .
#   CUDA: docker build --build-arg VARIANT=cuda -t ghcr.io/imaxt/imaxt-pipeline:0.1.0-cuda .
# The GPU worker group runs the CUDA image (default tag: the CPU tag plus "-cuda").
#
# Pins: every Python dependency from .ci/constraints.txt (what CI tests), torch by TORCH_VERSION
# (the Makefile's CPU torch; the CUDA variant installs the same version from the CUDA index instead of
# the constraints' "+cpu" build), Debian packages by exact version on a fixed Debian release.
# Layers: dependencies are installed from pyproject.toml + constraints alone, so a source change only
# re-runs the last, --no-deps install.
ARG PYTHON_VERSION=3.11
FROM python:${PYTHON_VERSION}-slim-bookworm

ARG VARIANT=cpu
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_CPU=https://download.pytorch.org/whl/cpu
ARG TORCH_INDEX_CUDA=https://download.pytorch.org/whl/cu126
# Debian bookworm's tini; bump together with the base image's Debian release.
ARG TINI_VERSION=0.19.0-1+b3
# Must match RUN_AS_UID in imaxt_pipeline/service/k8s.py (runAsUser of every pod).
ARG IMAXT_UID=1000

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MPLCONFIGDIR=/tmp/matplotlib \
    NUMBA_CACHE_DIR=/tmp/numba

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

RUN apt-get update \
 && apt-get install -y --no-install-recommends "tini=${TINI_VERSION}" \
 && rm -rf /var/lib/apt/lists/*

# torch first, from the index of the variant: the CPU wheel is small, the CUDA one brings its libraries.
RUN if [ "$VARIANT" = "cuda" ]; then index="$TORCH_INDEX_CUDA"; else index="$TORCH_INDEX_CPU"; fi \
 && pip install --no-cache-dir --index-url "$index" "torch==${TORCH_VERSION}"

WORKDIR /opt/imaxt
# Dependency layer: only pyproject.toml and the constraints. The requirements are the package's own
# dependencies plus the k8s and gpu extras (cellpose also runs on the CPU, so both variants carry it);
# torch is dropped from the constraints because the line above installed the variant's build.
COPY pyproject.toml ./
COPY .ci/constraints.txt /tmp/constraints.txt
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
extras = p['optional-dependencies']; \
print('\n'.join(p['dependencies'] + extras['k8s'] + extras['gpu']))" > /tmp/requirements.txt \
 && grep -v '^torch==' /tmp/constraints.txt > /tmp/constraints-notorch.txt \
 && pip install --no-cache-dir --constraint /tmp/constraints-notorch.txt --requirement /tmp/requirements.txt \
 && python -c "import torch; print('torch', torch.__version__)"

# Source layer: the package itself, without touching the dependencies installed above.
COPY README.md LICENSE ./
COPY imaxt_pipeline ./imaxt_pipeline
RUN pip install --no-cache-dir --no-deps . \
 && imaxt --help > /dev/null

RUN groupadd --gid "${IMAXT_UID}" imaxt \
 && useradd --uid "${IMAXT_UID}" --gid "${IMAXT_UID}" --create-home --shell /usr/sbin/nologin imaxt
# Numeric, so that Kubernetes can check runAsNonRoot against the image.
USER 1000:1000
WORKDIR /home/imaxt

EXPOSE 8080 8786 8787 8788
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["imaxt", "--help"]
