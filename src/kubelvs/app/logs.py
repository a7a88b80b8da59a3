"""One logging set-up for every kubelvs program: human text, or one JSON object per line
for log collectors (``--log-format json``: Loki, Elasticsearch, journald's JSON)."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Literal, TextIO

__all__ = ["LogFormat", "setup_logging"]

LogFormat = Literal["text", "json"]

#: Attributes every LogRecord has; anything else was passed with ``extra=`` and is a field.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                doc[key] = value if isinstance(value, (str, int, float, bool, type(None))) else str(value)
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False)


def setup_logging(level: str = "info", fmt: LogFormat = "text", stream: TextIO | None = None) -> None:
    """Configure the root logger (a second call replaces the handler the first added;
    handlers someone else added, e.g. a test runner's, are left alone)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler._kubelvs = True  # type: ignore[attr-defined]
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_kubelvs", False):
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
