"""The `keygate` logger and its set-up: text or JSON lines, uvicorn's loggers alike, and
blocks printed at start-up."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import orjson

from keygate.observe.access import access_log

log = logging.getLogger("keygate")


_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "color_message",
}


class JsonFormatter(logging.Formatter):
    """An event as one JSON object: time, level, event (a caller's `extra={"event": ...}`, else
    "log"), logger, message, and any other `extra` fields (provider, key_id, key, error...)."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": access_log.iso(record.created),
            "level": record.levelname.lower(),
            "event": "log",
            "logger": record.name,
            "pid": record.process,  # which worker, with --workers
            "message": record.getMessage(),
        }
        for name, value in record.__dict__.items():
            if name not in _RECORD_ATTRS:
                doc[name] = value
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(doc, default=str).decode()


def uvicorn_log_config(log_format: str) -> dict[str, Any]:
    """uvicorn's `log_config` for JSON mode (its own messages as JSON lines too); {} for text."""
    if log_format != "json":
        return {}
    return {
        "log_config": {
            "version": 1,
            "disable_existing_loggers": False,
            "formatters": {"json": {"()": "keygate.observe.logs.JsonFormatter"}},
            "handlers": {
                "default": {
                    "class": "logging.StreamHandler",
                    "formatter": "json",
                    "stream": "ext://sys.stderr",
                }
            },
            "loggers": {
                name: {"handlers": ["default"], "level": "INFO", "propagate": False}
                for name in ("uvicorn", "uvicorn.error", "uvicorn.access")
            },
        }
    }


def print_block(text: str, event: str, **fields: Any) -> None:
    """A multi-line message (the banner): as it is in text mode, one JSON object in JSON mode."""
    if access_log.json:
        access_log.flush()
        doc = {"time": access_log.iso(time.time()), "level": "info", "event": event}
        line = orjson.dumps({**doc, **fields, "message": text}).decode()
        print(line, file=sys.stderr, flush=True)
    else:
        print(text, file=sys.stderr, flush=True)


def setup_logging(level: str = "info", log_format: str = "text") -> None:
    """Plain lines on stderr (or JSON objects); one handler, no colour, cheap to format."""
    root = logging.getLogger("keygate")
    access_log.json = log_format == "json"
    if root.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    if access_log.json:
        handler.setFormatter(JsonFormatter())
        top = logging.getLogger()
        if not top.handlers:  # other libraries' warnings (asyncio, aiohttp) as JSON too
            top.addHandler(handler)
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    root.addHandler(handler)
    root.setLevel(level.upper() if level.upper() in logging.getLevelNamesMapping() else "INFO")
    root.propagate = False
    access_log.enabled = root.isEnabledFor(logging.INFO)
