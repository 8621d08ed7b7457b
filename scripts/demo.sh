#!/usr/bin/env bash
# `make demo`: Ebbtide end to end on a real one-node Kubernetes cluster, then
# `kubectl get pods -w` beside `kubectl get tq -w`.
#
#  1. the cluster: `make cluster-up` (control plane, kube-scheduler, the real kubelet on
#     containerd, kube-proxy, CoreDNS, kube-router; images from `make images`), or the
#     cluster in $KUBECONFIG when it is set (with the images already loaded there);
#  2. `helm install` of charts/ebbtide, watching only the demo namespace (namespaced Role):
#     the operator runs as the chart's Deployment, from the operator image, as the chart's
#     ServiceAccount; the demo prints what that account may and may not do;
#  3. a Redis pod (the broker, "external" to the operator: its URL in the Secret
#     demo-broker) and the examples/taskqueue-demo.yaml TaskQueue, its workers running
#     examples/tasks.py from the e2e worker image;
#  4. a burst of tasks (through the Redis Service's ClusterIP), and the pods and the
#     TaskQueue watched while the replicas rise and fall.
#
# Ctrl-C (or EBBTIDE_DEMO_SECONDS elapsing) tears everything down.
#
# Knobs: EBBTIDE_DEMO_BURST (tasks, default 3000), EBBTIDE_DEMO_TASK_SECONDS (each task's
# sleep, default 0.2), EBBTIDE_DEMO_SECONDS (stop after N s; default: run until Ctrl-C),
# EBBTIDE_DEMO_KEEP_CLUSTER=1 (leave a cluster this script started running),
# EBBTIDE_DEMO_OPERATOR_IMAGE / EBBTIDE_DEMO_WORKER_IMAGE (default the images of `make images`).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
PY="$ROOT/.venv/bin/python"
TAG=$(sed -n 's/^EBBTIDE_IMAGE_TAG=//p' e2e/versions.env)
OPERATOR_IMAGE=${EBBTIDE_DEMO_OPERATOR_IMAGE:-docker.io/ebbtide/operator:$TAG}
WORKER_IMAGE=${EBBTIDE_DEMO_WORKER_IMAGE:-docker.io/ebbtide/e2e-worker:$TAG}
REDIS_IMAGE=docker.io/library/redis:7.2-alpine
PULL_POLICY=Never
NS=ebbtide-demo
SYSTEM_NS=ebbtide-system
RELEASE=ebbtide
TQ=demo
MANIFEST=examples/taskqueue-demo.yaml
BURST=${EBBTIDE_DEMO_BURST:-3000}
TASK_SECONDS=${EBBTIDE_DEMO_TASK_SECONDS:-0.2}
DURATION=${EBBTIDE_DEMO_SECONDS:-0}
WORK=$(mktemp -d /tmp/ebbtide-demo.XXXXXX)
STARTED_CLUSTER=0
INSTALLED_CRD=0
declare -A PIDS=()

say() { printf '\033[1;36m==> %s\033[0m\n' "$*" >&2; }
die() { printf '\033[1;31mdemo: %s\033[0m\n' "$*" >&2; exit 1; }

stop() {
  local name=$1 pid=${PIDS[$1]:-}
  [[ -n "$pid" ]] || return 0
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
  unset "PIDS[$name]"
}

# Poll a command until it succeeds, up to $1 seconds.
wait_for() {
  local seconds=$1 what=$2; shift 2
  local deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || die "timed out after ${seconds}s waiting for $what (logs: $WORK)"
    sleep 0.5
  done
}

teardown() {
  local status=$?
  trap - EXIT INT TERM
  say "tearing down"
  stop watch
  stop watch-pods
  if [[ -n "${KUBECONFIG:-}" ]] && kubectl get ns "$NS" >/dev/null 2>&1; then
    # Deleting the TaskQueue while the operator and kubelet still run lets the workers
    # get their SIGTERM and finish like in a real cluster.
    kubectl -n "$NS" delete taskqueue "$TQ" --ignore-not-found --wait=true --timeout=60s \
      >/dev/null 2>&1 || true
  fi
  if [[ -n "${KUBECONFIG:-}" ]]; then
    "$HELM" uninstall "$RELEASE" -n "$SYSTEM_NS" --wait --timeout 60s >/dev/null 2>&1 || true
    kubectl delete ns "$NS" --ignore-not-found --wait=true --timeout=60s >/dev/null 2>&1 || true
    kubectl delete ns "$SYSTEM_NS" --ignore-not-found --wait=false >/dev/null 2>&1 || true
    if ((INSTALLED_CRD)); then
      kubectl delete crd taskqueues.ebbtide.dev --ignore-not-found >/dev/null 2>&1 || true
    fi
  fi
  if ((STARTED_CLUSTER)) && [[ "${EBBTIDE_DEMO_KEEP_CLUSTER:-0}" != 1 ]]; then
    make --no-print-directory cluster-down >"$WORK/cluster-down.log" 2>&1 || true
  fi
  if ((status != 0 && status != 130)); then
    say "logs kept in $WORK"
  else
    rm -rf "$WORK"
  fi
  say "done"
  exit "$status"
}
trap teardown EXIT
trap 'exit 130' INT TERM

# --- 1. the cluster -----------------------------------------------------------------------
HELM=$(scripts/find-helm.sh 2>/dev/null || true)
if [[ -n "${KUBECONFIG:-}" ]]; then
  say "using the cluster in KUBECONFIG=$KUBECONFIG"
  PULL_POLICY=IfNotPresent
else
  say "bringing the cluster up (make cluster-up; the first build takes ~10 min, then it is cached)"
  # Reuse a cluster that is already running, and then leave it running.
  "$PY" -m e2e.controlplane status --node >/dev/null 2>&1 || STARTED_CLUSTER=1
  KUBECONFIG=$("$PY" -m e2e.controlplane up --node) || die "the cluster did not start (see the line above)"
  export KUBECONFIG
  # kubectl and helm as built with the control plane, whatever else is on PATH.
  PATH="$(e2e/build-binaries.sh 2>/dev/null | tail -n1):$PATH"
  HELM=$(scripts/find-helm.sh)
fi
[[ -n "$HELM" ]] || die "no helm binary: run \`make cluster-up\` or set EBBTIDE_HELM"
command -v kubectl >/dev/null || die "no kubectl on PATH"
wait_for 60 "the API server" kubectl get --raw /readyz
wait_for 60 "a Ready node" bash -c "kubectl get nodes --no-headers | grep -qw Ready"

# --- 2. the chart: the operator as a Deployment, from its image --------------------------
kubectl get crd taskqueues.ebbtide.dev >/dev/null 2>&1 || INSTALLED_CRD=1
kubectl create namespace "$NS" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
say "helm install $RELEASE charts/ebbtide (watchNamespaces={$NS}, image $OPERATOR_IMAGE)"
"$HELM" upgrade --install "$RELEASE" charts/ebbtide -n "$SYSTEM_NS" --create-namespace \
  --set "watchNamespaces={$NS}" --set "image.repository=${OPERATOR_IMAGE%:*}" \
  --set "image.tag=${OPERATOR_IMAGE##*:}" --set "image.pullPolicy=$PULL_POLICY" \
  --wait --timeout 180s 2>&1 | grep -v '^walk.go' || true
"$HELM" status "$RELEASE" -n "$SYSTEM_NS" >/dev/null || die "helm install failed"
kubectl -n "$SYSTEM_NS" rollout status deployment/"$RELEASE" --timeout=120s >/dev/null ||
  die "the operator Deployment did not become ready: kubectl -n $SYSTEM_NS describe pods"
say "the operator pod, as system:serviceaccount:$SYSTEM_NS:$RELEASE, may:"
for check in "patch deployments.apps --subresource=scale -n $NS" \
  "patch pods -n $NS" "create secrets -n $NS" \
  "list deployments.apps -n default" "create clusterroles.rbac.authorization.k8s.io"; do
  # shellcheck disable=SC2086
  printf '     can-i %-52s %s\n' "$check" \
    "$(kubectl auth can-i $check --as="system:serviceaccount:$SYSTEM_NS:$RELEASE" 2>/dev/null || true)" >&2
done

# --- 3. the broker (a Redis pod) and the TaskQueue ----------------------------------------
say "starting a Redis pod ($REDIS_IMAGE) and its Service demo-redis"
kubectl -n "$NS" apply -f - >/dev/null <<YAML
apiVersion: apps/v1
kind: Deployment
metadata: {name: demo-redis}
spec:
  selector: {matchLabels: {app: demo-redis}}
  template:
    metadata: {labels: {app: demo-redis}}
    spec:
      securityContext: {runAsUser: 999, runAsNonRoot: true}
      containers:
        - name: redis
          image: $REDIS_IMAGE
          imagePullPolicy: $PULL_POLICY
          command: [redis-server]
          args: [--save, "", --appendonly, "no", --protected-mode, "no"]
          ports: [{name: redis, containerPort: 6379}]
          readinessProbe: {tcpSocket: {port: redis}, periodSeconds: 1}
          securityContext: {readOnlyRootFilesystem: true, allowPrivilegeEscalation: false}
          volumeMounts: [{name: data, mountPath: /data}]
      volumes: [{name: data, emptyDir: {}}]
---
apiVersion: v1
kind: Service
metadata: {name: demo-redis}
spec: {selector: {app: demo-redis}, ports: [{name: redis, port: 6379}]}
YAML
kubectl -n "$NS" rollout status deployment/demo-redis --timeout=120s >/dev/null || die "the Redis pod did not start"
kubectl -n "$NS" create secret generic demo-broker \
  --from-literal=url="redis://demo-redis.$NS.svc:6379/0" \
  --dry-run=client -o yaml | kubectl apply -f - >/dev/null
say "kubectl apply -f $MANIFEST (workers from $WORKER_IMAGE, examples/ on PYTHONPATH)"
# The worker image holds examples/ in /app/examples.
sed -e "s#image: ebbtide/runtime:.*#image: $WORKER_IMAGE\n    imagePullPolicy: $PULL_POLICY#" \
  -e "s#value: /app\$#value: /app/examples#" "$MANIFEST" | kubectl -n "$NS" apply -f -
wait_for 120 "the operator to create the worker Deployment" \
  kubectl -n "$NS" get deployment "$TQ-worker"

# --- 4. a burst, and the watch ------------------------------------------------------------
say "streaming: kubectl get pods -w and kubectl get tq -o wide -w   (Ctrl-C to stop and tear down)"
# No pipes here: `stop` must reach kubectl itself (waiting on a pipeline's member waits for
# the whole pipeline, and a quiet watch never writes again to notice its reader is gone).
kubectl -n "$NS" get pods -l app.kubernetes.io/component=worker -w &
PIDS[watch-pods]=$!
kubectl -n "$NS" get taskqueue -o wide -w &
PIDS[watch]=$!
REDIS_IP=$(kubectl -n "$NS" get service demo-redis -o jsonpath='{.spec.clusterIP}')
BROKER_URL="redis://$REDIS_IP:6379/0"
# kube-proxy writes the new Service's rules a moment after it appears.
wait_for 30 "the Redis Service routed by kube-proxy" \
  "$PY" -c "import socket; socket.create_connection(('$REDIS_IP', 6379), timeout=2).close()"
say "enqueueing a burst of $BURST tasks (each sleeps ${TASK_SECONDS}s) through $BROKER_URL"
"$PY" scripts/demo_burst.py --broker-url "$BROKER_URL" --count "$BURST" --task sleep \
  --arg "$TASK_SECONDS" >&2
if ((DURATION > 0)); then
  sleep "$DURATION" &
  wait $! || true
else
  wait "${PIDS[watch]}" || true
fi
