#!/usr/bin/env bash
# Shared steps of kind-up.sh and minikube-up.sh (sourced). Versions are pinned here; override by environment.
set -euo pipefail

CERT_MANAGER_VERSION="${CERT_MANAGER_VERSION:-v1.16.2}"
KSERVE_VERSION="${KSERVE_VERSION:-v0.15.2}"
KFP_VERSION="${KFP_VERSION:-2.4.0}"
FEAST_VERSION="${FEAST_VERSION:-v0.49.0}"
IMAGE="${IRANKER_IMAGE:-ghcr.io/iranker/iranker:0.1.0}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"

say() { printf '[iranker] %s\n' "$*" >&2; }

need() {
  local tool
  for tool in "$@"; do
    command -v "$tool" >/dev/null 2>&1 || { say "missing tool: $tool"; exit 1; }
  done
}

random_secret() { head -c 24 /dev/urandom | base64 | tr -d '/+=' ; }

build_image() {
  say "building $IMAGE (docker/Dockerfile, embedded model inside)"
  docker build -f "$ROOT/docker/Dockerfile" --build-arg WITH_MODEL=true \
    --build-arg GIT_SHA="$(git -C "$ROOT" rev-parse --short=12 HEAD)" -t "$IMAGE" "$ROOT"
}

install_platform() {
  say "cert-manager $CERT_MANAGER_VERSION"
  kubectl apply -f "https://github.com/cert-manager/cert-manager/releases/download/${CERT_MANAGER_VERSION}/cert-manager.yaml"
  kubectl wait --for=condition=Available deployment --all -n cert-manager --timeout=300s

  say "KServe $KSERVE_VERSION (RawDeployment mode: no Knative, no Istio)"
  kubectl apply --server-side -f "https://github.com/kserve/kserve/releases/download/${KSERVE_VERSION}/kserve.yaml"
  kubectl wait --for=condition=Available deployment/kserve-controller-manager -n kserve --timeout=300s
  kubectl apply --server-side -f "https://github.com/kserve/kserve/releases/download/${KSERVE_VERSION}/kserve-cluster-resources.yaml"
  kubectl patch configmap inferenceservice-config -n kserve --type merge \
    -p '{"data":{"deploy":"{\"defaultDeploymentMode\":\"RawDeployment\"}"}}'

  say "Kubeflow Pipelines $KFP_VERSION (standalone)"
  kubectl apply -k "github.com/kubeflow/pipelines/manifests/kustomize/cluster-scoped-resources?ref=${KFP_VERSION}"
  kubectl wait --for condition=established --timeout=120s crd/applications.app.k8s.io
  kubectl apply -k "github.com/kubeflow/pipelines/manifests/kustomize/env/platform-agnostic?ref=${KFP_VERSION}"

  say "Feast operator $FEAST_VERSION"
  kubectl apply -f "https://raw.githubusercontent.com/feast-dev/feast/${FEAST_VERSION}/infra/feast-operator/dist/install.yaml"
}

create_secrets() {
  local minio_user minio_password redis_password
  minio_user="iranker"
  minio_password="$(random_secret)"
  redis_password="$(random_secret)"
  say "secrets (random, generated here, never written to the repository)"
  kubectl create namespace minio --dry-run=client -o yaml | kubectl apply -f -
  kubectl create namespace iranker --dry-run=client -o yaml | kubectl apply -f -
  kubectl -n minio create secret generic minio-root --from-literal=user="$minio_user" \
    --from-literal=password="$minio_password" --dry-run=client -o yaml | kubectl apply -f -
  kubectl -n iranker create secret generic iranker-model-store --from-literal=access_key_id="$minio_user" \
    --from-literal=secret_access_key="$minio_password" --dry-run=client -o yaml | kubectl apply -f -
  kubectl -n iranker create secret generic iranker-redis --from-literal=password="$redis_password" \
    --dry-run=client -o yaml | kubectl apply -f -
  kubectl -n iranker create secret generic iranker-feast-redis \
    --from-literal=redis="connection_string: redis:6379,password=${redis_password}" \
    --dry-run=client -o yaml | kubectl apply -f -
}

deploy() {
  local overlay="$1"
  say "applying k8s/overlays/$overlay"
  kubectl apply --server-side -k "$HERE/overlays/$overlay"
  kubectl wait --for=condition=Ready inferenceservice/iranker -n iranker --timeout=900s
}

smoke_request() {
  say "one ranking request through a port-forward"
  kubectl port-forward -n iranker svc/iranker-predictor 8080:80 >/dev/null 2>&1 &
  local pf=$!
  trap 'kill "$pf" 2>/dev/null || true' RETURN
  sleep 3
  curl -sf -H 'Content-Type: application/json' \
    -d "{\"instances\": [$(cat "$ROOT/samples/request.json")]}" \
    http://localhost:8080/v1/models/iranker:predict
  echo
}
