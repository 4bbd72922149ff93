"""Applies manifest changes while serving: on a file change (watchfiles), on
SIGHUP, or on `POST /admin/reload`.

A broken manifest is logged with its key paths and the last good one keeps
serving. The folder is watched rather than the file, and the file's content is
compared, so editors that replace files and Kubernetes ConfigMaps (which swap a
symlink) both trigger exactly one reload.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway import metrics
from gateway.config import ManifestError, load_file
from gateway.plan import diff

if TYPE_CHECKING:
    from gateway.app import Gateway

log = logging.getLogger("nexa.reload")


def _digest(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


class Reloader:
    def __init__(self, gateway: "Gateway", manifest_path: str | None, watch: bool, model_files: list[str] = ()):
        self.gateway = gateway
        self.path = Path(manifest_path).resolve() if manifest_path else None
        self.watch = watch
        self.model_files = [Path(p).resolve() for p in model_files]
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
        if self.watch:
            for target in self._targets():
                self._seen[target] = _digest(target)
            self._stop = asyncio.Event()
            self._task = loop.create_task(self._watch())

    def stop(self) -> None:
        if self._stop is not None:
            self._stop.set()
        if self._task is not None:
            self._task.cancel()

    def _targets(self) -> list[Path]:
        return ([self.path] if self.path else []) + self.model_files

    async def _watch(self) -> None:
        import watchfiles

        folders = sorted({str(t.parent) for t in self._targets()})
        debounce = self.gateway.manifest.server.reload_debounce_ms
        log.info("watching %s for changes", ", ".join(str(t) for t in self._targets()),
                 extra={"event": "watch", "paths": folders})
        async for _ in watchfiles.awatch(*folders, debounce=debounce, step=50, stop_event=self._stop,
                                         recursive=False, ignore_permission_denied=True):
            changed = [t for t in self._targets() if _digest(t) != self._seen.get(t)]
            if not changed:
                continue
            for target in changed:
                self._seen[target] = _digest(target)
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

