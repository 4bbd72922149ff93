"""Structured logs: JSON lines when not on a terminal, readable text when on one."""

from __future__ import annotations

import json
import logging
import sys
import time

from gateway.observability.redact import scrub, scrub_all

# Attributes every LogRecord has; anything else was passed through `extra=`.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        data.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(scrub_all(data), default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """Readable lines for a terminal, with URLs' credentials hidden as in JSON lines."""

    def format(self, record: logging.LogRecord) -> str:
        return scrub(super().format(record))


def use_json(fmt: str) -> bool:
    return fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())


def setup_logging(level: str = "info", fmt: str = "auto") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter() if use_json(fmt) else TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("nexa")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
