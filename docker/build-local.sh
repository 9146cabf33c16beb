#!/usr/bin/env bash
# Builds the CPU worker image without image-registry access (PyPI or a pip mirror is enough).
#
#   docker/build-local.sh [TAG]        # default xray-hpo-worker:0.1.0; DOCKER_HOST as for `docker`
#
# 1. Base image xray-hpo-base:bookworm, made once: `debootstrap --variant=minbase` of Debian
#    bookworm with python3 and python3-venv, imported with `docker import` (needs root and
#    debootstrap). Kept in the engine until removed.
# 2. Wheelhouse: every dependency of the package as wheels, fetched by this machine's pip
#    ($PYTHON, default python3, whose minor version must be the base's, 3.11) at the versions
#    installed in $PYTHON's environment (its `pip freeze` is the constraint). Kept under
#    $HPO_DOCKER_CACHE/wheels and fetched again only when pyproject.toml or the freeze changes.
# 3. docker/worker.Dockerfile with BASE_IMAGE=that base, EXTRAS= (CPU) and the wheelhouse linked
#    into docker/wheels/ for the build; the container's pip reads no index.
#
# Exit status 3: this machine cannot build it (no engine, no debootstrap, no matching Python).
set -euo pipefail
cd "$(dirname "$0")/.."

TAG="${1:-xray-hpo-worker:0.1.0}"
BASE="${HPO_BASE_IMAGE:-xray-hpo-base:bookworm}"
PYTHON="${PYTHON:-python3}"
CACHE="${HPO_DOCKER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/xray-hpo/docker}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
die() { echo "build-local.sh: $*" >&2; exit 1; }
cannot() { echo "build-local.sh: $*" >&2; exit 3; }

docker info >/dev/null 2>&1 || cannot "no Docker engine answers (DOCKER_HOST=${DOCKER_HOST:-unset}); start one, e.g. eval \"\$(docker/engine.sh start)\""
mkdir -p "$CACHE"

if ! docker image inspect "$BASE" >/dev/null 2>&1; then
  command -v debootstrap >/dev/null || cannot "debootstrap not found (apt-get install debootstrap)"
  rootfs="$CACHE/rootfs"
  if [ ! -x "$rootfs/usr/bin/python3" ]; then
    echo "build-local.sh: debootstrap bookworm into $rootfs" >&2
    rm -rf "$rootfs.tmp"
    debootstrap --variant=minbase --include=python3,python3-venv bookworm "$rootfs.tmp" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 \
      || die "debootstrap failed; see $CACHE/debootstrap.log"
    rm -rf "$rootfs.tmp/var/cache/apt/archives/"*.deb
    mv "$rootfs.tmp" "$rootfs"
  fi
  tar -C "$rootfs" -c . | docker import -c 'ENV LANG=C.UTF-8' - "$BASE" >/dev/null
fi

base_py="$(docker run --rm --network none "$BASE" python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
host_py="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
[ "$base_py" = "$host_py" ] || cannot "$PYTHON is Python $host_py but $BASE has $base_py: the wheels would not fit; set PYTHON to a python$base_py"

freeze="$("$PYTHON" -m pip freeze --exclude-editable 2>/dev/null | grep -v -i '^xray-hpo' || true)"
stamp="$( { cat pyproject.toml; echo "$freeze"; echo "$base_py"; } | sha256sum | cut -c1-16)"
wheels="$CACHE/wheels"
if [ "$(cat "$wheels/.stamp" 2>/dev/null)" != "$stamp" ]; then
  echo "build-local.sh: fetching the wheelhouse into $wheels" >&2
  rm -rf "$wheels.tmp" && mkdir -p "$wheels.tmp"
  echo "$freeze" >"$wheels.tmp/constraints.txt"
  # The package's dependencies, resolved from a stub of it (pip download leaves the checkout alone).
  stub="$(mktemp -d)"
  cp pyproject.toml "$stub/" && mkdir "$stub/hpo" && touch "$stub/hpo/__init__.py" "$stub/README.md"
  "$PYTHON" -m pip download --quiet --only-binary=:all: -d "$wheels.tmp" -c "$wheels.tmp/constraints.txt" \
    "$stub" "setuptools>=69" >"$CACHE/wheels.log" 2>&1 || { rm -rf "$stub"; die "pip download failed; see $CACHE/wheels.log"; }
  rm -rf "$stub"
  echo "$stamp" >"$wheels.tmp/.stamp"
  rm -rf "$wheels" && mv "$wheels.tmp" "$wheels"
fi

# The wheelhouse is in docker/wheels/ only during the build (a later plain `docker build` reads PyPI).
trap 'rm -f docker/wheels/*.whl' EXIT
rm -f docker/wheels/*.whl
cp -l "$wheels"/*.whl docker/wheels/ 2>/dev/null || cp "$wheels"/*.whl docker/wheels/
DOCKER_BUILDKIT=0 docker build -f docker/worker.Dockerfile \
  --build-arg BASE_IMAGE="$BASE" --build-arg EXTRAS= -t "$TAG" . >"$CACHE/build.log" 2>&1 \
  || { tail -n 15 "$CACHE/build.log" >&2; die "docker build failed; see $CACHE/build.log"; }
echo "$TAG"
