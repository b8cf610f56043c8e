"""Exactly-once writes (`WriteOptions`) from a bare thriftpy2 client, past each of the limits
their answers are kept within.

See conftest.py for the fixtures and for how to set up and run these tests.
"""

from __future__ import annotations

import time

import pytest

from conftest import REPO, start_cluster, stop_cluster


def test_exactly_once_answers_are_kept_within_their_three_limits(tmp_path_factory, thriftpy2_lib):
    """--max-session-answers, --max-sessions and --session-ttl-ms, each gone past with bare
    increment_with calls: a retry within the limits gets the first answer and is not applied
    again; one whose answer was dropped while its client is still known is InvalidRequest (never
    applied twice); one whose client was forgotten is applied again."""
    import thriftpy2
    from thriftpy2.rpc import make_client

    cache = thriftpy2.load(str(REPO / "cache.thrift"), module_name="cache_thrift")
    flags = ["--max-session-answers", "2", "--max-sessions", "2", "--session-ttl-ms", "1500"]
    nodes = start_cluster(tmp_path_factory.mktemp("sessions"), thriftpy2_lib, 1, flags)
    try:
        node = nodes[0]
        c = make_client(cache.CacheService, node.host, node.port, timeout=10_000)

        def incr(key, client_id, seq):
            options = cache.WriteOptions(client_id=client_id, seq=seq, lowest_unanswered=0)
            return c.increment_with(key, 1, options)

        # Client 1: three increments, then retries. Two answers are kept (seq 2 and 3).
        assert [incr("a", 1, seq).value for seq in (1, 2, 3)] == [1, 2, 3]
        again = incr("a", 1, 3)
        assert (again.value, again.repeated) == (3, True)
        with pytest.raises(cache.InvalidRequest) as forgotten:
            incr("a", 1, 1)
        assert "no longer kept" in forgotten.value.message
        assert c.get("a").value == "3", "neither retry was applied again"

        # Clients 2 and 3 make room past --max-sessions 2: client 1, the least recently
        # seen, is forgotten, and its retry is applied again.
        incr("b", 2, 1)
        incr("c", 3, 1)
        again = incr("a", 1, 3)
        assert (again.value, again.repeated) == (4, None)

        # Past --session-ttl-ms of silence, client 3's answers are forgotten too.
        time.sleep(2.0)
        again = incr("c", 3, 1)
        assert (again.value, again.repeated) == (2, None)
        c.close()
    finally:
        stop_cluster(nodes)
