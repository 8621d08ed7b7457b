#!/usr/bin/env bash
# `make images`: build the project's images with podman, without a registry, and hand them
# to the node's containerd (k8s.io namespace) when it runs; `make cluster-up` imports them
# otherwise. Everything is cached: a warm run rebuilds nothing (podman's layer cache) and
# re-imports only an image whose id changed.
#
#   base      localhost/ebbtide-base/debian:$DEBIAN_SUITE   debootstrap --variant=minbase
#             localhost/ebbtide-base/python:$DEBIAN_SUITE   + Debian's python3 (docker/debian-python.Dockerfile)
#   project   docker.io/ebbtide/operator:$TAG, docker.io/ebbtide/runtime:$TAG (docker/*.Dockerfile,
#             BASE_IMAGE=the python base, wheels built here on the host, installed offline)
#             docker.io/ebbtide/e2e-worker:$TAG (FROM the runtime + e2e/tests/apps, examples/)
#   stand-ins docker.io/library/redis:7.2-alpine, docker.io/library/rabbitmq:3.13-management
#             (Debian's redis-server and rabbitmq-server, named as the operator's defaults)
#             registry.k8s.io/pause:3.10 (a static pause binary: containerd's sandbox image)
#
# Every failure is one line: `images: error: ...`.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=../e2e/versions.env
source "$root/e2e/versions.env"
cache="${EBBTIDE_CACHE:-$HOME/.cache/ebbtide}/images"
py="${PY:-$root/.venv/bin/python}"
tag="$EBBTIDE_IMAGE_TAG"
export CONTAINERS_CONF="$root/docker/containers.conf"

die() {
  echo "images: error: $*" >&2
  exit 1
}
say() { echo "images: $*" >&2; }

[ "$(id -u)" = 0 ] || die "building images needs root (podman, debootstrap): run as root"
for tool in podman debootstrap gcc; do
  command -v "$tool" >/dev/null || die "no $tool on PATH: run \`make deps-node\` (apt-get install podman debootstrap gcc)"
done
[ -x "$py" ] || die "no venv at $py: run \`make setup\`"
mkdir -p "$cache" "$root/docker/.build"
started=$(date +%s)

debian_image="localhost/ebbtide-base/debian:$DEBIAN_SUITE"
python_image="localhost/ebbtide-base/python:$DEBIAN_SUITE"
operator_image="docker.io/ebbtide/operator:$tag"
runtime_image="docker.io/ebbtide/runtime:$tag"
worker_image="docker.io/ebbtide/e2e-worker:$tag"
redis_image="docker.io/library/redis:7.2-alpine"
rabbitmq_image="docker.io/library/rabbitmq:3.13-management"
pause_image="registry.k8s.io/pause:3.10"

# The Debian mirror apt uses on this machine (deb822 or one-line sources).
mirror() {
  local url
  url=$(sed -n 's/^URIs: *\([^ ]*\).*/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | grep -v security | head -n1 || true)
  [ -n "$url" ] || url=$(awk '$1 == "deb" && $0 !~ /security/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
  [ -n "$url" ] || die "no Debian mirror in /etc/apt/sources.list*: set DEBIAN_MIRROR"
  echo "$url"
}

# 1. The Debian base, from debootstrap (nothing can be pulled).
if ! podman image exists "$debian_image"; then
  say "debootstrap $DEBIAN_SUITE (minbase) for $debian_image"
  rootfs=$(mktemp -d "$cache/rootfs.XXXXXX")
  debootstrap --variant=minbase "$DEBIAN_SUITE" "$rootfs" "${DEBIAN_MIRROR:-$(mirror)}" >"$cache/debootstrap.log" 2>&1 ||
    die "debootstrap $DEBIAN_SUITE failed: see $cache/debootstrap.log"
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/* \
    "$rootfs"/usr/share/doc "$rootfs"/usr/share/man "$rootfs"/usr/share/info "$rootfs"/usr/share/locale
  tar -C "$rootfs" -c . | podman import -q - "$debian_image" >/dev/null
  rm -rf "$rootfs"
fi

# 2. Wheels for the Python images, built on the host (the build container has no CA bundle
#    for PyPI). Rebuilt when pyproject.toml changes.
wheels="$root/docker/wheels"
wheel_stamp="$wheels/.pyproject-$(sha256sum "$root/pyproject.toml" | cut -c1-16)"
if [ ! -f "$wheel_stamp" ]; then
  say "pip wheel: the operator's and the runtime's dependencies -> docker/wheels"
  rm -f "$wheels"/*.whl "$wheels"/.pyproject-*
  # async-timeout: redis needs it below Python 3.11.3 (bookworm's python3 is 3.11.2), and
  # the host's newer Python would leave it out.
  "$py" -m pip wheel -q -w "$wheels" pip 'setuptools>=64' wheel 'async-timeout>=4.0.3' \
    "$root[operator,rabbitmq,msgpack,encryption]" >"$cache/wheels.log" 2>&1 ||
    die "pip wheel failed: see $cache/wheels.log"
  rm -f "$wheels"/ebbtide-*.whl # the project itself is installed from the copied source
  touch "$wheel_stamp"
fi

# 3. The pause binary.
gcc -static -Os -s -o "$root/docker/.build/pause" "$root/docker/pause/pause.c" || die "compiling docker/pause/pause.c failed"

build() {
  local image=$1 file=$2 log
  shift 2
  log="$cache/build-$(basename "$file" .Dockerfile).log"
  podman build --network=host --layers -f "$root/docker/$file" -t "$image" "$@" "$root" >"$log" 2>&1 ||
    die "podman build of $image (docker/$file) failed: $(tail -n1 "$log") (log: $log)"
}

say "building images (podman, layer cache in /var/lib/containers)"
build "$python_image" debian-python.Dockerfile --build-arg "DEBIAN_IMAGE=$debian_image"
build "$operator_image" operator.Dockerfile --build-arg "BASE_IMAGE=$python_image"
build "$runtime_image" runtime.Dockerfile --build-arg "BASE_IMAGE=$python_image"
build "$worker_image" e2e-worker.Dockerfile --build-arg "RUNTIME_IMAGE=$runtime_image"
build "$redis_image" redis.Dockerfile --build-arg "DEBIAN_IMAGE=$debian_image"
build "$rabbitmq_image" rabbitmq.Dockerfile --build-arg "DEBIAN_IMAGE=$debian_image"
build "$pause_image" pause.Dockerfile

# 4. An archive per image, rewritten only when its id changed; the node imports from these.
mkdir -p "$cache/archives"
for image in "$operator_image" "$runtime_image" "$worker_image" "$redis_image" "$rabbitmq_image" "$pause_image"; do
  name=$(echo "$image" | tr '/:' '__')
  id=$(podman image inspect --format '{{.Id}}' "$image")
  if [ "$(cat "$cache/archives/$name.id" 2>/dev/null)" != "$id" ]; then
    podman save -q --format docker-archive -o "$cache/archives/$name.tar.new" "$image"
    mv "$cache/archives/$name.tar.new" "$cache/archives/$name.tar"
    echo "$id" >"$cache/archives/$name.id"
  fi
  printf '%-46s %s\n' "$image" "$(podman image inspect --format '{{.Size}}' "$image" | awk '{printf "%.0f MB", $1/1e6}')" >&2
done
say "built in $(($(date +%s) - started))s; archives in $cache/archives"

# 5. Into the node's containerd, when it runs (else `make cluster-up` does it).
PYTHONPATH="$root" "$py" -m e2e.node import-images
