"""The serve preflight: mistakes a worker would only report as a gunicorn boot traceback are
one-line errors before any worker starts (no test here starts gunicorn: see test_live.py)."""

from __future__ import annotations

import json
import shutil

import pytest

from common.errors import UserError
from server.config import GunicornSettings, ServerConfig
from server.serve import serve


def config(checkpoint, index, **kw) -> ServerConfig:
    return ServerConfig(checkpoint=str(checkpoint), index=str(index), **kw)


def test_serve_rejects_an_api_key_with_several_workers(tiny_checkpoint, index_dir):
    with pytest.raises(UserError, match="--workers 1"):
        serve(config(tiny_checkpoint, index_dir, api_key="k"), GunicornSettings(workers=2))
    with pytest.raises(UserError):
        serve(config(tiny_checkpoint, index_dir.parent / "missing"))
    with pytest.raises(UserError, match="--checkpoint and --index"):
        serve(ServerConfig())


def test_serve_checks_the_index_before_starting_workers(tiny_checkpoint, index_dir, tmp_path):

    other = tmp_path / "other-checkpoint"
    shutil.copytree(index_dir, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["checkpoint_hash"] = "0" * 64
    (other / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(UserError, match="checkpoint hash"):
        serve(config(tiny_checkpoint, other))

    damaged = tmp_path / "damaged"
    shutil.copytree(index_dir, damaged)
    for leftover in damaged.glob("catalog.sqlite-*"):  # a WAL left beside it would mask it
        leftover.unlink()
    (damaged / "catalog.sqlite").write_bytes(b"this is not a database" * 100)
    with pytest.raises(UserError, match="catalog store"):
        serve(config(tiny_checkpoint, damaged))
