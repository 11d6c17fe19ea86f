# syntax=docker/dockerfile:1
# The Shipyard gateway image: multi-stage (build tools stay in the build stage), non-root,
# with a health check on /livez. Extras are a build argument:
#   docker build --build-arg EXTRAS=postgres,redis,otel,ui -t shipyard:local .
# See docs/deployment.md.

ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim-bookworm AS build
ARG EXTRAS=postgres,redis
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
# The project itself (its dependencies are pinned to ranges in pyproject.toml).
# hadolint ignore=DL3013
RUN python -m venv /opt/shipyard \
    && /opt/shipyard/bin/pip install --no-compile ".[${EXTRAS}]" \
    && /opt/shipyard/bin/python -m compileall -q /opt/shipyard/lib

FROM python:${PYTHON_VERSION}-slim-bookworm AS runtime
LABEL org.opencontainers.image.title="shipyard" \
      org.opencontainers.image.description="OpenAI-compatible gateway and service host" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 shipyard \
    && useradd --system --uid 10001 --gid shipyard --home-dir /var/lib/shipyard \
       --create-home --shell /usr/sbin/nologin shipyard
COPY --from=build /opt/shipyard /opt/shipyard
ENV PATH=/opt/shipyard/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SHIPYARD_CONFIG=/etc/shipyard/shipyard.yaml
# The working directory holds the SQLite store (when no PostgreSQL is configured) and the
# trace spool; mount a volume here to keep them.
WORKDIR /var/lib/shipyard
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/livez', timeout=2)"]
ENTRYPOINT ["shipyard"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
