# syntax=docker/dockerfile:1.7
#
# moodwatch worker image: analyzer, aggregator, dashboard (`moodwatch <command>`), and the source of
# the Triton model repository (/opt/moodwatch/triton_repo, copied out by the chart's init container).
#
#   docker build -t registry.example.com/moodwatch:0.1.0 .
#   docker run --rm -p 9464:9464 -e MOODWATCH_KAFKA_BOOTSTRAP=... registry.example.com/moodwatch:0.1.0
#
# Multi-stage: the builder has compilers and pip caches; the runtime stage gets only the finished
# virtual environment, the model repository and the prebuilt retrieval index, runs as uid 10001 and
# works with a read-only root filesystem (writes go to /tmp).
# Pin the base by digest in CI for reproducible builds:
#   --build-arg PYTHON_IMAGE=python:3.11.13-slim-bookworm@sha256:<digest>

ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

# ------------------------------------------------------------------------------------ builder
FROM ${PYTHON_IMAGE} AS builder

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG PIP_VERSION=25.2
ARG SETUPTOOLS_VERSION=80.9.0
ARG WHEEL_VERSION=0.45.1
# 1 = build the seed retrieval index into the image (the analyzer would otherwise build it at start
# into MOODWATCH_ARTIFACTS_DIR, which is read-only in the chart's pods).
ARG PREBUILD_SEED_INDEX=1

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_INPUT=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false

# Compilers only for the odd dependency without a wheel; they stay in this stage. Debian packages
# follow the pinned base image's bookworm point release (exact apt pins break on security updates).
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

RUN --mount=type=cache,target=/root/.cache/pip \
    pip install "pip==${PIP_VERSION}" "setuptools==${SETUPTOOLS_VERSION}" "wheel==${WHEEL_VERSION}"

# CPU torch from the PyTorch index first: the project's torch==2.13.* pin is then satisfied by the
# +cpu wheel and PyPI's CUDA wheels (several GB of nvidia-* libraries) are never pulled. GPU work
# runs in Triton, not in the workers.
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"

WORKDIR /src
# The build context is filtered by .dockerignore (no .venv, .git, tests, data, caches).
COPY . /src
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install /src \
 && python -c "import torch; assert torch.__version__.endswith('+cpu'), torch.__version__" \
 && python -c "import workers.cli, workers.common.health" \
 && moodwatch --help >/dev/null

# The model repository the Triton init container copies, the artifacts folder, and (by default)
# the seed retrieval index built into it.
# triton_repo/ holds templates: `moodwatch triton export` renders the servable GPU repository with
# the shipped heads, proposer and seed index (it must run from the source tree, where the templates are):
# moodwatch_learned (the default MOODWATCH_TRITON_MODEL) and the moodwatch ensemble (selective search).
RUN mkdir -p /opt/moodwatch/artifacts \
 && if [ -d /src/artifacts ]; then cp -R /src/artifacts/. /opt/moodwatch/artifacts/; fi \
 && if [ "${PREBUILD_SEED_INDEX}" = "1" ]; then \
      python -c "from models.encoders import load_text_encoder; \
from pipelines.retrieval import default_index_dir, ensure_seed_index; \
ensure_seed_index(default_index_dir('/opt/moodwatch/artifacts'), load_text_encoder('all-MiniLM-L6-v2', 'cpu'))"; \
    fi \
 && cd /src && MOODWATCH_ARTIFACTS_DIR=/opt/moodwatch/artifacts \
      python -m workers.cli triton export --repo /opt/moodwatch/triton_repo --kind gpu \
        --model moodwatch_learned --model moodwatch

# ------------------------------------------------------------------------------------ runtime
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="moodwatch" \
      org.opencontainers.image.description="Streaming visual-sentiment moderation workers" \
      org.opencontainers.image.licenses="Apache-2.0"

# Runtime shared libraries only (OpenMP for faiss / torch); no compilers, no package caches.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 \
 && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 moodwatch \
 && useradd --system --uid 10001 --gid 10001 --home-dir /home/moodwatch --create-home \
      --shell /usr/sbin/nologin moodwatch

COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /opt/moodwatch /opt/moodwatch

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false \
    HOME=/home/moodwatch \
    XDG_CACHE_HOME=/tmp/.cache \
    MPLCONFIGDIR=/tmp/.matplotlib \
    MOODWATCH_ARTIFACTS_DIR=/opt/moodwatch/artifacts \
    MOODWATCH_METRICS_HOST=0.0.0.0 \
    MOODWATCH_METRICS_PORT=9464 \
    MOODWATCH_LOG_JSON=true

WORKDIR /opt/moodwatch
USER 10001:10001

# 9464: /metrics, /livez, /readyz (workers/common/health.py); 8080: the dashboard page.
EXPOSE 9464 8080

# Liveness of the worker loop, for plain Docker / Compose (Kubernetes uses the chart's probes).
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
  CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('MOODWATCH_METRICS_PORT', '9464'); sys.exit(0 if urllib.request.urlopen(f'http://127.0.0.1:{port}/livez', timeout=4).status == 200 else 1)"]

CMD ["moodwatch", "analyzer"]
