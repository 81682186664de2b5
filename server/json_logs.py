"""``serve --log-format json``: every log record as one JSON object per line, for a log
collector (Loki, Elasticsearch, CloudWatch) to index without parsing text.

Fields: ``time`` (ISO 8601, UTC), ``level``, ``logger``, ``pid``, ``message``, ``request_id``
for a record made while a request was handled (the ``X-Request-ID`` the answer carries), and
``exc_info`` with a traceback. The access log (``--access-log``) writes one record per request
with ``message`` "request" and ``remote_addr``, ``method``, ``path``, ``query``, ``status``,
``bytes``, ``duration_ms``, ``request_id``, ``user_agent`` and ``referer``.
"""

from __future__ import annotations

import logging
from typing import Any

from gunicorn.glogging import Logger as GunicornLogger
from pythonjsonlogger.json import JsonFormatter

_FIELDS = "%(levelname)s %(name)s %(process)d %(message)s"
_RENAMED = {"levelname": "level", "name": "logger", "process": "pid"}


def json_formatter() -> logging.Formatter:
    """A formatter writing a record as one JSON object (the fields above)."""
    return JsonFormatter(_FIELDS, rename_fields=_RENAMED, timestamp="time")


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` to a record made while a request is handled (on its thread)."""

    def filter(self, record: logging.LogRecord) -> bool:
        from flask import has_request_context

        if not hasattr(record, "request_id") and has_request_context():
            from server.request_ids import request_id

            record.request_id = request_id()
        return True


def use_json_logs() -> None:
    """Format the records of this process and of the workers it forks as JSON."""
    root = logging.getLogger()
    if not root.handlers:  # called from Python without the CLI's logging set up
        logging.basicConfig(level=logging.INFO)
    for handler in root.handlers:
        handler.setFormatter(json_formatter())
        if not any(isinstance(f, RequestIdFilter) for f in handler.filters):
            handler.addFilter(RequestIdFilter())
    # Python's warnings (a library's DeprecationWarning, a ResourceWarning at a worker's exit)
    # go to stderr as text otherwise.
    logging.captureWarnings(True)


class JsonAccessLogger(GunicornLogger):
    """gunicorn's logger with its error and access records as JSON (its ``logger_class``)."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        for log in (self.error_log, self.access_log):
            for handler in log.handlers:
                handler.setFormatter(json_formatter())

    def access(self, resp: Any, req: Any, environ: dict[str, Any], request_time: Any) -> None:
        if not self.access_log_enabled:
            return
        atoms = self.atoms(resp, req, environ, request_time)
        # From the raw URI, which server.worker.loggable masked (?api_key=***): the
        # environ's QUERY_STRING is not.
        path, _, query = str(environ.get("RAW_URI") or "").partition("?")
        fields = {
            "remote_addr": atoms["h"],
            "method": atoms["m"],
            "path": path,
            "query": query,
            "status": int(atoms["s"]) if str(atoms["s"]).isdigit() else atoms["s"],
            "bytes": atoms["B"],
            "duration_ms": atoms["D"] / 1000,  # microseconds
            "request_id": atoms.get("{x-request-id}o"),
            "user_agent": atoms["a"],
            "referer": atoms["f"],
        }
        self.access_log.info("request", extra=fields)
