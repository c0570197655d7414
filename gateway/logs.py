"""Structured logs: one line per event, `key=value` (logfmt) or JSON, so a site's journal can be grepped
and shipped without a parser per message. Call `event(log, "name", key=value, ...)`."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def event(log: logging.Logger, name: str, severity: int = logging.INFO, /, **fields: Any) -> None:
    """Log one event; `severity` is positional so that "level" can be a field (alarm levels are)."""
    if log.isEnabledFor(severity):
        log.log(severity, name, extra={"fields": fields})


def _value(v: Any) -> str:
    text = v if isinstance(v, str) else json.dumps(v, default=str, separators=(",", ":"))
    if text == "" or any(c in text for c in ' "=\\\n\t'):
        return json.dumps(text)
    return text


class _Formatter(logging.Formatter):
    def __init__(self, as_json: bool) -> None:
        super().__init__()
        self.as_json = as_json

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(), "logger": record.name, "event": record.getMessage()}
        for key, value in getattr(record, "fields", {}).items():
            fields[f"{key}_" if key in fields else key] = value  # never hide the line's own ts/level/event
        if record.exc_info:
            fields["exc"] = self.formatException(record.exc_info)
        if self.as_json:
            return json.dumps(fields, default=str, separators=(",", ":"))
        return " ".join(f"{k}={_value(v)}" for k, v in fields.items())


def setup(fmt: str = "kv", level: str = "info") -> None:
    """Route every `lifeline` logger (and aiomqtt's) to stderr, where systemd's journal picks it up."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter(fmt == "json"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(_LEVELS[level])
    logging.getLogger("mqtt").setLevel(max(_LEVELS[level], logging.INFO))
