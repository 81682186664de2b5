"""Operational endpoints: liveness, readiness, Prometheus metrics and the OpenAPI document."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from server.openapi import openapi_spec
from server.state import state

bp = Blueprint("ops", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    """The process answers."""
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz() -> tuple[Response, int]:
    """Model and index are loaded and the batcher runs."""
    svc = state().service
    checks = svc.checks() if svc is not None else {"model": False, "index": False}
    ready = all(checks.values())
    body = jsonify(status="ready" if ready else "not_ready", checks=checks)
    return body, 200 if ready else 503


@bp.get("/metrics")
def metrics() -> Response:
    return state().metrics.render()


@bp.get("/openapi.json")
def openapi() -> Response:
    st = state()
    svc = st.service
    if svc is None:
        return jsonify(openapi_spec(max_batch_entries=st.config.max_batch_entries))
    return jsonify(
        openapi_spec(
            svc.filterable_fields,
            dim=svc.embedder.dim,
            numeric_fields=svc.numeric_fields,
            max_batch_entries=st.config.max_batch_entries,
        )
    )
