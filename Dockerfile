# syntax=docker/dockerfile:1
# Image of the loopwatch example app (example/app.py), used by k8s/ and skaffold.yaml.
#   docker build -t loopwatch-example .
#   docker run --rm -p 8000:8000 -e DEMO_MODE=optimized loopwatch-example

# ---- build: install loopwatch with the `demo` extra into a virtualenv ----
FROM python:3.12.12-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY loopwatch/ loopwatch/
# The wheel carries example/ for `loopwatch demo` (pyproject's package-dir); the app the
# image serves is the copy in /app below.
COPY example/ example/
# Versions come from pyproject.toml's ranges (no lock file in the project).
# hadolint ignore=DL3013
RUN pip install ".[demo]"

# ---- runtime ----
FROM python:3.12.12-slim-bookworm
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    DEMO_MODE=bottlenecks \
    OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=http://jaeger:4318/v1/traces
RUN groupadd --system --gid 10001 app \
 && useradd --system --uid 10001 --gid 10001 --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin app
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY example/ example/
# Byte-compile now: the container runs with a read-only root filesystem.
RUN python -m compileall -q example
USER 10001:10001
EXPOSE 8000 9464
# Uses only the standard library: the image has no curl. urlopen raises on non-2xx.
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; r = urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4); sys.exit(0 if r.status == 200 else 1)"]
ENTRYPOINT ["uvicorn", "example.app:app", "--host", "0.0.0.0", "--port", "8000"]
