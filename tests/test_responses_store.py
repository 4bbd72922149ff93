"""The Responses API store: bounded, expiring, and private to each API key."""

from __future__ import annotations

from gateway.api.openai.responses_store import ResponseStore, Stored
from schemas.manifest import ApiKey, ServerSettings


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def entry(n: int) -> Stored:
    return Stored(response={"id": f"resp_{n}", "output": []}, input_items=[])


def test_the_oldest_entries_go_first_beyond_the_bound():
    store = ResponseStore(max_items=2)
    for n in range(3):
        store.put("", f"resp_{n}", entry(n))
    assert store.get("", "resp_0") is None
    assert store.get("", "resp_1").response["id"] == "resp_1" and len(store) == 2


def test_entries_expire_after_the_ttl():
    clock = Clock()
    store = ResponseStore(ttl_s=10, clock=clock)
    store.put("", "resp_1", entry(1))
    clock.now += 9
    assert store.get("", "resp_1") is not None
    clock.now += 2
    assert store.get("", "resp_1") is None and len(store) == 0


def test_a_shorter_ttl_applies_to_entries_stored_before():
    clock = Clock()
    store = ResponseStore(ttl_s=100, clock=clock)
    store.put("", "resp_1", entry(1))
    store.ttl_s = 1
    store.put("", "resp_2", entry(2))
    clock.now += 5
    assert store.get("", "resp_2") is None  # expired although it is behind a longer-lived one
    clock.now += 100
    assert len(store) == 0


def test_each_key_sees_only_its_own():
    a, b = ResponseStore.owner(ApiKey(key="sk-aaaaaaaa")), ResponseStore.owner(ApiKey(key="sk-bbbbbbbb"))
    assert a != b and "sk-aaaaaaaa" not in a
    store = ResponseStore()
    store.put(a, "resp_1", entry(1))
    assert store.get(b, "resp_1") is None and not store.delete(b, "resp_1")
    assert store.get(a, "resp_1") is not None and store.delete(a, "resp_1")


def test_zero_stores_nothing():
    store = ResponseStore(max_items=0)
    store.put("", "resp_1", entry(1))
    assert store.get("", "resp_1") is None


def test_the_manifest_settings_and_their_defaults():
    settings = ServerSettings()
    assert settings.responses_max_stored == 1000 and settings.responses_ttl_s == 3600
    assert ServerSettings(responses_max_stored=5, responses_ttl_s=60).responses_max_stored == 5
