#!/usr/bin/env bash
# Build the project's image with podman or docker, whichever is present (`make image`).
#
#   docker/build.sh [--gpu] [-t IMAGE] [--model] [-- EXTRA BUILD ARGS...]
#     (default) docker/Dockerfile      -> ghcr.io/iranker/iranker:0.1.0      (the tag the manifests under k8s/ name)
#     --gpu     docker/Dockerfile.gpu  -> ghcr.io/iranker/iranker-gpu:0.1.0
#     --model   WITH_MODEL=true: the embedded model baked in (~520 MB more)
#
# - The base image: docker/base-image.sh (present, else pulled, else made from Debian's packages; CPU image only).
# - Package sources: the host's pip configuration (index-url, extra-index-url, find-links, cert, trusted-host; from
#   `pip config list` and PIP_* variables) is written to a pip.conf handed to the build as the secret `pip.conf`.
#   With podman, local folders and files it names (a wheel folder, a file:// index, a CA bundle) are mounted
#   read-only under /run/host for the build; docker cannot mount them, so they are left out there (with a note).
#   When a find-links folder holds the torch wheel constraints.txt pins, torch comes from it (TORCH_INDEX_URL=).
#   IRANKER_PIP_CONF=FILE uses that pip.conf as it is; IRANKER_PIP_CONF=none passes none (the Dockerfile's defaults:
#   PyPI and the PyTorch CPU index, what a laptop with a plain pip uses).
# - Builds run on the host's network (--network host): no bridge network is created.
#
# Environment: CONTAINER_ENGINE (podman|docker), IMAGE, TORCH_INDEX_URL, IRANKER_PIP_CONF, PYTHON (for pip config).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
cd "$ROOT"

gpu=0; model=false; image=${IMAGE:-}
while [ $# -gt 0 ]; do
    case "$1" in
        --gpu) gpu=1 ;;
        --model) model=true ;;
        -t) image=$2; shift ;;
        --) shift; break ;;
        *) echo "build: unknown argument $1 (see the header of $0)" >&2; exit 2 ;;
    esac
    shift
done
extra=("$@")

ENGINE=$("$HERE/engine.sh")
if [ "$gpu" = 1 ]; then
    dockerfile=docker/Dockerfile.gpu; image=${image:-ghcr.io/iranker/iranker-gpu:0.1.0}
else
    dockerfile=docker/Dockerfile; image=${image:-ghcr.io/iranker/iranker:0.1.0}
    "$HERE/base-image.sh" "$ENGINE"
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/iranker-build.XXXXXX")
trap 'rm -rf "$work"' EXIT
args=(--network host -f "$dockerfile" --build-arg "GIT_SHA=$(git rev-parse HEAD 2>/dev/null || echo unknown)")
[ "$gpu" = 1 ] || args+=(--build-arg "WITH_MODEL=$model")

pipconf=${IRANKER_PIP_CONF:-host}
if [ "$pipconf" = host ]; then
    # the host's pip settings -> pip.conf for the build (+ the podman mounts of the local paths it names)
    "${PYTHON:-python3}" "$HERE/pipconf.py" --engine "$ENGINE" --out "$work/pip.conf" \
        --mounts "$work/mounts" --torch-from "$work/torch-index" --constraints constraints.txt
    if [ -s "$work/pip.conf" ]; then
        args+=(--secret "id=pip.conf,src=$work/pip.conf")
        mapfile -t mounts < "$work/mounts"
        args+=("${mounts[@]}")
        if [ -z "${TORCH_INDEX_URL+set}" ] && [ -f "$work/torch-index" ]; then
            args+=(--build-arg "TORCH_INDEX_URL=$(cat "$work/torch-index")")
        fi
    fi
elif [ "$pipconf" != none ]; then
    args+=(--secret "id=pip.conf,src=$pipconf")
fi
[ -z "${TORCH_INDEX_URL+set}" ] || args+=(--build-arg "TORCH_INDEX_URL=$TORCH_INDEX_URL")
if [ "$ENGINE" = docker ]; then
    export DOCKER_BUILDKIT=1   # RUN --mount=type=secret
fi

# Disk: a build writes the builder stage (~3.3 GB), the image (~3 GB) and, with podman, a copy of its largest layer
# under /var/tmp while committing it. Refuse early, with the way out, rather than fail after minutes of pip.
need_gb=${IRANKER_BUILD_MIN_FREE_GB:-8}
if [ "$ENGINE" = podman ]; then
    store=$(podman info --format '{{.Store.GraphRoot}}' 2>/dev/null || true); scratch=/var/tmp
else
    store=$(docker info --format '{{.DockerRootDir}}' 2>/dev/null || true); scratch=
fi
for dir in ${store:+"$store"} ${scratch:+"$scratch"}; do
    [ -d "$dir" ] || continue
    free_gb=$(( $(df -Pk "$dir" | awk 'NR==2 {print $4}') / 1048576 ))
    if [ "$free_gb" -lt "$need_gb" ]; then
        echo "build: only $free_gb GB free under $dir; an image build needs about $need_gb GB" \
             "(IRANKER_BUILD_MIN_FREE_GB). '$ENGINE system df' shows what images hold;" \
             "'$ENGINE image prune -f' removes untagged ones" >&2
        exit 1
    fi
done

echo "build: $ENGINE build -t $image ${args[*]} ${extra[*]} ." >&2
start=$(date +%s)
"$ENGINE" build -t "$image" "${args[@]}" "${extra[@]}" .
size=$("$ENGINE" image inspect --format '{{.Size}}' "$image")
echo "build: $image built in $(( $(date +%s) - start )) s; $(( size / 1000000 )) MB" >&2
# The builder stage gets a tag too (all its steps cached: seconds), so that it is not untagged and stays the cache
# of the next build. Then the untagged images earlier builds of this project left (every stage carries the label
# io.iranker.build; the previous image and builder lost their tags to these) are removed, so that rebuilding does
# not fill the disk.
"$ENGINE" build "${args[@]}" "${extra[@]}" --target builder -t "${image%:*}-builder:cache" . >/dev/null \
    || echo "build: could not tag the builder stage (the next build starts without its cache)" >&2
"$ENGINE" image prune -f --filter label=io.iranker.build >/dev/null || echo "build: could not prune old images" >&2
