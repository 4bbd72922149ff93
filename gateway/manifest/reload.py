"""Applies manifest changes while serving: on a file change (watchfiles), on
SIGHUP, or on `POST /admin/reload`.

A broken manifest is logged with its key paths and the last good one keeps
serving. The path is never resolved once: the manifest is read through the path the
user gave, the folders watched are recomputed after every change (the folder
holding the path and those of its symlink hops, gateway/manifest/watchpaths.py), and the
content is compared, so an editor's rename-over, an in-place edit, a re-pointed
symlink and a Kubernetes ConfigMap update (a `..data` symlink swap, the old folder
deleted) each trigger exactly one reload. The content is also re-checked every
few seconds without events, for filesystems that do not report changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import signal
from pathlib import Path
from typing import Any, Protocol

from gateway.manifest import watchpaths
from gateway.manifest.load import ManifestError, load_file
from gateway.manifest.plan import Plan, diff
from gateway.observability import metrics
from schemas.manifest import Manifest


class Target(Protocol):
    """What a reload changes (gateway/app.py's Gateway): the active manifest and a way to apply a new one."""

    manifest: Manifest
    manifest_hash: str

    async def apply(self, new: Manifest, plan: Plan) -> list[str]: ...

log = logging.getLogger("nexa.gateway.manifest.reload")

RECHECK_MS = 2000  # the content is compared this often even when no event arrives


def _digest(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def _stat(path: Path) -> str | None:
    """A model file's identity: cheap enough to take every few seconds, unlike hashing gigabytes."""
    try:
        st = path.stat()  # follows symlinks, like the read would
    except OSError:
        return None
    return f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"


class Reloader:
    def __init__(self, gateway: Target, manifest_path: str | None, watch: bool, model_files: list[str] = ()):
        self.gateway = gateway
        self.path = watchpaths.absolute(manifest_path) if manifest_path else None
        self.watch = watch
        self.model_files = [watchpaths.absolute(p) for p in model_files]
        self._lock = asyncio.Lock()
        self._task: asyncio.Task | None = None
        self._stop: asyncio.Event | None = None
        self._seen: dict[Path, str | None] = {}
        self._running: set[asyncio.Task] = set()

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(self.reload("sighup")))
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or no SIGHUP here
            log.debug("SIGHUP reload not available in this process")
        self._describe()
        if self.watch:
            for target in self._targets():
                self._seen[target] = self._fingerprint(target)
            self._stop = asyncio.Event()
            self._task = loop.create_task(self._watch())

    def stop(self) -> None:
        if self._stop is not None:
            self._stop.set()
        if self._task is not None:
            self._task.cancel()

    def _describe(self) -> None:
        """Say once at start which paths are watched and how; warn about a single mounted
        file (a Kubernetes subPath), which no update ever reaches, even without watching."""
        for target in self._targets():
            kind, how = watchpaths.how_watched(target)
            if kind == "file-mount":
                log.warning("%s", how, extra={"event": "watch", "path": str(target), "kind": kind})
            elif self.watch:
                log.info("watching %s for changes: %s", target, how,
                         extra={"event": "watch", "path": str(target), "kind": kind})

    def _fingerprint(self, target: Path) -> str | None:
        return _stat(target) if target in self.model_files else _digest(target)

    def _targets(self) -> list[Path]:
        return ([self.path] if self.path else []) + self.model_files

    async def _watch(self) -> None:
        import watchfiles

        debounce = self.gateway.manifest.server.reload_debounce_ms
        while not self._stop.is_set():
            folders = watchpaths.watched_folders(self._targets())
            log.debug("watching folders %s", ", ".join(folders), extra={"event": "watch_folders", "paths": folders})
            if not folders:  # nothing there yet: look again later
                await self._check()
                try:
                    await asyncio.wait_for(self._stop.wait(), RECHECK_MS / 1000)
                except asyncio.TimeoutError:
                    pass
                continue
            try:
                changes = watchfiles.awatch(*folders, debounce=debounce, step=50, stop_event=self._stop,
                                            recursive=False, ignore_permission_denied=True, watch_filter=None,
                                            rust_timeout=RECHECK_MS, yield_on_timeout=True)
                async with contextlib.aclosing(changes):
                    async for _ in changes:  # a batch of events, or nothing for RECHECK_MS
                        await self._check()
                        if watchpaths.watched_folders(self._targets()) != folders:
                            break  # a symlink now points elsewhere: watch the new folders
            except Exception:  # noqa: BLE001 - e.g. a watched folder vanished while starting to watch it
                log.debug("restarting the file watcher", exc_info=True, extra={"event": "watch_restart"})
                await asyncio.sleep(RECHECK_MS / 1000)

    async def _check(self) -> None:
        """Compare each target's content, read through the path the user gave; reload on a change."""
        now = {t: self._fingerprint(t) for t in self._targets()}
        changed = [t for t, seen in now.items() if seen != self._seen.get(t)]
        if not changed:
            return
        self._seen.update(now)
        models_changed = [t for t in changed if t in self.model_files]
        try:
            await self.reload("watch", force=bool(models_changed))
        except Exception:  # noqa: BLE001 - the watcher must outlive any one bad reload
            log.exception("manifest reload failed", extra={"event": "reload", "outcome": "error"})

    async def reload(self, trigger: str, force: bool = False) -> dict[str, Any]:
        """Validate, diff, apply. Never raises: the outcome is logged and returned.

        Runs to the end even when the caller is cancelled (an admin whose HTTP client
        gave up): a half-applied plan would leave pool and manifest out of step."""
        task = asyncio.ensure_future(self._reload(trigger, force))
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        return await asyncio.shield(task)

    async def _reload(self, trigger: str, force: bool = False) -> dict[str, Any]:
        async with self._lock:
            gateway = self.gateway
            if self.path is not None:
                try:
                    new = await asyncio.to_thread(load_file, self.path)
                except ManifestError as exc:
                    metrics.RELOADS.labels("invalid").inc()
                    log.error("manifest reload rejected; still serving the last good manifest: %s",
                              "; ".join(exc.problems),
                              extra={"event": "reload", "outcome": "invalid", "trigger": trigger,
                                     "problems": exc.problems})
                    return {"ok": False, "errors": exc.problems, "manifest_hash": gateway.manifest_hash}
            else:
                new = gateway.manifest
            plan = diff(gateway.manifest, new)
            if force:
                plan.replace = sorted(set(plan.replace) | set(plan.unchanged) | set(plan.update))
                plan.unchanged, plan.update = [], []
            failed = await gateway.apply(new, plan)
            outcome = "failed" if failed else ("noop" if plan.empty() else "ok")
            metrics.RELOADS.labels(outcome).inc()
            if plan.server_changes:
                log.warning("server settings changed (%s); they take effect at the next restart",
                            ", ".join(plan.server_changes), extra={"event": "reload_server_changes"})
            log.info("manifest reload (%s): %s", trigger, plan.summary(),
                     extra={"event": "reload", "outcome": outcome, "trigger": trigger, "plan": plan.as_dict(),
                            "failed": failed, "manifest_hash": gateway.manifest_hash})
            return {"ok": not failed, "plan": plan.as_dict(), "failed": failed, "manifest_hash": gateway.manifest_hash}

