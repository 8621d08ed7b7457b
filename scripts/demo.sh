#!/usr/bin/env bash
# `make demo`: Ebbtide end to end on a real Kubernetes control plane, then `kubectl get tq -w`.
#
#  1. control plane: `make cluster-up` (kube-apiserver + controller-manager built from source),
#     or the cluster in $KUBECONFIG when it is set;
#  2. the process kubelet from e2e/ (runs worker pods as local processes: there is no Docker);
#  3. `helm install` of charts/ebbtide, watching only the demo namespace (namespaced Role);
#  4. the operator as a local process, authenticated as the chart's ServiceAccount with a
#     token from `kubectl create token`, so it has exactly the chart's RBAC and nothing more
#     (the chart's own operator Deployment is installed with replicaCount=0: its image cannot
#     run here);
#  5. a redis-server on loopback, the examples/taskqueue-demo.yaml TaskQueue pointing at it;
#  6. a burst of tasks, and `kubectl get tq -o wide -w` while the replicas rise and fall.
#
# Ctrl-C (or EBBTIDE_DEMO_SECONDS elapsing) tears everything down.
#
# Knobs: EBBTIDE_DEMO_BURST (tasks, default 3000), EBBTIDE_DEMO_TASK_SECONDS (each task's
# sleep, default 0.2), EBBTIDE_DEMO_SECONDS (stop after N s; default: run until Ctrl-C),
# EBBTIDE_DEMO_KEEP_CLUSTER=1 (leave a control plane this script started running).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
PY="$ROOT/.venv/bin/python"
KOPF="$ROOT/.venv/bin/kopf"
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
LOCAL_CLUSTER=0
INSTALLED_CRD=0
declare -A PIDS=()

say() { printf '\033[1;36m==> %s\033[0m\n' "$*" >&2; }
die() { printf '\033[1;31mdemo: %s\033[0m\n' "$*" >&2; exit 1; }

free_port() {
  "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# Start a background process, logging to $WORK/<name>.log, remembered for teardown.
spawn() {
  local name=$1; shift
  "$@" >"$WORK/$name.log" 2>&1 &
  PIDS[$name]=$!
}

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

# The process kubelet's command line: $EBBTIDE_DEMO_KUBELET_CMD, else e2e's module.
kubelet_command() {
  if [[ -n "${EBBTIDE_DEMO_KUBELET_CMD:-}" ]]; then echo "$EBBTIDE_DEMO_KUBELET_CMD"; return; fi
  echo "$PY -m e2e.kubelet --kubeconfig $KUBECONFIG"
}

teardown() {
  local status=$?
  trap - EXIT INT TERM
  say "tearing down"
  stop watch
  if [[ -n "${KUBECONFIG:-}" ]] && kubectl get ns "$NS" >/dev/null 2>&1; then
    # Deleting the TaskQueue while the operator and kubelet still run lets the workers
    # get their SIGTERM and finish like in a real cluster.
    kubectl -n "$NS" delete taskqueue "$TQ" --ignore-not-found --wait=true --timeout=60s \
      >/dev/null 2>&1 || true
  fi
  stop operator
  if [[ -n "${KUBECONFIG:-}" ]]; then
    "$HELM" uninstall "$RELEASE" -n "$SYSTEM_NS" --wait --timeout 60s >/dev/null 2>&1 || true
    kubectl delete ns "$NS" --ignore-not-found --wait=true --timeout=60s >/dev/null 2>&1 || true
    kubectl delete ns "$SYSTEM_NS" --ignore-not-found --wait=false >/dev/null 2>&1 || true
    if ((INSTALLED_CRD)); then
      kubectl delete crd taskqueues.ebbtide.dev --ignore-not-found >/dev/null 2>&1 || true
    fi
  fi
  stop kubelet
  stop redis
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

# --- 1. control plane ------------------------------------------------------------------
HELM=$(scripts/find-helm.sh 2>/dev/null || true)
if [[ -n "${KUBECONFIG:-}" ]]; then
  say "using the cluster in KUBECONFIG=$KUBECONFIG"
else
  say "bringing the control plane up (make cluster-up; the first build takes ~10 min, then it is cached)"
  # Reuse a control plane that is already running, and then leave it running.
  LOCAL_CLUSTER=1
  "$PY" -m e2e.controlplane status >/dev/null 2>&1 || STARTED_CLUSTER=1
  KUBECONFIG=$("$PY" -m e2e.controlplane up) || die "the control plane did not start (see the line above)"
  export KUBECONFIG
  # kubectl and helm as built with the control plane, whatever else is on PATH.
  PATH="$(e2e/build-binaries.sh 2>/dev/null | tail -n1):$PATH"
  HELM=$(scripts/find-helm.sh)
fi
[[ -n "$HELM" ]] || die "no helm binary: run \`make cluster-up\` or set EBBTIDE_HELM"
command -v kubectl >/dev/null || die "no kubectl on PATH"
wait_for 60 "the API server" kubectl get --raw /readyz

# --- 2. process kubelet ----------------------------------------------------------------
# On the local control plane it is needed; on another cluster only with EBBTIDE_DEMO_KUBELET=1.
kubelet=${EBBTIDE_DEMO_KUBELET:-$LOCAL_CLUSTER}
if [[ "$kubelet" == 1 ]]; then
  say "starting the process kubelet (pods run as local processes)"
  read -r -a kubelet_cmd <<<"$(kubelet_command)"
  spawn kubelet "${kubelet_cmd[@]}"
  wait_for 60 "the process kubelet's Node" bash -c \
    "kubectl get nodes -o name | grep -q ."
fi

# --- 3. the chart -------------------------------------------------------------------------
kubectl get crd taskqueues.ebbtide.dev >/dev/null 2>&1 || INSTALLED_CRD=1
kubectl create namespace "$NS" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
say "helm install $RELEASE charts/ebbtide (watchNamespaces={$NS})"
"$HELM" upgrade --install "$RELEASE" charts/ebbtide -n "$SYSTEM_NS" --create-namespace \
  --set "watchNamespaces={$NS}" --set replicaCount=0 2>&1 | grep -v '^walk.go' || true
"$HELM" status "$RELEASE" -n "$SYSTEM_NS" >/dev/null || die "helm install failed"
kubectl wait --for=condition=Established crd/taskqueues.ebbtide.dev --timeout=60s >/dev/null

# --- 4. the operator, as the chart's ServiceAccount ---------------------------------------
OPERATOR_KUBECONFIG="$WORK/operator.kubeconfig"
wait_for 30 "the chart's ServiceAccount" kubectl -n "$SYSTEM_NS" get serviceaccount "$RELEASE"
token=$(kubectl -n "$SYSTEM_NS" create token "$RELEASE" --duration=2h)
server=$(kubectl config view --minify --raw --flatten -o jsonpath='{.clusters[0].cluster.server}')
ca=$(kubectl config view --minify --raw --flatten \
  -o jsonpath='{.clusters[0].cluster.certificate-authority-data}')
(
  export KUBECONFIG="$OPERATOR_KUBECONFIG"
  kubectl config set-cluster demo --server="$server" >/dev/null
  if [[ -n "$ca" ]]; then
    kubectl config set clusters.demo.certificate-authority-data "$ca" >/dev/null
  fi
  kubectl config set-credentials operator --token="$token" >/dev/null
  kubectl config set-context demo --cluster=demo --user=operator --namespace="$NS" >/dev/null
  kubectl config use-context demo >/dev/null
)
chmod 600 "$OPERATOR_KUBECONFIG"
say "the operator's permissions (system:serviceaccount:$SYSTEM_NS:$RELEASE):"
for check in "patch deployments.apps --subresource=scale -n $NS" \
  "patch pods -n $NS" "create secrets -n $NS" \
  "list deployments.apps -n default" "create clusterroles.rbac.authorization.k8s.io"; do
  # shellcheck disable=SC2086
  printf '     can-i %-52s %s\n' "$check" \
    "$(KUBECONFIG="$OPERATOR_KUBECONFIG" kubectl auth can-i $check 2>/dev/null || true)" >&2
done
HEALTH_PORT=$(free_port)
METRICS_PORT=$(free_port)
say "starting the operator (kopf run, logs in $WORK/operator.log, metrics on :$METRICS_PORT)"
KUBECONFIG="$OPERATOR_KUBECONFIG" EBBTIDE_OPERATOR_METRICS_PORT="$METRICS_PORT" \
  spawn operator "$KOPF" run --module=ebbtide_operator.main --standalone \
  --namespace="$NS" --liveness="http://127.0.0.1:$HEALTH_PORT/healthz"
wait_for 60 "the operator's liveness endpoint" \
  "$PY" -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$HEALTH_PORT/healthz', timeout=2)"

# --- 5. the broker and the TaskQueue ----------------------------------------------------
REDIS_PORT=$(free_port)
BROKER_URL="redis://127.0.0.1:$REDIS_PORT/0"
say "starting redis-server on 127.0.0.1:$REDIS_PORT"
spawn redis redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no \
  --dir "$WORK"
wait_for 30 "redis-server" redis-cli -p "$REDIS_PORT" ping
kubectl -n "$NS" create secret generic demo-broker --from-literal=url="$BROKER_URL" \
  --dry-run=client -o yaml | kubectl apply -f - >/dev/null
say "kubectl apply -f $MANIFEST"
# The process kubelet runs the runtime from the venv, not from the image: point the
# workers' PYTHONPATH at examples/ (in the image, examples/tasks.py would sit in /app).
sed "s#value: /app\$#value: $ROOT/examples#" "$MANIFEST" | kubectl -n "$NS" apply -f -
wait_for 120 "the operator to create the worker Deployment" \
  kubectl -n "$NS" get deployment "$TQ-worker"

# --- 6. a burst, and the watch ------------------------------------------------------------
say "streaming: kubectl get tq -o wide -w   (Ctrl-C to stop and tear down)"
spawn_watch() {
  kubectl -n "$NS" get taskqueue -o wide -w &
  PIDS[watch]=$!
}
spawn_watch
say "enqueueing a burst of $BURST tasks (each sleeps ${TASK_SECONDS}s)"
"$PY" scripts/demo_burst.py --broker-url "$BROKER_URL" --count "$BURST" --task sleep \
  --arg "$TASK_SECONDS" >&2
if ((DURATION > 0)); then
  sleep "$DURATION" &
  wait $! || true
else
  wait "${PIDS[watch]}" || true
fi
