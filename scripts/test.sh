#!/usr/bin/env bash
# Runs every raftcache test, after setting up what the tests need:
#   - Debian's thrift-compiler (to check the generated code and to generate Python code),
#   - Debian's fuse3 (fusermount3, and the FUSE device checked: the power-cut filesystem of
#     powerfs/ and tests/power_cut.rs mounts one disk per node),
#   - Debian's faketime (libfaketime skews a node's clock in tests/clock_skew.rs),
#   - a Python venv with thriftpy2, Apache thrift and pytest (scripts/python-env.sh),
#   - every workspace member, with the raftcache and raftcache-faults binaries (debug build),
#   - with docker and docker-compose present, the image raftcache:test of that binary
#     (RAFTCACHE_TEST_IMAGE names another, so two checkouts on one machine do not share it).
# Then: the check that src/gen matches the IDL, the doc check (scripts/check_docs.py), the Rust
# tests (unit, storage conformance, in-process clusters, bad input, multi-process crash tests,
# the compose cluster), the Python
# client tests, and (with docker) the short fault-injection run: RAFTCACHE_FAULT_RUNS runs of
# RAFTCACHE_FAULT_SECONDS seconds [5 and 30], seed RAFTCACHE_FAULT_SEED [from the clock].
set -euo pipefail
cd "$(dirname "$0")/.."

say() { echo "== test.sh: $*"; }
# Where cargo puts what it builds (the binaries below are run from there).
target_dir="${CARGO_TARGET_DIR:-$PWD/target}"
image="${RAFTCACHE_TEST_IMAGE:-raftcache:test}"

if ! command -v thrift >/dev/null; then
  say "installing thrift-compiler"
  if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq thrift-compiler >/dev/null
  else sudo apt-get update -qq && sudo apt-get install -y -qq thrift-compiler >/dev/null; fi
fi

if ! command -v fusermount3 >/dev/null; then
  say "installing fuse3"
  if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq fuse3 >/dev/null
  else sudo apt-get update -qq && sudo apt-get install -y -qq fuse3 >/dev/null; fi
fi
# The power-cut tests fail (never skip) without it; say why before they run.
[ -c /dev/fuse ] || say "WARNING: /dev/fuse is missing: the power-cut tests will fail"
if ! command -v faketime >/dev/null; then
  say "installing faketime"
  if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq faketime >/dev/null
  else sudo apt-get update -qq && sudo apt-get install -y -qq faketime >/dev/null; fi
fi

say "generated thrift code matches the IDL"
scripts/gen-thrift.sh --check

say "docs name only paths and Type::functions that exist"
python3 scripts/check_docs.py

say "python venv"
bash scripts/python-env.sh

say "build (every workspace member)"
cargo build --workspace --all-targets --quiet

# tests/compose.rs runs the compose cluster on an image of this build; without docker it skips.
if docker info >/dev/null 2>&1 && docker-compose version >/dev/null 2>&1; then
  say "container image $image (debug binary) for tests/compose.rs"
  RAFTCACHE_BIN="$target_dir/debug/raftcache" IMAGE="$image" cluster/build-image.sh
  export RAFTCACHE_IMAGE="$image" RAFTCACHE_REQUIRE_DOCKER=1
  faults=yes
else
  say "no docker or docker-compose here: tests/compose.rs and the fault-injection run will skip"
  faults=no
fi

say "rust tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast
else
  cargo test --workspace --no-fail-fast
fi

say "python client tests"
RAFTCACHE_BIN="$target_dir/debug/raftcache" .venv-test/bin/pytest tests/python -q

if [ "$faults" = yes ]; then
  runs="${RAFTCACHE_FAULT_RUNS:-5}" seconds="${RAFTCACHE_FAULT_SECONDS:-30}"
  say "fault injection: $runs runs of $seconds s on the compose cluster (docs/testing.md)"
  # Every run opens with a one-way cut around the leader (the fault Raft alone does not see),
  # then a follower killed as it is sent a snapshot, then a power cut.
  "$target_dir/debug/raftcache-faults" --image "$image" --runs "$runs" --seconds "$seconds" \
    --first-fault one-way,snapshot-crash,power-cut ${RAFTCACHE_FAULT_SEED:+--seed "$RAFTCACHE_FAULT_SEED"} --out-dir target/faults
fi
