# pocketbert web service: the `serve` extra only (FastAPI, onnxruntime, sentencepiece, numpy; no torch),
# run as a non-root user, serving the bundle(s) in ./bundles on port 8000. It writes only to /tmp (the
# engine's plan cache), so it also runs with a read-only root:
#
#   docker build -t pocketbert .
#   docker run --rm -p 8000:8000 pocketbert
#   docker run --rm -p 8000:8000 --read-only --tmpfs /tmp pocketbert
#
# Dependencies come from wheels/ in the build context when it holds any (an offline build: see
# scripts/docker-smoke.sh, which builds them on the host), else from PyPI.
ARG BASE_IMAGE=python:3.11-slim

# --- build: a virtual environment with the project and its serve extra ---------------------------------------
FROM ${BASE_IMAGE} AS build
# Marks this stage's leftover images, so scripts/docker-smoke.sh can remove them.
LABEL pocketbert.stage=build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY . /src
RUN python3 -m venv /opt/venv \
 && if ls /src/wheels/*.whl >/dev/null 2>&1; then \
        /opt/venv/bin/pip install --no-index --find-links /src/wheels "pocketbert[serve]"; \
    else \
        /opt/venv/bin/pip install "/src[serve]"; \
    fi \
 && /opt/venv/bin/python -c "import app.main, onnxruntime, sentencepiece" \
 && chmod -R u=rwX,go=rX /src/bundles

# --- runtime: the environment, the bundles, an unprivileged user --------------------------------------------
FROM ${BASE_IMAGE} AS runtime
RUN useradd --system --uid 10001 --user-group --no-create-home --home-dir /app pocketbert
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
# Owned by root, readable by all (export writes private 0700 folders): the service cannot alter its models.
COPY --from=build /src/bundles /app/bundles
# POCKETBERT_CACHE_DIR: the engine's timed plans (model/plans.py) go to /tmp, writable even with a
# read-only root filesystem (a tmpfs or an emptyDir there).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    POCKETBERT_BUNDLES=/app/bundles \
    POCKETBERT_CACHE_DIR=/tmp/pocketbert
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
# app.main:factory: a bundle that cannot be served stops the container with one line and exit status 2.
CMD ["uvicorn", "app.main:factory", "--factory", "--host", "0.0.0.0", "--port", "8000", "--no-access-log"]
