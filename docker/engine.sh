#!/usr/bin/env bash
# Print the container engine to use: $CONTAINER_ENGINE if set, else podman, else a docker whose daemon answers.
# Exit 1 (with a message on stderr) when there is none.
set -euo pipefail
if [ -n "${CONTAINER_ENGINE:-}" ]; then
    echo "$CONTAINER_ENGINE"; exit 0
fi
if command -v podman >/dev/null 2>&1; then
    echo podman; exit 0
fi
if command -v docker >/dev/null 2>&1; then
    if docker info >/dev/null 2>&1; then
        echo docker; exit 0
    fi
    echo "engine: docker is installed but its daemon does not answer (docker info); install podman or start it" >&2
    exit 1
fi
echo "engine: neither podman nor docker is installed" >&2
exit 1
