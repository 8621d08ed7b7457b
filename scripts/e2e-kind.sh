#!/usr/bin/env bash
# `make e2e-kind`: the same e2e suite on a kind cluster, for machines with Docker.
# (Not exercised on the project's own Docker-less machines: `make e2e` runs the suite on a
# control plane built from Go modules instead.)
#
#   1. kind create cluster (name $KIND_CLUSTER, default ebbtide-e2e), unless it exists;
#   2. docker build the operator and runtime images, kind load them;
#   3. helm install charts/ebbtide with those images;
#   4. KUBECONFIG=<kind's> pytest e2e/tests (the suite sees KUBECONFIG and uses real kubelets).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
CLUSTER=${KIND_CLUSTER:-ebbtide-e2e}
TAG=${EBBTIDE_IMAGE_TAG:-e2e}
for tool in docker kind kubectl helm; do
  command -v "$tool" >/dev/null || { echo "e2e-kind: $tool is not on PATH (make e2e-kind needs Docker, kind, kubectl and helm)" >&2; exit 2; }
done
docker info >/dev/null 2>&1 || { echo "e2e-kind: no Docker engine answers; use \`make e2e\` (no Docker needed)" >&2; exit 2; }

kind get clusters | grep -qx "$CLUSTER" || kind create cluster --name "$CLUSTER" --wait 120s
KUBECONFIG_FILE=$(mktemp)
trap 'rm -f "$KUBECONFIG_FILE"' EXIT
kind get kubeconfig --name "$CLUSTER" >"$KUBECONFIG_FILE"
export KUBECONFIG="$KUBECONFIG_FILE"

docker build -f docker/runtime.Dockerfile -t "ebbtide/runtime:$TAG" .
docker build -f docker/operator.Dockerfile -t "ebbtide/operator:$TAG" .
docker build -f docker/e2e-worker.Dockerfile --build-arg "RUNTIME_IMAGE=ebbtide/runtime:$TAG" -t "ebbtide/e2e-worker:$TAG" .
# (redis and rabbitmq: kind pulls the real images the operator names)
kind load docker-image --name "$CLUSTER" "ebbtide/runtime:$TAG" "ebbtide/operator:$TAG" "ebbtide/e2e-worker:$TAG"

helm upgrade --install ebbtide charts/ebbtide -n ebbtide-system --create-namespace \
  --set image.repository=ebbtide/operator --set image.tag="$TAG" --wait --timeout 180s

EBBTIDE_E2E_OPERATOR_IMAGE="docker.io/ebbtide/operator:$TAG" \
  EBBTIDE_E2E_RUNTIME_IMAGE="docker.io/ebbtide/runtime:$TAG" \
  EBBTIDE_E2E_WORKER_IMAGE="docker.io/ebbtide/e2e-worker:$TAG" \
  EBBTIDE_E2E_PULL_POLICY=IfNotPresent \
  .venv/bin/python -m pytest -q -rs e2e/tests
