"""Operational endpoints: liveness, readiness, Prometheus metrics and the OpenAPI document."""

from __future__ import annotations

import os

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
    """Model and index loaded, batcher and store follower running, and (when the store can be
    reached) this process caught up with it: 200; otherwise 503.

    ``replica`` says how far behind the store this process is (journal entries and seconds)
    and, while the store cannot be reached, why (``store_error``); then the status is
    ``degraded`` but still 200, since every process is equally behind and reads go on.
    """
    svc = state().service
    checks = svc.checks() if svc is not None else {"model": False, "index": False}
    replica = svc.replica_status() if svc is not None else None
    ready = all(checks.values())
    status = "ready" if ready else "not_ready"
    if ready and replica is not None and replica["store_error"]:
        status = "degraded"
    # ``worker``: which process answered (a load balancer spreads probes over all of them).
    body = jsonify(status=status, checks=checks, replica=replica, worker=os.getpid())
    return body, 200 if ready else 503


@bp.get("/metrics")
def metrics() -> Response:
    return state().metrics.render()


@bp.get("/openapi.json")
def openapi() -> Response:
    st = state()
    svc = st.service
    if svc is None:
        return jsonify(
            openapi_spec(
                max_batch_entries=st.config.max_batch_entries, reads_text=st.config.read_text
            )
        )
    return jsonify(
        openapi_spec(
            svc.filterable_fields,
            dim=svc.embedder.dim,
            numeric_fields=svc.numeric_fields,
            max_batch_entries=st.config.max_batch_entries,
            reads_text=svc.text is not None,
        )
    )
