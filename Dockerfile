# Taskloom's production image (docs/OPERATIONS.md, README "Production").
#   docker build -t taskloom .
#   docker run --env-file .env taskloom            # the API (CMD api)
#   docker run --env-file .env taskloom worker     # a worker
#   docker run --env-file .env taskloom migrate    # the one-off migrate job, before a rollout
# No embedded servers: DATABASE_URL and REDIS_URL must be set (TASKLOOM_ENV=production).
# tests/deploy/test_image.py lints this file with hadolint and runs its install script.

ARG PYTHON_IMAGE=python:3.12-slim-bookworm

# --- builder: the virtualenv, built by the same script the test suite runs ---------------
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /build
COPY pyproject.toml README.md requirements.lock ./
COPY src ./src
COPY deploy/docker/install.sh ./deploy/docker/install.sh
RUN sh deploy/docker/install.sh /opt/taskloom /build

# --- final: the runtime, no compilers, no pip cache, no build tree ------------------------
FROM ${PYTHON_IMAGE}
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="Taskloom" \
      org.opencontainers.image.description="Self-hostable, multi-tenant platform on which teams automate work with AI" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="docker.io/library/python:3.12-slim-bookworm"

ENV PATH=/opt/taskloom/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TASKLOOM_ENV=production \
    DATA_DIR=/data \
    API_HOST=0.0.0.0 \
    API_PORT=8000

# The virtualenv stays root-owned and read-only to the service user, which owns only /data.
RUN groupadd --system --gid 10001 taskloom \
    && useradd --system --uid 10001 --gid taskloom --home-dir /data --no-create-home \
       --shell /usr/sbin/nologin taskloom \
    && mkdir /data \
    && chown taskloom:taskloom /data
COPY --from=builder /opt/taskloom /opt/taskloom

USER 10001:10001
WORKDIR /data
EXPOSE 8000
# /health/live touches nothing (no database, no Redis). slim has no curl: Python's stdlib.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('API_PORT', '8000') + '/health/live', timeout=4)"]
ENTRYPOINT ["taskloom"]
CMD ["api"]
