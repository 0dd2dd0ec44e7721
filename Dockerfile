# imaxt-pipeline image: the watcher, the job runner and the Dask scheduler/workers.
#   CPU:  docker build -t ghcr.io/imaxt/imaxt-pipeline:0.1.0 .
#   CUDA: docker build --build-arg VARIANT=cuda -t ghcr.io/imaxt/imaxt-pipeline:0.1.0-cuda .
ARG PYTHON_VERSION=3.11
FROM python:${PYTHON_VERSION}-slim AS base

ARG VARIANT=cpu
# torch wheels: CPU-only index for the small image, CUDA 12.4 wheels for GPU workers.
ARG TORCH_VERSION=2.5.1
ARG TORCH_INDEX_CPU=https://download.pytorch.org/whl/cpu
ARG TORCH_INDEX_CUDA=https://download.pytorch.org/whl/cu124

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MPLCONFIGDIR=/tmp/matplotlib

RUN apt-get update \
 && apt-get install -y --no-install-recommends tini \
 && rm -rf /var/lib/apt/lists/*

RUN if [ "$VARIANT" = "cuda" ]; then index="$TORCH_INDEX_CUDA"; else index="$TORCH_INDEX_CPU"; fi \
 && pip install --index-url "$index" "torch==${TORCH_VERSION}"

WORKDIR /opt/imaxt
COPY pyproject.toml README.md ./
COPY imaxt_pipeline ./imaxt_pipeline
# cellpose (the "gpu" extra) also runs on the CPU, so both variants carry it; only torch differs.
RUN pip install ".[k8s,gpu]" \
 && imaxt --help > /dev/null

RUN groupadd --gid 1000 imaxt && useradd --uid 1000 --gid 1000 --create-home imaxt
USER 1000:1000
WORKDIR /home/imaxt

EXPOSE 8080 8786 8787 8788
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["imaxt", "--help"]
