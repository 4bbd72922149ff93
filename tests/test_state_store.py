"""The state store's contract, one suite run on every backend: memory://, sqlite:/// (a file
in the test's folder) and redis:// (a real redis-server on loopback, tests/redis_server.py).
Then what only one backend has: SQLite's schema version and corruption reports, Redis's
server-side expiry, its password from ${VAR}, and its outage and recovery."""

from __future__ import annotations

import asyncio
import sqlite3
import time

import pytest

from gateway.state.base import Limits, ObjectTooLarge, StateUnavailable
from gateway.state.sqlite_store import SCHEMA_VERSION
from gateway.state.urls import open_store

pytestmark = pytest.mark.timeout(120)
BACKENDS = ["memory", "sqlite", "redis"]


def url_of(backend: str, request, tmp_path) -> str:
    if backend == "memory":
        return "memory://"
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'state.db'}"
    server = request.getfixturevalue("redis_server")
    server.flush()
    return server.url


@pytest.fixture(params=BACKENDS)
def url(request, tmp_path):
    return url_of(request.param, request, tmp_path)


@pytest.fixture(params=["sqlite", "redis"])
def shared_url(request, tmp_path):
    """The backends two processes can share."""
    return url_of(request.param, request, tmp_path)


def run(url: str, body, **limits):
    """Open the store named by `url` with these limits, run `body(store)` on a fresh loop, close it."""
    async def main():
        store = open_store(url, Limits(**limits))
        await store.start()
        try:
            return await body(store)
        finally:
            await store.close()

    return asyncio.run(main())


def blob(n: int, size: int = 0) -> dict:
    return {"id": f"resp_{n}", "text": "x" * size, "nested": {"list": [1, 2.5, None, "é"]}}


def test_put_get_delete_and_copies(url):
    async def body(store):
        assert await store.get("alice", "response", "resp_1") is None
        await store.put("alice", "response", "resp_1", blob(1))
        value = await store.get("alice", "response", "resp_1")
        assert value == blob(1)
        value["text"] = "changed"  # a value read back is a copy
        assert (await store.get("alice", "response", "resp_1")) == blob(1)
        await store.put("alice", "response", "resp_1", blob(2))  # replaced, counted once
        assert (await store.get("alice", "response", "resp_1"))["id"] == "resp_2"
        assert (await store.stats())["objects"] == 1
        assert await store.delete("alice", "response", "resp_1") is True
        assert await store.delete("alice", "response", "resp_1") is False
        assert await store.get("alice", "response", "resp_1") is None
        assert await store.stats() == {"objects": 0, "bytes": 0}

    run(url, body)


def test_replace_writes_only_over_the_version_it_read(url):
    async def body(store):
        await store.put("alice", "conversation", "conv_1", {"items": [1]})
        value, version = await store.read("alice", "conversation", "conv_1")
        assert value == {"items": [1]}
        await store.put("alice", "conversation", "conv_1", {"items": [1, 2]})  # another writer got in first
        assert await store.replace("alice", "conversation", "conv_1", {"items": [1, 3]}, version) is False
        assert await store.get("alice", "conversation", "conv_1") == {"items": [1, 2]}
        value, version = await store.read("alice", "conversation", "conv_1")
        assert await store.replace("alice", "conversation", "conv_1", {"items": [1, 2, 3]}, version) is True
        assert await store.get("alice", "conversation", "conv_1") == {"items": [1, 2, 3]}
        assert (await store.stats())["objects"] == 1
        await store.delete("alice", "conversation", "conv_1")
        assert await store.replace("alice", "conversation", "conv_1", {"items": []}, version) is False
        assert await store.get("alice", "conversation", "conv_1") is None
        assert await store.read("alice", "conversation", "conv_1") is None
        assert await store.update("alice", "conversation", "conv_1", lambda v: v) is None

    run(url, body)


def test_concurrent_updates_all_land(url):
    """Twenty appends at once to one object, half through a second store on the same place where the
    backend can share one: none overwrites another (a plain get-then-put loses most of them)."""
    async def body(first):
        second = open_store(url, Limits()) if not url.startswith("memory") else first
        await second.start()
        try:
            await first.put("alice", "conversation", "conv_1", {"items": []})

            def adding(n):
                def change(value):
                    value["items"].append(n)
                    return value
                return change

            await asyncio.gather(*[(first if n % 2 else second).update("alice", "conversation", "conv_1", adding(n))
                                   for n in range(20)])
            assert sorted((await first.get("alice", "conversation", "conv_1"))["items"]) == list(range(20))
        finally:
            if second is not first:
                await second.close()

    run(url, body)


def test_owners_and_kinds_are_separate(url):
    async def body(store):
        await store.put("alice", "response", "same", {"who": "alice"})
        await store.put("bob", "response", "same", {"who": "bob"})
        await store.put("alice", "conversation", "same", {"who": "alice's conversation"})
        assert (await store.get("alice", "response", "same")) == {"who": "alice"}
        assert (await store.get("bob", "response", "same")) == {"who": "bob"}
        assert await store.get("carol", "response", "same") is None
        assert await store.delete("carol", "response", "same") is False
        assert await store.list("alice", "response") == ["same"]
        assert await store.list("carol", "response") == []
        assert (await store.get("alice", "response", "same")) == {"who": "alice"}  # carol's delete did nothing

    run(url, body)


def test_list_is_oldest_first(url):
    async def body(store):
        for key in ("c", "a", "b"):
            await store.put("alice", "item", key, {"k": key})
        await store.put("alice", "item", "c", {"k": "c2"})  # a replaced object is the newest
        assert await store.list("alice", "item") == ["a", "b", "c"]

    run(url, body)


def test_objects_expire_after_the_ttl(url):
    async def body(store):
        await store.put("alice", "response", "short", {"n": 1})
        assert await store.get("alice", "response", "short") is not None
        await asyncio.sleep(1.2)
        assert await store.get("alice", "response", "short") is None
        assert await store.list("alice", "response") == []
        assert await store.delete("alice", "response", "short") is False
        assert (await store.stats())["objects"] == 0

    run(url, body, ttl_s=0.6)


def test_the_count_bound_drops_the_oldest_of_that_kind_only(url):
    async def body(store):
        for n in range(5):
            await store.put("alice", "response", f"resp_{n}", blob(n))
            await store.put("alice", "item", f"item_{n}", blob(n))
        assert await store.list("alice", "response") == ["resp_2", "resp_3", "resp_4"]
        assert len(await store.list("alice", "item")) == 5  # no count bound on items

    run(url, body, max_count={"response": 3})


def test_the_byte_bound_drops_the_oldest_objects(url):
    async def body(store):
        for n in range(6):
            await store.put("alice" if n % 2 else "bob", "response", f"resp_{n}", blob(n, 3000))
        stats = await store.stats()
        assert stats["bytes"] <= 10_000 and stats["objects"] == 3
        assert await store.get("bob", "response", "resp_2") is None
        assert await store.get("bob", "response", "resp_4") is not None
        assert await store.list("alice", "response") == ["resp_3", "resp_5"]
        with pytest.raises(ObjectTooLarge):
            await store.put("alice", "response", "huge", blob(9, 20_000))
        assert (await store.stats())["objects"] == 3  # a refused object evicts nothing

    run(url, body, max_bytes=10_000)


def test_two_stores_on_one_place_see_each_others_objects(shared_url):
    async def body(first):
        second = open_store(shared_url, Limits())
        await second.start()
        try:
            await first.put("alice", "response", "resp_1", {"by": "first"})
            assert (await second.get("alice", "response", "resp_1")) == {"by": "first"}
            assert await second.delete("alice", "response", "resp_1") is True
            assert await first.get("alice", "response", "resp_1") is None
        finally:
            await second.close()

    run(shared_url, body)


# -- SQLite -----------------------------------------------------------------------------------


def test_sqlite_survives_a_reopen_in_wal_mode(tmp_path):
    url = f"sqlite:///{tmp_path / 'state.db'}"
    run(url, lambda store: store.put("alice", "response", "resp_1", {"kept": True}))
    assert run(url, lambda store: store.get("alice", "response", "resp_1")) == {"kept": True}
    db = sqlite3.connect(tmp_path / "state.db")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("SELECT version FROM schema_version").fetchone()[0] == SCHEMA_VERSION


def test_a_corrupt_sqlite_file_is_reported_with_its_path_and_left_alone(tmp_path):
    path = tmp_path / "state.db"
    path.write_bytes(b"this is not a database" * 500)
    before = path.read_bytes()
    with pytest.raises(StateUnavailable) as caught:
        run(f"sqlite:///{path}", lambda store: store.get("alice", "response", "resp_1"))
    assert caught.value.status == 503 and str(path) in caught.value.message and "corrupt" in caught.value.message
    assert path.read_bytes() == before


def test_a_newer_schema_is_refused_clearly(tmp_path):
    path = tmp_path / "state.db"
    run(f"sqlite:///{path}", lambda store: store.put("alice", "response", "resp_1", {"n": 1}))
    db = sqlite3.connect(path)
    db.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 1,))
    db.commit()
    db.close()
    with pytest.raises(StateUnavailable) as caught:
        run(f"sqlite:///{path}", lambda store: store.get("alice", "response", "resp_1"))
    assert f"schema version {SCHEMA_VERSION + 1}" in caught.value.message and str(path) in caught.value.message
    db = sqlite3.connect(path)
    assert db.execute("SELECT COUNT(*) FROM objects").fetchone()[0] == 1  # untouched


def test_another_programs_database_is_not_taken_over(tmp_path):
    path = tmp_path / "state.db"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE theirs (x)")
    db.commit()
    db.close()
    with pytest.raises(StateUnavailable, match="not nexa's"):
        run(f"sqlite:///{path}", lambda store: store.get("alice", "response", "resp_1"))


# -- Redis ------------------------------------------------------------------------------------


def test_redis_ttls_are_server_expiry_and_the_password_comes_from_the_environment(redis_server):
    import redis

    from tests.redis_server import PASSWORD

    redis_server.flush()
    store = open_store(redis_server.url, Limits(ttl_s=120))
    assert PASSWORD not in store.url and "<redacted>" in store.url

    async def body(store):
        await store.put("alice", "response", "resp_1", {"n": 1})

    run(redis_server.url, body, ttl_s=120)
    client = redis.Redis(host="127.0.0.1", port=redis_server.port, password=PASSWORD)
    keys = [k for k in client.keys("nexa:state:obj:*")]
    assert len(keys) == 1 and 110_000 < client.pttl(keys[0]) <= 120_000
    client.close()


def test_redis_down_is_a_bounded_503_and_it_recovers(redis_server):
    redis_server.flush()

    async def body(store):
        await store.put("alice", "response", "resp_1", {"n": 1})
        redis_server.stop()
        try:
            started = time.monotonic()
            with pytest.raises(StateUnavailable) as caught:
                await store.get("alice", "response", "resp_1")
            assert caught.value.status == 503 and time.monotonic() - started < 10
            assert "nexa-test-redis-password" not in caught.value.message
        finally:
            redis_server.start()
        await store.put("alice", "response", "resp_2", {"n": 2})  # the same client reconnects
        assert (await store.get("alice", "response", "resp_2")) == {"n": 2}

    run(redis_server.url, body)


def test_an_unreachable_redis_at_start_is_a_503_not_a_hang(closed_port):
    async def body():
        store = open_store(f"redis://127.0.0.1:{closed_port}/0")
        started = time.monotonic()
        with pytest.raises(StateUnavailable, match="unreachable"):
            await store.start()
        with pytest.raises(StateUnavailable):
            await store.get("alice", "response", "resp_1")
        assert time.monotonic() - started < 15
        await store.close()

    asyncio.run(body())


@pytest.mark.parametrize("url, problem", [
    ("postgres://host/db", "unknown scheme"),
    ("sqlite://relative.db", "three slashes"),
    ("redis:///0", "names a host"),
    ("redis://:${NEXA_TEST_UNSET_VARIABLE}@host:6379/0", "NEXA_TEST_UNSET_VARIABLE is not set"),
])
def test_bad_urls_are_refused_by_name(url, problem):
    with pytest.raises(ValueError, match=problem):
        open_store(url)


def test_sqlite_keeps_its_running_byte_total_exact(tmp_path):
    """Eviction reads the running total (summing the column would read every row): it must equal the sum."""
    path = tmp_path / "state.db"

    async def body(store):
        for n in range(12):
            await store.put("alice", "response", f"resp_{n % 5}", blob(n, 700 * (n % 3)))
            await store.put("alice", "item", f"item_{n}", blob(n, 300))
            if n % 4 == 0:
                await store.delete("alice", "item", f"item_{n - 1}")

    run(f"sqlite:///{path}", body, max_bytes=5000, max_count={"response": 3})
    db = sqlite3.connect(path)
    total = db.execute("SELECT bytes FROM totals").fetchone()[0]
    assert total == db.execute("SELECT SUM(bytes) FROM objects").fetchone()[0] and 0 < total <= 5000


# -- the manifest key ---------------------------------------------------------------------------


@pytest.mark.parametrize("state, problem", [
    ("postgres://db/nexa", "server.state"),
    ("redis://:${NEXA_TEST_UNSET_VARIABLE}@127.0.0.1:6379/0", "NEXA_TEST_UNSET_VARIABLE"),
])
def test_a_bad_state_url_is_a_manifest_error_naming_the_key(tmp_path, state, problem):
    import subprocess
    import sys

    import yaml

    from tests.conftest import ROOT

    manifest = tmp_path / "nexa.yaml"
    manifest.write_text(yaml.safe_dump({"server": {}, "models": [{"name": "m", "source": str(tmp_path / "m.gguf")}]}))
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "NEXA_STATE": state}
    result = subprocess.run([sys.executable, "-m", "gateway.cli", "check", "-c", str(manifest)], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "server.state" in result.stderr and problem in result.stderr
    assert "Traceback" not in result.stderr


def test_the_state_url_is_redacted_where_the_manifest_is_shown():
    from gateway.manifest.gitops import redact

    shown = redact({"server": {"state": "redis://:hunter2@redis:6379/0", "api_keys": []}, "models": []})
    assert "hunter2" not in shown["server"]["state"] and "redis:6379" in shown["server"]["state"]
