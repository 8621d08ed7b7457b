#!/usr/bin/env bash
# Build the e2e control plane's binaries from Go modules, once, into a cache outside
# the repo: kube-apiserver, kube-controller-manager, kubectl (k8s.io/kubernetes), etcd
# and helm. Versions come from e2e/versions.env. A warm cache costs nothing.
#
#   e2e/build-binaries.sh            # prints the bin dir on its last line
#   e2e/build-binaries.sh node       # the node's: kubelet, kube-proxy, kube-scheduler (the
#                                    # same wrapper module and ldflags), CoreDNS, kube-router
#   EBBTIDE_CACHE=/somewhere ...     # cache root (default ~/.cache/ebbtide)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"

cache_root="${EBBTIDE_CACHE:-$HOME/.cache/ebbtide}"
what="${1:-controlplane}"
case "$what" in
controlplane) bin="$cache_root/k8s-v$KUBERNETES_VERSION-etcd-v$ETCD_VERSION-helm-v$HELM_VERSION/bin" ;;
node) bin="$cache_root/node-k8s-v$KUBERNETES_VERSION-coredns-v$COREDNS_VERSION-kube-router-v$KUBE_ROUTER_VERSION/bin" ;;
*)
  echo "usage: $0 [controlplane|node]" >&2
  exit 2
  ;;
esac
stamp="$bin/.complete"

if [ -f "$stamp" ]; then
  echo "$bin"
  exit 0
fi

if ! command -v go >/dev/null; then
  echo "e2e: no Go toolchain on PATH: install Go >= 1.26 (https://go.dev/dl) to build the control plane, or set KUBECONFIG to use an existing cluster" >&2
  exit 3
fi

mkdir -p "$bin"
export CGO_ENABLED=0 GOFLAGS=-mod=mod
# Two cores: let the Go scheduler use both, but do not oversubscribe the linker.
export GOMAXPROCS="${GOMAXPROCS:-2}"
started=$(date +%s)

kube_mod="$here/go/kubernetes"
minor="${KUBERNETES_VERSION#*.}"
if ! grep -q "require k8s.io/kubernetes v$KUBERNETES_VERSION\$" "$kube_mod/go.mod"; then
  # A version bump: regenerate the replace list from the upstream go.mod's staging modules.
  echo "e2e: regenerating $kube_mod/go.mod for v$KUBERNETES_VERSION" >&2
  upstream=$(cd "$kube_mod" && go mod download -json "k8s.io/kubernetes@v$KUBERNETES_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  {
    sed -n '1,/^module /p' "$kube_mod/go.mod"
    printf '\ngo 1.26.0\n\nrequire k8s.io/kubernetes v%s\n\nreplace (\n' "$KUBERNETES_VERSION"
    grep '=> ./staging' "$upstream" | awk -v v="v0.$minor" '{printf "\t%s => %s %s\n", $1, $1, v}'
    printf ')\n'
  } >"$kube_mod/go.mod.new"
  mv "$kube_mod/go.mod.new" "$kube_mod/go.mod"
  rm -f "$kube_mod/go.sum"
  (cd "$kube_mod" && go get "k8s.io/kubernetes/cmd/kube-apiserver@v$KUBERNETES_VERSION" \
    "k8s.io/kubernetes/cmd/kube-controller-manager@v$KUBERNETES_VERSION" \
    "k8s.io/kubernetes/cmd/kubectl@v$KUBERNETES_VERSION" \
    "k8s.io/kubernetes/cmd/kubelet@v$KUBERNETES_VERSION" \
    "k8s.io/kubernetes/cmd/kube-proxy@v$KUBERNETES_VERSION" \
    "k8s.io/kubernetes/cmd/kube-scheduler@v$KUBERNETES_VERSION")
fi

# The same -X flags as hack/lib/version.sh, so `kubectl version` prints the real version.
build_date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=v$KUBERNETES_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=${minor%%.*}"
  ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$build_date"
done

if [ "$what" = node ]; then
  # `go install` refuses a module with replace directives, so `go build` inside the wrapper.
  for cmd in kubelet kube-proxy kube-scheduler; do
    echo "e2e: building $cmd v$KUBERNETES_VERSION" >&2
    (cd "$kube_mod" && go build -trimpath -ldflags "$ldflags" -o "$bin/$cmd" "k8s.io/kubernetes/cmd/$cmd")
  done
  # CoreDNS and kube-router have no replace directives: `go install MODULE@VERSION` builds
  # them from their own go.mod and go.sum, so nothing here pins their dependencies.
  echo "e2e: building coredns v$COREDNS_VERSION" >&2
  GOBIN="$bin" go install -trimpath \
    -ldflags "-s -w -X github.com/coredns/coredns/coremain.GitCommit=v$COREDNS_VERSION" \
    "github.com/coredns/coredns@v$COREDNS_VERSION"
  echo "e2e: building kube-router v$KUBE_ROUTER_VERSION" >&2
  GOBIN="$bin" go install -trimpath \
    -ldflags "-s -w -X github.com/cloudnativelabs/kube-router/v2/pkg/version.Version=v$KUBE_ROUTER_VERSION" \
    "github.com/cloudnativelabs/kube-router/v2/cmd/kube-router@v$KUBE_ROUTER_VERSION"
else
  # `go install` refuses a module with replace directives, so `go build` inside the wrapper.
  for cmd in kube-apiserver kube-controller-manager kubectl; do
    echo "e2e: building $cmd v$KUBERNETES_VERSION" >&2
    (cd "$kube_mod" && go build -trimpath -ldflags "$ldflags" -o "$bin/$cmd" "k8s.io/kubernetes/cmd/$cmd")
  done
  echo "e2e: building etcd v$ETCD_VERSION" >&2
  (cd "$here/go/etcd" && go build -trimpath -ldflags "-s -w" -o "$bin/etcd" .)
  echo "e2e: building helm v$HELM_VERSION" >&2
  (cd "$here/go/helm" && go build -trimpath \
    -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=v$HELM_VERSION" \
    -o "$bin/helm" helm.sh/helm/v3/cmd/helm)
fi

elapsed=$(($(date +%s) - started))
size=$(du -sh "$bin" | cut -f1)
echo "e2e: built $what in ${elapsed}s; cache $bin is $size" >&2
printf 'built_seconds=%s\n' "$elapsed" >"$stamp"
echo "$bin"
