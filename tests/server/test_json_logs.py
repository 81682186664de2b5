"""``serve --log-format json``'s records, made in a request and out of one (the live server's
lines: tests/server/test_live.py)."""

from __future__ import annotations

import io
import json
import logging

from server.json_logs import RequestIdFilter, json_formatter


def test_a_record_made_while_a_request_is_handled_names_its_request(app):
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(json_formatter())
    handler.addFilter(RequestIdFilter())
    log = logging.getLogger("tests.json_logs")
    log.addHandler(handler)
    log.setLevel(logging.INFO)

    @app.get("/_log_something")
    def log_something():  # noqa: ANN202
        log.warning("store slow: %s", 'said "twice"')
        return {}

    try:
        answer = app.test_client().get("/_log_something", headers={"X-Request-ID": "trace-7"})
        assert answer.headers["X-Request-ID"] == "trace-7"
        log.info("outside any request")
    finally:
        log.removeHandler(handler)
    inside, outside = (json.loads(line) for line in stream.getvalue().splitlines())
    assert inside["message"] == 'store slow: said "twice"' and inside["request_id"] == "trace-7"
    assert inside["level"] == "WARNING" and inside["logger"] == "tests.json_logs"
    assert "request_id" not in outside and outside["time"].endswith("+00:00")
