#!/usr/bin/env bash
# A local minikube cluster running iranker (same steps as kind-up.sh): cert-manager, KServe (RawDeployment), Kubeflow
# Pipelines standalone, the Feast operator, MinIO; the image built and loaded; k8s/overlays/minikube applied; one
# ranking request sent. Needs: docker, minikube, kubectl, curl. Tear down with k8s/teardown.sh minikube.
set -euo pipefail
# shellcheck source=k8s/lib.sh
source "$(dirname "$0")/lib.sh"

PROFILE="${PROFILE:-iranker}"
need docker minikube kubectl curl
if ! minikube status -p "$PROFILE" >/dev/null 2>&1; then
  say "starting minikube profile $PROFILE (4 CPUs, 12 GiB)"
  minikube start -p "$PROFILE" --cpus 4 --memory 12g --kubernetes-version v1.32.0
fi
kubectl config use-context "$PROFILE"
install_platform
build_image
minikube -p "$PROFILE" image load "$IMAGE"
create_secrets
deploy minikube
smoke_request
say "done: kubectl -n iranker get inferenceservice iranker; pipeline UI: kubectl -n kubeflow port-forward svc/ml-pipeline-ui 8081:80"
