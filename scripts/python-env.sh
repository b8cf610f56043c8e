#!/usr/bin/env bash
# Sets up what the Python client tests (tests/python) need, from any cwd, idempotently:
#   1. a venv at .venv-test (repo root) made with `python3 -m venv`;
#   2. the pins in tests/python/requirements.txt installed into it (skipped when the venv
#      already holds exactly that file's pins);
#   3. Apache Thrift Python code generated from cache.thrift into target/py-gen (never checked
#      in; regenerated on every run so it can't go stale);
#   4. the client package clients/python (`raftcache`) installed into it, again on every run
#      (no build isolation: a few seconds; setuptools and wheel are fetched once if missing)
#      so the tests never see a stale copy.
# Then: .venv-test/bin/pytest tests/python -q
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="$repo/.venv-test"
req="$repo/tests/python/requirements.txt"
idl="$repo/cache.thrift"
gen="$repo/target/py-gen"
stamp="$venv/.requirements.sha256"
pkg="$repo/clients/python"

say() { echo "python-env: $*"; }
die() { echo "python-env: error: $*" >&2; exit 1; }

command -v python3 >/dev/null || die "python3 not found"
command -v thrift >/dev/null || die "thrift compiler not found (apt-get install thrift-compiler)"
[ -f "$req" ] || die "missing $req"
[ -f "$idl" ] || die "missing $idl"

# 1. venv. A venv whose interpreter no longer runs (python3 upgraded or removed) is rebuilt.
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c 'import sys' 2>/dev/null; then
  say "venv ok: $venv"
else
  say "creating venv: $venv"
  rm -rf "$venv"
  python3 -m venv "$venv" || die "python3 -m venv failed (on Debian: apt-get install python3-venv)"
fi

# 2. requirements, keyed on the file's hash.
want=$(sha256sum "$req" | cut -d' ' -f1)
have=$(cat "$stamp" 2>/dev/null || true)
if [ "$want" = "$have" ]; then
  say "requirements up to date"
else
  say "installing $(grep -Ev '^[[:space:]]*(#|$)' "$req" | paste -sd' ')"
  rm -f "$stamp"
  "$venv/bin/python" -m pip install --disable-pip-version-check -q -r "$req" \
    || die "pip install -r $req failed"
  echo "$want" >"$stamp"
fi

# 3. Apache codegen, into a temp dir first so a failed run leaves no half-written package.
mkdir -p "$repo/target"
tmp=$(mktemp -d "$repo/target/.py-gen.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
thrift --gen py -out "$tmp" "$idl" || die "thrift --gen py failed on $idl"
chmod 755 "$tmp"
rm -rf "$gen"
mv "$tmp" "$gen"
trap - EXIT
say "generated $(thrift --version | sed 's/^Thrift version /thrift /') python code: $gen/cache"

# 4. The client package, built with the venv's own setuptools and wheel (installed once, the
#    first time) rather than in an isolated build env that pip would make again on every run.
#    setuptools builds in place (build/, *.egg-info): removed before and after.
"$venv/bin/python" -c 'import setuptools, wheel' 2>/dev/null \
  || "$venv/bin/python" -m pip install --disable-pip-version-check -q 'setuptools>=61' wheel \
  || die "pip install setuptools wheel failed"
rm -rf "$pkg/build" "$pkg"/*.egg-info  # a file deleted from the package must not linger there
"$venv/bin/python" -m pip install --disable-pip-version-check -q --no-build-isolation \
  --force-reinstall --no-deps "$pkg" || die "pip install $pkg failed"
rm -rf "$pkg/build" "$pkg"/*.egg-info
"$venv/bin/python" -m pip check --disable-pip-version-check >/dev/null \
  || die "pip check: the venv's packages do not fit together (the raftcache package's thriftpy2 pin?)"
say "installed the raftcache client package from $pkg"

# Smoke check: both client libraries accept the IDL.
"$venv/bin/python" - "$idl" "$gen" <<'PY' || die "import check failed"
import sys
idl, gen = sys.argv[1], sys.argv[2]
import thriftpy2
thriftpy2.load(idl, module_name="cache_thrift")
sys.path.insert(0, gen)
from cache import CacheService, ttypes  # noqa: F401
import raftcache  # noqa: F401  (loads its own copy of the IDL)
from importlib.metadata import version
print("python-env: ok: thriftpy2 %s and thrift %s both load cache.thrift"
      % (version("thriftpy2"), version("thrift")))
PY
