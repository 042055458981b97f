#!/usr/bin/env bash
# Docker smoke test: build the image offline, run it, and check it answers from outside the container.
#
#   scripts/docker-smoke.sh            (as root where Docker is not yet installed/running)
#
# Self-sufficient for CI on Debian: installs docker.io / debootstrap with apt-get when missing and starts
# dockerd by hand when no engine answers. No registry needs to be reachable:
#   - base image: $BASE_IMAGE (default python:3.11-slim) if present or pullable; otherwise a local
#     Debian bookworm + python3 + python3-venv made with debootstrap and `docker import`, kept tagged as
#     $LOCAL_BASE so later runs skip that step;
#   - packages: wheels built/downloaded on the host (for the base image's Python version) and put in the
#     build context; the build itself runs with --network none;
#   - model: the bundles in ./bundles if any, else a tiny random bundle made by the project's own export.
# Then: run the container with a read-only root filesystem (--read-only, a tmpfs on /tmp), check /healthz,
# /readyz, a real /fill-mask and /classify answer, that it runs as a non-root user, cannot write to its
# filesystem, and has no torch. Everything it started (container, image, temp files, dockerd) is
# removed on exit, failure included; only the cached base image stays.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
BASE_IMAGE=${BASE_IMAGE:-python:3.11-slim}
LOCAL_BASE=${LOCAL_BASE:-pocketbert-base:bookworm-py3}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
IMAGE=pocketbert-smoke:$$
CONTAINER=pocketbert-smoke-$$
WORK=$(mktemp -d /tmp/pocketbert-docker-smoke.XXXXXX)
DOCKERD_PID=

log() { printf '[docker-smoke] %s\n' "$*" >&2; }

cleanup() {
    local rc=$?
    set +e
    if [ "$rc" -ne 0 ] && docker container inspect "$CONTAINER" >/dev/null 2>&1; then
        log "container logs:"
        docker logs --tail 50 "$CONTAINER" >&2
    fi
    docker rm -f "$CONTAINER" >/dev/null 2>&1
    docker rmi -f "$IMAGE" >/dev/null 2>&1
    docker image prune -f --filter "label=pocketbert.stage=build" >/dev/null 2>&1  # the build stage's leftovers
    if [ -n "$DOCKERD_PID" ]; then
        log "stopping the dockerd this script started (pid $DOCKERD_PID)"
        kill "$DOCKERD_PID" 2>/dev/null
        wait "$DOCKERD_PID" 2>/dev/null
    fi
    rm -rf "$WORK"
    if [ "$rc" -eq 0 ]; then log "PASSED"; else log "FAILED (exit $rc)"; fi
    exit "$rc"
}
trap cleanup EXIT

apt_install() {
    [ "$(id -u)" -eq 0 ] || { log "need root to apt-get install $*"; exit 1; }
    log "apt-get install $*"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# --- 1. a Docker engine ----------------------------------------------------------------------------------------
command -v docker >/dev/null && command -v dockerd >/dev/null || apt_install docker.io
if ! docker info >/dev/null 2>&1; then
    log "starting dockerd"
    dockerd >"$WORK/dockerd.log" 2>&1 &
    DOCKERD_PID=$!
    for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
    docker info >/dev/null 2>&1 || { log "dockerd did not start:"; tail -20 "$WORK/dockerd.log" >&2; exit 1; }
fi

# --- 2. a base image -----------------------------------------------------------------------------------------
if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    log "base image $BASE_IMAGE (present)"
elif timeout 60 docker pull -q "$BASE_IMAGE" >/dev/null 2>&1; then
    log "base image $BASE_IMAGE (pulled)"
else
    if ! docker image inspect "$LOCAL_BASE" >/dev/null 2>&1; then
        command -v debootstrap >/dev/null || apt_install debootstrap
        log "$BASE_IMAGE cannot be pulled: building $LOCAL_BASE with debootstrap (once; cached afterwards)"
        debootstrap --variant=minbase --include=python3,python3-venv bookworm "$WORK/rootfs" "$DEBIAN_MIRROR" \
            >"$WORK/debootstrap.log" 2>&1 || { tail -20 "$WORK/debootstrap.log" >&2; exit 1; }
        rm -rf "$WORK"/rootfs/var/cache/apt/archives/*.deb "$WORK"/rootfs/var/lib/apt/lists/*
        tar -C "$WORK/rootfs" -c . | docker import --change 'ENV LANG=C.UTF-8' - "$LOCAL_BASE" >/dev/null
        rm -rf "$WORK/rootfs"
    fi
    log "base image $LOCAL_BASE (local debootstrap)"
    BASE_IMAGE=$LOCAL_BASE
fi
PY_VERSION=$(docker run --rm --network none "$BASE_IMAGE" python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
log "base image Python $PY_VERSION"

# --- 3. the build context: sources, bundles, wheels --------------------------------------------------------
CTX=$WORK/context
mkdir -p "$CTX/bundles" "$CTX/wheels"
cp -r app model training pyproject.toml README.md Dockerfile .dockerignore "$CTX/"
[ ! -f LICENSE ] || cp LICENSE "$CTX/"
find "$CTX" -name __pycache__ -prune -exec rm -rf {} +
if ls bundles/*/bundle.json >/dev/null 2>&1; then
    log "bundles: $(ls -d bundles/*/ | tr '\n' ' ')"
    cp -r bundles/. "$CTX/bundles/"
else
    log "no bundle in ./bundles: exporting a tiny random one with the project's export"
    "$PYTHON" - "$WORK/tiny" "$CTX/bundles/tiny" <<'PY'
import sys
from pathlib import Path

import torch

from model.bert import BertForPreTraining, BertForSequenceClassification
from model.checkpoint import save_model
from model.config import BertConfig
from model.tokenizer import Tokenizer
from training.export import export_bundle
from training.tokenizer_train import train_tokenizer

work, out = Path(sys.argv[1]), Path(sys.argv[2])
work.mkdir(parents=True)
sys.path.insert(0, "tests")
from conftest import generate_corpus  # noqa: E402 - the test suite's bilingual toy corpus

train_tokenizer([generate_corpus(work / "corpus.txt")], work / "tok", vocab_size=160)
tok = Tokenizer(work / "tok")
config = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                    intermediate_size=64, max_position_embeddings=128)
torch.manual_seed(0)
meta = {"tokenizer_sha256": tok.checksum}
save_model(work / "pre.pt", BertForPreTraining(config).eval(), meta)
save_model(work / "cls.pt", BertForSequenceClassification(config, 2).eval(),
           {**meta, "label_names": ["negative", "positive"]})
export_bundle(work / "pre.pt", work / "cls.pt", work / "tok", out, max_length=64)
PY
fi
cp bundles/README.md "$CTX/bundles/" 2>/dev/null || true

log "wheels for Python $PY_VERSION (host Python: $("$PYTHON" -c 'import platform; print(platform.python_version())'))"
# The project's own wheel (pure Python), then every dependency of its serve extra as binary wheels for the
# base image's Python, whatever the host's Python is.
"$PYTHON" -m pip wheel --no-deps "$CTX" -w "$CTX/wheels" >"$WORK/pip.log" 2>&1 || { cat "$WORK/pip.log" >&2; exit 1; }
PROJECT_WHEEL=$(ls "$CTX"/wheels/pocketbert-*.whl)
ARCH=$(uname -m)
"$PYTHON" -m pip download --only-binary=:all: --python-version "$PY_VERSION" --implementation cp \
    --platform "manylinux_2_28_$ARCH" --platform "manylinux_2_17_$ARCH" --platform "manylinux2014_$ARCH" \
    --platform "linux_$ARCH" -d "$CTX/wheels" "$PROJECT_WHEEL[serve]" >"$WORK/pip.log" 2>&1 \
    || { cat "$WORK/pip.log" >&2; exit 1; }
rm -rf "$CTX/build" "$CTX"/*.egg-info
log "$(ls "$CTX/wheels" | wc -l) wheels, $(du -sh "$CTX/wheels" | cut -f1)"

# --- 4. build (no network) and run ---------------------------------------------------------------------------
log "docker build (--network none, BASE_IMAGE=$BASE_IMAGE)"
docker build --quiet --network none --build-arg "BASE_IMAGE=$BASE_IMAGE" -t "$IMAGE" "$CTX" >/dev/null
log "image $(docker image inspect --format '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1 / 1e6}')"
# Read-only root: the service must need no writable path but a tmpfs /tmp.
docker run -d --name "$CONTAINER" --read-only --tmpfs /tmp:rw,noexec,nosuid,size=64m -p 127.0.0.1::8000 "$IMAGE" >/dev/null
PORT=$(docker port "$CONTAINER" 8000/tcp | head -1 | sed 's/.*://')
URL=http://127.0.0.1:$PORT
log "container $CONTAINER on $URL"

# --- 5. checks from outside the container ---------------------------------------------------------------------
"$PYTHON" - "$URL" <<'PY'
import json
import sys
import time
import urllib.error
import urllib.request

url = sys.argv[1]


def call(path, body=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url + path, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


for path in ("/healthz", "/readyz"):
    for _ in range(120):  # bounded: 60 s
        try:
            status, body = call(path)
        except OSError:
            status, body = None, None
        if status == 200:
            break
        time.sleep(0.5)
    assert status == 200, f"{path}: {status} {body}"
    print(f"  {path}: {body}")
models = call("/v1/models")[1]
print(f"  /v1/models: {[m['name'] for m in models['models']]} default {models['default']}")
status, body = call("/fill-mask", {"inputs": "the cat [MASK] the park.", "top_k": 3})
assert status == 200 and len(body["results"][0]) == 3, (status, body)
assert set(body["results"][0][0]) == {"score", "token", "token_str", "sequence"}, body
print(f"  /fill-mask: {[(p['token_str'], round(p['score'], 4)) for p in body['results'][0]]}")
status, body = call("/classify", {"inputs": ["a good movie", "a bad movie"]})
assert status == 200 and len(body["results"]) == 2 and body["results"][0][0]["label"], (status, body)
print(f"  /classify: {body['results'][0]}")
status, body = call("/fill-mask", {"inputs": "no mask"})
assert status == 422, (status, body)
print("  /fill-mask without [MASK]: 422")
PY
[ "$(docker inspect --format '{{.HostConfig.ReadonlyRootfs}}' "$CONTAINER")" = true ] \
    || { log "the container's root filesystem is not read-only"; exit 1; }
if docker exec "$CONTAINER" sh -c 'echo x > /app/probe' 2>/dev/null; then
    log "the container could write to /app despite --read-only"; exit 1
fi
docker exec "$CONTAINER" sh -c 'echo x > /tmp/probe && rm /tmp/probe' || { log "/tmp (tmpfs) is not writable"; exit 1; }
USER_ID=$(docker exec "$CONTAINER" id -u)
[ "$USER_ID" != 0 ] || { log "the container runs as root"; exit 1; }
docker exec "$CONTAINER" python -c "import importlib.util as u, sys; sys.exit(u.find_spec('torch') is not None)" \
    || { log "torch is installed in the runtime image"; exit 1; }
# The HEALTHCHECK command itself, run now rather than after its 30 s interval.
HEALTHCHECK_CMD=$(docker inspect --format '{{join .Config.Healthcheck.Test " "}}' "$CONTAINER")
docker exec "$CONTAINER" python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)" \
    || { log "the health check fails: $HEALTHCHECK_CMD"; exit 1; }
log "runs as uid $USER_ID on a read-only root, no torch in the image, health check passes ($HEALTHCHECK_CMD)"
