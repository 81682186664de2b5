"""The duplicate commands that use a catalog or build a benchmark also run on ONNX Runtime alone:
``find --index`` (new listings against a catalog index) and ``calibrate``."""

from __future__ import annotations

import shutil

from PIL import Image

from tests.duplicates.test_runtimes import run_reporting_modules


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
    done, stdout = run_reporting_modules("find_duplicates.py", [*args, "--no-progress"])
    assert done == {"code": 0, "torch": []}, stdout
    assert "new listings matching the catalog 1" in stdout


def test_calibrate_on_onnx_never_imports_torch(ckpt_at_test_size, tiny_catalog, tmp_path):
    ckpt = _onnx_checkpoint(ckpt_at_test_size, tmp_path)
    args = ["--checkpoint", str(ckpt), "--data", str(tiny_catalog), "--work", str(tmp_path / "w")]
    args += ["--originals", "6", "--distractors", "4", "--runtime", "onnx", "--device", "cpu"]
    args += ["--blur", "1.5", "--no-progress"]
    done, stdout = run_reporting_modules("calibrate_duplicates.py", args)
    assert done == {"code": 0, "torch": []}, stdout
    assert "benchmark images (6 originals" in stdout
    # The threshold is stored with the descriptor it was calibrated on, blur included.
    from duplicates.calibration import stored_settings

    assert stored_settings(ckpt).descriptor.blur == 1.5
