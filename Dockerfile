# syntax=docker/dockerfile:1
# Smart Dispatch sidecar image.
#
#   docker build -t smart-dispatch .
#   docker run --rm -p 50051:50051 smart-dispatch
#   docker run --rm -p 50051:50051 -v "$PWD/rules:/etc/smart-dispatch/rules:ro" smart-dispatch \
#       serve --host 0.0.0.0 --port 50051 --rules /etc/smart-dispatch/rules --store redis://redis:6379/0
#
# Two stages: the builder compiles wheels (durable-rules 2.0.28 is an sdist with a C extension,
# so it needs gcc; the Python headers ship with the python image); the runtime stage installs only
# those wheels, has no compiler and runs as a fixed non-root uid. Python stays on 3.11:
# durable-rules 2.0.28 does not import on 3.13 (docs/rules-engine.md). Needs BuildKit (the
# default builder since Docker 23) for the RUN --mount that keeps the wheels out of the image.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# build-essential is the toolchain of this base image's release; its version follows the base.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /src
# README.md is the package's long description (pyproject.toml `readme`).
COPY pyproject.toml README.md ./
COPY server/ ./server/
# One wheel per distribution: the project, durable-rules (compiled here) and every dependency.
RUN pip wheel --wheel-dir /wheels .

# --------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="smart-dispatch" \
      org.opencontainers.image.description="A gRPC rules-engine sidecar that decides which channel, when, and whether to message a person." \
      org.opencontainers.image.licenses="Apache-2.0"

# MALLOC_*: pin glibc's dynamic mmap/trim thresholds; durable-rules' throughput is bimodal
# without it (docs/rules-engine.md, trap 6). The server also sets them with mallopt at start-up.
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    MALLOC_MMAP_THRESHOLD_=1048576 \
    MALLOC_TRIM_THRESHOLD_=268435456 \
    SD_TEMPLATES=/etc/smart-dispatch/templates \
    SD_HEALTH_PORT=50052

# Install from the builder's wheels only (--no-index: nothing is fetched or compiled here); the
# bind mount keeps the wheel files themselves out of every layer.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-index --find-links /wheels /wheels/smart_dispatch-*.whl \
    && python -c "import durable.engine, smart_dispatch.app"

RUN groupadd --system --gid 10001 smartdispatch \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin smartdispatch

# The shipped rules; mount a ConfigMap (or any directory) over this path to replace them.
# Owned by root and world-readable whatever the modes in the checkout: the server only reads them.
COPY rules/ /etc/smart-dispatch/rules/
COPY templates/ /etc/smart-dispatch/templates/
RUN chmod -R a+rX,go-w /etc/smart-dispatch

USER 10001:10001

# 50051: the API (TLS when --tls-cert is given). 50052: grpc.health.v1 only, always plaintext,
# for probes that cannot do TLS (Kubernetes `grpc:` probes, the HEALTHCHECK below).
EXPOSE 50051 50052

# grpc.health.v1 Check of the service on the plaintext health port (SD_HEALTH_PORT), 2 s
# deadline; exit 0 only when SERVING (start() reports SERVING only after the rules loaded and
# the port is bound; stop() reports NOT_SERVING first). Works with TLS on the API port too.
HEALTHCHECK --interval=15s --timeout=5s --start-period=15s --retries=3 \
    CMD ["smart-dispatch", "health"]

# Exec form: smart-dispatch is PID 1 and receives SIGTERM itself; it drains in-flight calls for
# up to SD_SHUTDOWN_GRACE_S (default 10 s) - give `docker stop -t` / terminationGracePeriodSeconds
# a little more than that.
ENTRYPOINT ["smart-dispatch"]
CMD ["serve", "--host", "0.0.0.0", "--port", "50051", "--rules", "/etc/smart-dispatch/rules"]
