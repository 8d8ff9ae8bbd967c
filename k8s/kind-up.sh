#!/usr/bin/env bash
# A local kind cluster running iranker: cert-manager, KServe (RawDeployment), Kubeflow Pipelines standalone, the Feast
# operator, MinIO; the image built here and side-loaded; k8s/overlays/kind applied; one ranking request sent.
# Needs: docker, kind, kubectl, curl. Tear down with k8s/teardown.sh kind.
set -euo pipefail
# shellcheck source=k8s/lib.sh
source "$(dirname "$0")/lib.sh"

CLUSTER="${CLUSTER:-iranker}"
need docker kind kubectl curl
if ! kind get clusters | grep -qx "$CLUSTER"; then
  say "creating kind cluster $CLUSTER"
  kind create cluster --name "$CLUSTER" --wait 120s
fi
kubectl config use-context "kind-$CLUSTER"
install_platform
build_image
kind load docker-image "$IMAGE" --name "$CLUSTER"
create_secrets
deploy kind
smoke_request
say "done: kubectl -n iranker get inferenceservice iranker; pipeline UI: kubectl -n kubeflow port-forward svc/ml-pipeline-ui 8081:80"
