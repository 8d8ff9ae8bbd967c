#!/usr/bin/env bash
# Delete the local cluster made by kind-up.sh or minikube-up.sh: k8s/teardown.sh kind|minikube
set -euo pipefail

case "${1:-}" in
  kind) kind delete cluster --name "${CLUSTER:-iranker}" ;;
  minikube) minikube delete -p "${PROFILE:-iranker}" ;;
  *) echo "usage: $0 kind|minikube" >&2; exit 2 ;;
esac
