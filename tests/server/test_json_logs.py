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


def test_pythons_warnings_are_json_records_too(tmp_path):
    """A library's warning (the warnings module) went to stderr as text."""
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    code = (
        "import logging, warnings\n"
        "logging.basicConfig(level=logging.INFO)\n"
        "from server.json_logs import use_json_logs\n"
        "use_json_logs(); use_json_logs()\n"  # twice, as cli.run and serve() both call it
        "warnings.warn('old API', DeprecationWarning, stacklevel=1)\n"
        "logging.getLogger('x').info('one line')\n"
    )
    done = subprocess.run(
        [sys.executable, "-W", "default", "-c", code],
        env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    records = [json.loads(line) for line in done.stderr.splitlines()]
    assert [r["logger"] for r in records] == ["py.warnings", "x"], done.stderr
    assert "DeprecationWarning: old API" in records[0]["message"]
