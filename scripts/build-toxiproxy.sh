#!/usr/bin/env bash
# Build Shopify's toxiproxy (the chaos suite's latency and blackhole proxy) from its Go
# module, once, into the cache outside the repo. Prints the binary's path on its last line.
#
#   scripts/build-toxiproxy.sh        # version from e2e/versions.env
#   EBBTIDE_CACHE=/somewhere ...      # cache root (default ~/.cache/ebbtide)
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=../e2e/versions.env
source "$here/e2e/versions.env"

dir="${EBBTIDE_CACHE:-$HOME/.cache/ebbtide}/toxiproxy-v$TOXIPROXY_VERSION"
exe="$dir/toxiproxy-server"
if [ -x "$exe" ]; then
  echo "$exe"
  exit 0
fi
if ! command -v go >/dev/null; then
  echo "chaos: no Go toolchain on PATH: install Go to build toxiproxy v$TOXIPROXY_VERSION" >&2
  exit 3
fi
mkdir -p "$dir"
# The module's server command lives in cmd/server; `go install` names the binary `server`.
CGO_ENABLED=0 GOFLAGS=-mod=mod GOBIN="$dir/.build" \
  go install "github.com/Shopify/toxiproxy/v2/cmd/server@v$TOXIPROXY_VERSION" >&2
mv "$dir/.build/server" "$exe"
rmdir "$dir/.build"
echo "$exe"
