"""Races found in review, pinned as regression tests (pool level, no sockets): cancellation in the
middle of an eviction or a reload, retired handles, abandoned calls, and failed loads."""
from __future__ import annotations

import asyncio
import threading
import time

import pytest

import backends.errors as errors
import backends.registry as registry
from gateway.app import Gateway
from gateway.http.core import Request
from gateway.manifest.load import build
from gateway.manifest.plan import diff
from gateway.models.pool import ModelPool
from gateway.models.state import ModelState, ModelUnavailable
from schemas.manifest import ModelFormat, ModelType, ServerSettings
from tests import fakes

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(autouse=True)
def fake_engine(monkeypatch):
    monkeypatch.setitem(registry.ENGINES, (ModelType.NLP, ModelFormat.gguf), fakes.engine("tests.fakes:FakeBackend"))
    fakes.EVENTS.clear()


@pytest.fixture
def slow_close(monkeypatch):
    # An engine whose close() takes a while (freeing GPU memory), so an eviction has a window.
    monkeypatch.setattr(fakes.FakeBackend, "close", lambda self: time.sleep(0.5), raising=False)


def manifest(*models: dict, server: dict | None = None):
    return build({"models": [{"source": "/dev/null", **m} for m in models], "server": server or {}})


# 1 ------------------------------------------------------------------------------------------
def test_a_request_cancelled_during_an_eviction_does_not_wedge_the_victim(slow_close):
    async def main():
        loop = asyncio.get_running_loop()
        pool = ModelPool(manifest({"name": "a"}, {"name": "b"}).models, loop, ServerSettings(max_loaded=1))
        a, b = pool.get("a"), pool.get("b")
        assert await a.call(lambda be: 1) == 1
        req_b = loop.create_task(b.call(lambda be: 2))   # must evict a
        await asyncio.sleep(0.2)                          # ... a is being unloaded (engine closing)
        req_b.cancel()                                    # the client of b leaves (Granian cancels the handler)
        await asyncio.gather(req_b, return_exceptions=True)
        await asyncio.sleep(1.0)                          # a's threads are long gone by now
        state = a.state
        try:
            answer = await asyncio.wait_for(a.call(lambda be: 3), 3)
        except asyncio.TimeoutError:
            answer = "HUNG"
        pool.close(timeout=1)
        return state, answer

    state, answer = asyncio.run(main())
    assert (state, answer) == (ModelState.unloaded, 3), (state, answer)


# 2 ------------------------------------------------------------------------------------------
def test_a_retired_handle_is_never_loaded(slow_close):
    async def main():
        loop = asyncio.get_running_loop()
        old = manifest({"name": "a"}, {"name": "c"}, server={"max_loaded": 1})
        gw = Gateway(old)
        gw.startup(loop)
        a, c = gw.pool.get("a"), gw.pool.get("c")
        await c.call(lambda be: 0)                        # c resident; a lazy (unloaded)
        req = loop.create_task(a.call(lambda be: "ok"))   # a needs room: evicts c (slow close)
        await asyncio.sleep(0.1)
        new = manifest({"name": "a", "options": {"x": 1}}, {"name": "c"}, server={"max_loaded": 1})
        await gw.apply(new, diff(gw.manifest, new))       # replaces a while req waits in ready()
        assert a.retired
        result = await asyncio.wait_for(req, 5)
        await asyncio.sleep(0.3)
        successor = gw.pool.get("a")
        report = dict(result=result, old_state=a.state, old_threads_alive=sum(t.is_alive() for t in a._threads),
                      new_state=successor.state, resident=[h.name for h in gw.pool.loaded()])
        gw.pool.close(timeout=1)
        a._jobs.put(None)
        return report

    r = asyncio.run(main())
    print(r)
    # expected: the retired handle never loads an engine
    assert r["old_state"] != ModelState.ready and r["old_threads_alive"] == 0, r


# 3 ------------------------------------------------------------------------------------------
def test_a_cancelled_admin_reload_still_applies_the_whole_plan(tmp_path):
    import yaml

    path = tmp_path / "nexa.yaml"

    def write(models):
        path.write_text(yaml.safe_dump({"models": [{"source": "/dev/null", **m} for m in models]}))

    async def main():
        loop = asyncio.get_running_loop()
        write([{"name": "a", "preload": True}, {"name": "b"}])
        from gateway.manifest.load import load_file
        gw = Gateway(load_file(path), reloader_options={"manifest_path": str(path), "watch": False})
        gw.startup(loop)
        await gw.pool.get("a").ready()
        # replace a (slow load) and remove b
        write([{"name": "a", "preload": True, "options": {"load_delay": 1.0}}])
        admin = loop.create_task(gw.respond(Request("POST", "/admin/reload")))
        await asyncio.sleep(0.3)
        admin.cancel()                                    # the admin's curl is interrupted / LB timeout
        await asyncio.gather(admin, return_exceptions=True)
        await asyncio.sleep(1.5)
        snapshot = dict(pool=sorted(gw.pool.handles), manifest=[m.name for m in gw.manifest.models],
                        live_threads=[t.name for t in threading.enumerate() if t.name.startswith("model-")])
        # a second, perfectly valid reload now fails
        try:
            second = await gw.reloader.reload("admin")
        except Exception as exc:  # noqa: BLE001
            second = f"RAISED {exc!r}"
        gw.shutdown()
        return snapshot, second

    snapshot, second = asyncio.run(main())
    assert snapshot["pool"] == snapshot["manifest"], snapshot
    assert not str(second).startswith("RAISED"), second


# 4 ------------------------------------------------------------------------------------------
def test_a_cancelled_call_skips_its_queued_work():
    ran = []

    async def main():
        loop = asyncio.get_running_loop()
        pool = ModelPool(manifest({"name": "a", "max_queue": 1, "timeout_s": 30}).models, loop)
        a = pool.get("a")
        await a.ready()
        block = threading.Event()
        first = loop.create_task(a.call(lambda be: block.wait(5)))   # occupies the only replica
        await asyncio.sleep(0.05)
        for i in range(5):                                           # limit is max_queue + replicas = 2
            t = loop.create_task(a.call(lambda be, i=i: ran.append(i)))
            await asyncio.sleep(0.01)
            t.cancel()                                               # client went away
            await asyncio.gather(t, return_exceptions=True)
        block.set()
        await first
        await asyncio.sleep(0.2)
        pool.close(timeout=1)

    asyncio.run(main())
    assert ran == [], f"work of cancelled requests still ran: {ran}"


def test_a_failed_load_is_tried_again_after_the_back_off(monkeypatch):
    import gateway.models.handle

    monkeypatch.setattr(gateway.models.handle, "LOAD_RETRY_S", 0.3)
    monkeypatch.setitem(registry.ENGINES, (ModelType.NLP, ModelFormat.gguf), fakes.engine("tests.fakes:FakeBackend"))
    real = fakes.FakeBackend.load.__func__
    attempts = []

    def flaky(cls, spec, path):  # first load fails (e.g. transient OOM / download error), later ones work
        attempts.append(1)
        if len(attempts) == 1:
            raise errors.LoadError("transient")
        return real(cls, spec, path)

    monkeypatch.setattr(fakes.FakeBackend, "load", classmethod(flaky))

    async def main():
        pool = ModelPool(build({"models": [{"source": "/dev/null", "name": "a"}]}).models, asyncio.get_running_loop())
        a = pool.get("a")
        with pytest.raises(ModelUnavailable):
            await a.call(lambda be: 1)
        with pytest.raises(ModelUnavailable):  # within the back-off: no new attempt
            await a.call(lambda be: 1)
        assert len(attempts) == 1
        await asyncio.sleep(0.5)
        try:
            second = await a.call(lambda be: 2)
        except ModelUnavailable as exc:
            second = f"503: {exc}"
        pool.close(timeout=1)
        return second

    second = asyncio.run(main())
    assert (second, len(attempts)) == (2, 2), (second, len(attempts))


def test_a_reload_respects_max_loaded(tmp_path):
    """A preload model added by a reload loads only if it fits; otherwise it stays lazy."""
    import yaml

    from gateway.manifest.load import load_file

    path = tmp_path / "nexa.yaml"

    def write(models):
        path.write_text(yaml.safe_dump({"server": {"max_loaded": 1},
                                        "models": [{"source": "/dev/null", **m} for m in models]}))

    async def main():
        write([{"name": "pinned", "preload": True, "pinned": True}])
        gw = Gateway(load_file(path), reloader_options={"manifest_path": str(path), "watch": False})
        gw.startup(asyncio.get_running_loop())
        await gw.pool.get("pinned").ready()
        write([{"name": "pinned", "preload": True, "pinned": True}, {"name": "extra", "preload": True}])
        outcome = await gw.reloader.reload("admin")
        states = {h.name: h.state for h in gw.pool}
        gw.shutdown()
        return outcome, states

    outcome, states = asyncio.run(main())
    assert outcome["ok"] and outcome["plan"]["add"] == ["extra"]
    assert states == {"pinned": ModelState.ready, "extra": ModelState.unloaded}
