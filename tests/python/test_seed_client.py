"""The seed blog post's client flow against a real raftcache node, from both Python Thrift
libraries: thriftpy2 (the seed's library) and Apache Thrift's generated code (the seed's client
script), each over an unframed buffered transport with the binary protocol.

See conftest.py for the fixtures and for how to set up and run these tests.
"""

from __future__ import annotations

import uuid

import pytest

OVERSIZED_KEY_BYTES = 64 * 1024  # the server's default key limit is 4096 bytes


@pytest.fixture(params=["thriftpy2", "apache"])
def lib(request):
    """Each test runs once per client library."""
    return request.getfixturevalue(f"{request.param}_lib")


@pytest.fixture
def client(lib, node):
    host, port = node
    with lib.connect(host, port) as c:
        yield c


def fresh_key(tag: str) -> str:
    """Tests share one node per module, so every test writes its own keys."""
    return f"{tag}-{uuid.uuid4().hex}"


def test_put_then_get(lib, client):
    key = fresh_key("put-get")
    assert client.put(lib.CacheEntry(key=key, value="hello")) is True

    entry = client.get(key)
    assert isinstance(entry, lib.CacheEntry)
    assert entry.key == key
    assert entry.value == "hello"


def test_put_overwrites(lib, client):
    key = fresh_key("overwrite")
    assert client.put(lib.CacheEntry(key=key, value="first")) is True
    assert client.put(lib.CacheEntry(key=key, value="second")) is True

    entry = client.get(key)
    assert (entry.key, entry.value) == (key, "second")


def test_remove_existing_then_missing(lib, client):
    key = fresh_key("remove")
    assert client.put(lib.CacheEntry(key=key, value="doomed")) is True

    assert client.remove(key) is True
    with pytest.raises(lib.KeyNotFound):
        client.get(key)
    assert client.remove(key) is False


def test_remove_never_written_key_is_false(lib, client):
    assert client.remove(fresh_key("never-written")) is False


def test_get_missing_raises_key_not_found_and_connection_survives(lib, client):
    missing = fresh_key("missing")
    with pytest.raises(lib.KeyNotFound) as excinfo:
        client.get(missing)
    assert excinfo.value.key == missing

    # The declared exception is an ordinary reply: the same connection keeps working.
    key = fresh_key("after-not-found")
    assert client.put(lib.CacheEntry(key=key, value="still here")) is True
    assert client.get(key).value == "still here"


def test_get_with_linearizable(lib, client):
    key = fresh_key("linearizable")
    assert client.put(lib.CacheEntry(key=key, value="v1")) is True
    opts = lib.ReadOptions(consistency=lib.Consistency.LINEARIZABLE)

    entry = client.get_with(key, opts)
    assert (entry.key, entry.value) == (key, "v1")

    # A read that starts after an acknowledged overwrite sees the overwrite.
    assert client.put(lib.CacheEntry(key=key, value="v2")) is True
    assert client.get_with(key, opts).value == "v2"


def test_calls_without_their_read_options_get_the_defaults(lib, client):
    key = fresh_key("no-options")
    assert client.put(lib.CacheEntry(key=key, value="v")) is True
    # An argument that is None is not sent at all (thriftpy2 also lets it be left out of the
    # call); the server takes the default options.
    assert [e.value for e in client.get_many([key, fresh_key("absent")], None)] == ["v"]
    assert [e.key for e in client.scan(key, "", 10, None)] == [key]
    assert client.get_with(key, None).value == "v"


def test_get_with_missing_key_raises_key_not_found(lib, client):
    missing = fresh_key("linearizable-missing")
    opts = lib.ReadOptions(consistency=lib.Consistency.LINEARIZABLE)
    with pytest.raises(lib.KeyNotFound) as excinfo:
        client.get_with(missing, opts)
    assert excinfo.value.key == missing


@pytest.mark.parametrize(
    "key_prefix, value",
    [
        ("ключ", "значение"),
        ("キー", "値🙂"),
        ("emoji-🗝️", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 — ünïcödé, 中文, עברית, 🙂🙃"),
    ],
    ids=["cyrillic", "japanese-emoji", "astral-mixed"],
)
def test_unicode_round_trip(lib, client, key_prefix, value):
    key = fresh_key(key_prefix)
    assert client.put(lib.CacheEntry(key=key, value=value)) is True

    entry = client.get(key)
    assert entry.key == key
    assert entry.value == value
    assert client.remove(key) is True


def test_empty_value_round_trips(lib, client):
    key = fresh_key("empty-value")
    assert client.put(lib.CacheEntry(key=key, value="")) is True

    entry = client.get(key)
    assert entry.key == key
    assert entry.value == ""  # an empty string, not a missing field / None


def test_status_single_node_leader(client):
    status = client.status()
    assert status.role == "leader"
    assert status.id == 1
    assert status.leader in (None, 1)
    assert status.term >= 1
    assert 0 <= status.last_applied <= status.last_log_index

    members = {m.id: m for m in status.members}
    assert 1 in members, f"node 1 missing from members {status.members!r}"
    assert members[1].voter is True


@pytest.mark.parametrize("op", ["put", "get", "remove"])
def test_oversized_key_is_invalid_request_and_connection_survives(lib, client, op):
    big_key = "k" * OVERSIZED_KEY_BYTES
    call = {
        "put": lambda: client.put(lib.CacheEntry(key=big_key, value="v")),
        "get": lambda: client.get(big_key),
        "remove": lambda: client.remove(big_key),
    }[op]
    with pytest.raises(lib.InvalidRequest) as excinfo:
        call()
    assert isinstance(excinfo.value.message, str) and excinfo.value.message

    # Rejecting the request must not cost the connection.
    key = fresh_key("after-invalid")
    assert client.put(lib.CacheEntry(key=key, value="ok")) is True
    assert client.get(key).value == "ok"


def test_writes_are_visible_across_libraries(thriftpy2_lib, apache_lib, node):
    host, port = node
    key_a = fresh_key("from-thriftpy2")
    key_b = fresh_key("from-apache")
    with thriftpy2_lib.connect(host, port) as tp, apache_lib.connect(host, port) as ap:
        assert tp.put(thriftpy2_lib.CacheEntry(key=key_a, value="α")) is True
        assert ap.put(apache_lib.CacheEntry(key=key_b, value="β")) is True

        assert ap.get(key_a).value == "α"
        assert tp.get(key_b).value == "β"
        assert ap.remove(key_a) is True
        with pytest.raises(thriftpy2_lib.KeyNotFound):
            tp.get(key_a)
