#!/usr/bin/env bash
# Builds the container image raftcache:local from this checkout, with no registry: a
# `FROM scratch` image holding the release binary (debug info stripped) and exactly the shared
# libraries `ldd` lists for it. Then: docker-compose -f cluster/docker-compose.yml up -d
#
# Environment:
#   RAFTCACHE_BIN=path   binary to package (default: `cargo build --release`, target/release)
#   IMAGE=name:tag       image to build (default: raftcache:local)
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
image="${IMAGE:-raftcache:local}"
target_dir="${CARGO_TARGET_DIR:-$root/target}"
context="$target_dir/raftcache-image"

die() { echo "build-image: $*" >&2; exit 1; }
command -v docker >/dev/null || die "docker not found"
command -v ldd >/dev/null || die "ldd not found"

if [ -n "${RAFTCACHE_BIN:-}" ]; then
  bin="$RAFTCACHE_BIN"
else
  echo "build-image: building (cargo build --release)..."
  (cd "$root" && cargo build --release --quiet --bin raftcache) || die "build failed"
  bin="$target_dir/release/raftcache"
fi
[ -x "$bin" ] || die "no executable raftcache at $bin"

# The build context: rootfs/ is copied to / in the image, data/ becomes /data.
rm -rf "$context"
mkdir -p "$context/rootfs/etc" "$context/data"
if command -v strip >/dev/null; then
  strip --strip-debug -o "$context/rootfs/raftcache" "$bin"
else
  cp "$bin" "$context/rootfs/raftcache"
fi
# Names resolve from /etc/hosts first (docker writes it), then DNS (docker's resolver, which
# knows the compose services).
echo "hosts: files dns" >"$context/rootfs/etc/nsswitch.conf"

# Every library the dynamic loader will open, and the loader itself, at the same path.
libs="$(ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }')"
[ -n "$libs" ] || die "ldd listed no libraries for $bin (a static binary needs none: remove this check)"
for lib in $libs; do
  mkdir -p "$context/rootfs$(dirname "$lib")"
  cp -L "$lib" "$context/rootfs$lib"
  echo "build-image: + $lib"
done
cp "$here/Dockerfile" "$context/Dockerfile"

# The image this build replaces, removed below once nothing else names it.
previous="$(docker image inspect -f '{{.Id}}' "$image" 2>/dev/null || true)"
revision="$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)"
echo "build-image: docker build -t $image (revision $revision)"
# The legacy builder: it needs no buildx plugin, and FROM scratch pulls nothing. Its output
# (a deprecation notice) is shown only if the build fails.
if ! out="$(DOCKER_BUILDKIT=0 docker build --quiet -t "$image" \
  --label "org.opencontainers.image.revision=$revision" "$context" 2>&1)"; then
  echo "$out" >&2
  die "docker build failed"
fi

if [ -n "$previous" ] && [ "$previous" != "$(docker image inspect -f '{{.Id}}' "$image")" ]; then
  docker image rm "$previous" >/dev/null 2>&1 || true  # kept while a container or tag uses it
fi

# The image must run: the binary, its libraries and the loader all found.
version="$(docker run --rm --network none "$image" --version)" \
  || die "the image does not run: $image"
echo "build-image: built $image ($version, $(docker image inspect -f '{{.Size}}' "$image") bytes)"
