"""The client API as thriftpy2 builds it from the copy of cache.thrift shipped in this package.

The repository root's cache.thrift is the source of truth; tests/python/test_client_package.py
fails when this copy differs from it (refresh it with
`cp cache.thrift clients/python/raftcache/cache.thrift`).
"""

from __future__ import annotations

import os

import thriftpy2

IDL_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cache.thrift")

# thriftpy2 wants a module name ending in "_thrift"; registering it in sys.modules (which
# `load` does for a named module) lets the generated structs be pickled.
cache = thriftpy2.load(IDL_PATH, module_name="raftcache_cache_thrift")
