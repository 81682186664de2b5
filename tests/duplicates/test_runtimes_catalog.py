"""The duplicate commands that use a catalog or build a benchmark also run on ONNX Runtime alone:
``find --index`` (new listings against a catalog index) and ``calibrate``."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

from PIL import Image

from tests.conftest import REPO
from tests.duplicates.test_runtimes import _FIND_THEN_REPORT_MODULES

_CALIBRATE_THEN_REPORT_MODULES = _FIND_THEN_REPORT_MODULES.replace(
    "find_duplicates.py", "calibrate_duplicates.py"
)


def _run(script: str, args: list[str]) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    return {"stdout": proc.stdout, **json.loads(proc.stdout.strip().splitlines()[-1])}


def _onnx_checkpoint(ckpt_at_test_size, tmp_path):
    from embedder.graphs import ensure_fp32_graph

    ckpt = shutil.copytree(ckpt_at_test_size, tmp_path / "ckpt")
    ensure_fp32_graph(ckpt)  # exporting is the one step that needs torch; done here
    return ckpt


def test_find_against_an_index_on_onnx_never_imports_torch(
    ckpt_at_test_size, tiny_catalog, tmp_path
):
    from embedder.data import load_catalog
    from embedder.inference import Embedder
    from index import build_index

    ckpt = _onnx_checkpoint(ckpt_at_test_size, tmp_path)
    embedder = Embedder.from_checkpoint(ckpt, runtime="onnx", device="cpu")
    catalog = load_catalog(tiny_catalog / "catalog.csv").samples
    build_index(
        tmp_path / "idx",
        [s.id for s in catalog],
        embedder.embed_paths([s.path for s in catalog]).embeddings,
        [{"image": str(s.path.resolve()), "label": s.label} for s in catalog],
        model_name=embedder.model_name,
        checkpoint_hash=embedder.checkpoint_hash,
        progress=False,
    )
    new = tmp_path / "new"
    new.mkdir()
    Image.open(catalog[3].path).convert("RGB").save(new / "relisted.jpg", quality=40)
    args = ["--checkpoint", str(ckpt), "--images", str(new), "--index", str(tmp_path / "idx")]
    args += ["--out", str(tmp_path / "report"), "--runtime", "onnx", "--device", "cpu"]
    done = _run(_FIND_THEN_REPORT_MODULES, [*args, "--no-progress"])
    assert done["code"] == 0 and done["torch"] == []
    assert "new listings matching the catalog 1" in done["stdout"]


def test_calibrate_on_onnx_never_imports_torch(ckpt_at_test_size, tiny_catalog, tmp_path):
    ckpt = _onnx_checkpoint(ckpt_at_test_size, tmp_path)
    args = ["--checkpoint", str(ckpt), "--data", str(tiny_catalog), "--work", str(tmp_path / "w")]
    args += ["--originals", "6", "--distractors", "4", "--runtime", "onnx", "--device", "cpu"]
    done = _run(_CALIBRATE_THEN_REPORT_MODULES, [*args, "--dry-run", "--no-progress"])
    assert done["code"] == 0 and done["torch"] == []
    assert "benchmark images (6 originals" in done["stdout"]
