#!/usr/bin/env bash
# Build the recsys image when its inputs changed (what `make image` runs).
#
#   container/image.sh [serving|training]      (default serving)
#
# Variables: CONTAINER_ENGINE (podman | docker; default podman), IMAGE (default localhost/recsys),
# BASE_IMAGE (default: localhost/debian:bookworm-slim when present or makeable here, else the
# Dockerfile's public debian:bookworm-slim), PYTHON (for pip; default .venv/bin/python),
# TORCH_INDEX (an extra pip index for the CPU torch wheel, e.g.
# https://download.pytorch.org/whl/cpu; empty where pip already finds it).
#
# Steps: (1) the wheelhouse build/wheels/<target> from requirements-<target>.txt with
# requirements.lock as constraints, rebuilt when those files change; (2) a sha256 over every
# input (Dockerfile, .dockerignore, requirements files, the code folders the target copies, the
# base image name); an image already labelled with that hash is reused, so `make test` pays for a
# build only after a change; (3) otherwise `build --format docker` (Podman's OCI default drops
# HEALTHCHECK) with --network=host under Podman, tagged IMAGE:<tag> and IMAGE:<commit>.
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET=${1:-serving}
case "$TARGET" in serving|training) ;; *) echo "error: target must be serving or training, got '$TARGET'" >&2; exit 2;; esac
ENGINE=${CONTAINER_ENGINE:-podman}
IMAGE=${IMAGE:-localhost/recsys}
PYTHON=${PYTHON:-.venv/bin/python}
command -v "$ENGINE" >/dev/null || { echo "error: $ENGINE is not installed (CONTAINER_ENGINE=podman|docker; .ci/run installs podman on Debian)" >&2; exit 1; }
if [ "$ENGINE" = podman ]; then
  export CONTAINERS_CONF=${CONTAINERS_CONF:-$PWD/container/containers.conf}
  BUILD_FLAGS=(--format docker --network=host)
else
  BUILD_FLAGS=()
fi
if [ "$TARGET" = serving ]; then
  REQS=requirements-serving.txt; TAG=latest; DIRS="core common archives handlers realtime gateway recsys_sagemaker"
else
  REQS=requirements.txt; TAG=training; DIRS="core common archives handlers realtime gateway recsys_sagemaker etl training monitoring"
fi

hash_files() { # sha256 over the names and contents of the given files, in a stable order
  sort -z | xargs -0 sha256sum | sha256sum | cut -c1-64
}

# (1) wheelhouse
WHEELS=build/wheels/$TARGET
deps_hash=$(printf '%s\0' "$REQS" requirements.lock | hash_files)
if [ "$(cat "$WHEELS/.inputs" 2>/dev/null)" != "$deps_hash" ]; then
  echo "wheelhouse $WHEELS from $REQS (+ requirements.lock as constraints)"
  rm -rf "$WHEELS"; mkdir -p "$WHEELS"
  extra=()
  [ -n "${TORCH_INDEX:-}" ] && extra=(--extra-index-url "$TORCH_INDEX")
  cp "$REQS" "$WHEELS/requirements.txt"
  grep -vE '^\s*(#|$)' requirements.lock | sed -E 's/\s+#.*//' > "$WHEELS/constraints.txt"
  "$PYTHON" -m pip wheel --quiet "${extra[@]}" -r "$WHEELS/requirements.txt" \
    -c "$WHEELS/constraints.txt" -w "$WHEELS" 2> >(grep -v "^WARNING: Location" >&2)
  ls "$WHEELS"/torch-*.whl >/dev/null 2>&1 || { echo "error: no torch wheel in $WHEELS" >&2; exit 1; }
  case "$(ls "$WHEELS"/torch-*.whl)" in *+cpu*) ;; *) echo "warning: $WHEELS has no +cpu torch wheel: the image would carry the CUDA build (set TORCH_INDEX=https://download.pytorch.org/whl/cpu)" >&2;; esac
  echo "$deps_hash" > "$WHEELS/.inputs"
  echo "wheelhouse: $(du -sh "$WHEELS" | cut -f1) in $(ls "$WHEELS"/*.whl | wc -l) wheels"
fi

# base image
if [ -z "${BASE_IMAGE:-}" ]; then
  if "$ENGINE" image exists localhost/debian:bookworm-slim 2>/dev/null \
     || { [ "$ENGINE" = docker ] && docker image inspect localhost/debian:bookworm-slim >/dev/null 2>&1; }; then
    BASE_IMAGE=localhost/debian:bookworm-slim
  elif [ "$ENGINE" = podman ] && command -v debootstrap >/dev/null && [ "$(id -u)" = 0 ]; then
    CONTAINER_ENGINE=$ENGINE container/base-image.sh localhost/debian:bookworm-slim
    BASE_IMAGE=localhost/debian:bookworm-slim
  else
    BASE_IMAGE=docker.io/library/debian:bookworm-slim
  fi
fi

# (2) inputs
files=(Dockerfile .dockerignore "$REQS" requirements.lock)
for d in $DIRS; do
  [ -d "$d" ] && while IFS= read -r -d '' f; do files+=("$f"); done \
    < <(find "$d" -type f ! -path '*/__pycache__/*' ! -name '*.pyc' -print0)
done
inputs=$( { printf '%s\0' "${files[@]}" | hash_files; echo "$BASE_IMAGE $TARGET"; } | sha256sum | cut -c1-64)
current=$("$ENGINE" image inspect --format '{{ index .Config.Labels "io.recsys.inputs" }}' "$IMAGE:$TAG" 2>/dev/null || true)
commit=$(git rev-parse --short HEAD 2>/dev/null || echo nogit)
[ -n "$(git status --porcelain -- $DIRS Dockerfile "$REQS" requirements.lock 2>/dev/null)" ] && commit="$commit-dirty"
ctag=$commit; [ "$TARGET" = training ] && ctag="training-$commit"
if [ "$current" = "$inputs" ]; then
  "$ENGINE" tag "$IMAGE:$TAG" "$IMAGE:$ctag"
  echo "$IMAGE:$TAG is up to date (inputs ${inputs:0:12}); tagged $IMAGE:$ctag"
  exit 0
fi

# (3) build
echo "building $IMAGE:$TAG (target $TARGET, base $BASE_IMAGE, inputs ${inputs:0:12})"
start=$(date +%s)
"$ENGINE" build "${BUILD_FLAGS[@]}" --target "$TARGET" \
  --build-arg BASE_IMAGE="$BASE_IMAGE" --build-arg INPUTS_HASH="$inputs" --build-arg DEPS_HASH="$deps_hash" \
  --build-arg VERSION="$commit" --build-arg REVISION="$(git rev-parse HEAD 2>/dev/null || echo unknown)" \
  --build-arg CREATED="$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
  --label io.recsys.inputs="$inputs" \
  -t "$IMAGE:$TAG" -t "$IMAGE:$ctag" -f Dockerfile .
size=$("$ENGINE" image inspect --format '{{ .Size }}' "$IMAGE:$TAG")
echo "built $IMAGE:$TAG and $IMAGE:$ctag in $(( $(date +%s) - start )) s, $(( size / 1000000 )) MB"
