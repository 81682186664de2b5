"""The duplicate finder on every fp32 runtime: the descriptor's named engine outputs give the
same features and the same groups as torch eager, and the run reports its speed."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from duplicates.descriptor import CopyDescriptor, DescriptorConfig
from duplicates.finder import FinderConfig, find_duplicates
from embedder.engine_options import EngineOptions
from embedder.errors import EngineError
from tests.duplicates.conftest import TEST_SIZE


def _groups(result) -> list[list[str]]:
    return sorted(sorted(m.id for m in g.members) for g in result.groups)


@pytest.mark.parametrize("runtime", ["torch", "auto", "onnx"])
def test_every_runtime_finds_the_groups_of_torch_eager(ckpt_at_test_size, planted_run, runtime):
    _, _, samples, reference = planted_run  # torch eager at TEST_SIZE
    engine = EngineOptions(runtime, "cpu", threads=1)
    descriptor = CopyDescriptor.from_checkpoint(ckpt_at_test_size, DescriptorConfig(), engine)
    assert descriptor.engine.runtime == ("onnx" if runtime == "auto" else runtime)
    result = find_duplicates(descriptor, samples, FinderConfig(workers=0, progress=False))
    assert _groups(result) == _groups(reference) and len(result.groups) >= 4
    timing = result.extra["timing"]
    assert timing["runtime"] == descriptor.engine.runtime and timing["images"] == result.read
    assert timing["describe_images_per_s"] > 0 and timing["model_images_per_s"] > 0
    assert timing["pairs"] > 0 and timing["verify_pairs_per_s"] > 0


def test_onnx_features_follow_torch_eager(ckpt_at_test_size, tiny_catalog):
    images = [Image.open(p) for p in sorted(tiny_catalog.rglob("*.jpg"))[:6]]
    ref, got = (
        CopyDescriptor.from_checkpoint(
            ckpt_at_test_size, engine=EngineOptions(rt, "cpu", 1)
        ).describe_images(images)
        for rt in ("torch", "onnx")
    )
    assert (ref.global_ * got.global_).sum(1).min() >= 0.9999
    np.testing.assert_allclose(got.local.astype(np.float32), ref.local, atol=2e-3)


def test_a_descriptor_size_the_graph_lacks_runs_torch_on_auto_and_is_refused_on_onnx(
    tiny_checkpoint,
):
    other = DescriptorConfig(size=TEST_SIZE)  # the tiny model's input is 64 px
    auto = CopyDescriptor.from_checkpoint(tiny_checkpoint, other, EngineOptions("auto", "cpu"))
    assert auto.engine.runtime == "torch"
    with pytest.raises(EngineError, match="takes 64 px input, the descriptor 128 px"):
        CopyDescriptor.from_checkpoint(tiny_checkpoint, other, EngineOptions("onnx", "cpu"))


# Runs scripts/find_duplicates.py as the command line does, then reports what it imported.
_FIND_THEN_REPORT_MODULES = """
import json, runpy, sys
sys.argv = ["find_duplicates.py", *sys.argv[1:]]
try:
    runpy.run_path("scripts/find_duplicates.py", run_name="__main__")
    code = 0
except SystemExit as exc:
    code = exc.code
print(json.dumps({"code": code, "torch": sorted(m for m in sys.modules if m.split(".")[0] in
      ("torch", "torchvision", "timm"))}))
"""


def run_reporting_modules(script_name: str, args: list[str]) -> tuple[dict, str]:
    """Run ``scripts/<script_name>`` with ``args`` in a fresh interpreter; its exit code and
    the torch-family modules it imported, and its standard output."""
    import subprocess
    import sys

    from tests.conftest import REPO

    script = _FIND_THEN_REPORT_MODULES.replace("find_duplicates.py", script_name)
    proc = subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, cwd=REPO, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stdout


@pytest.mark.parametrize("runtime", ["onnx", "onnx-int8"])
def test_find_on_an_onnx_runtime_never_imports_torch(
    ckpt_at_test_size, tiny_catalog, planted_run, runtime, tmp_path
):
    """The whole command (reading, descriptor, verification, grouping, report) on ONNX Runtime
    alone, with decoding threads: torch, torchvision and timm stay unimported, and the groups
    are those of torch eager."""
    import shutil

    from embedder.graphs import ensure_fp32_graph

    root, planted, _, reference = planted_run
    ckpt = tmp_path / "ckpt"
    shutil.copytree(ckpt_at_test_size, ckpt)
    if runtime == "onnx-int8":
        from embedder.quantize import quantize_int8

        quantize_int8(ckpt, tiny_catalog)
    else:
        ensure_fp32_graph(ckpt)  # exporting is the one step that needs torch; done here
    out = tmp_path / "report"
    args = ["--checkpoint", str(ckpt), "--images", str(root), "--out", str(out)]
    args += ["--runtime", runtime, "--device", "cpu", "--workers", "2", "--no-progress"]
    last, stdout = run_reporting_modules("find_duplicates.py", args)
    assert last == {"code": 0, "torch": []}, stdout
    assert f"images/s on {runtime}); verification:" in stdout
    groups = sorted(sorted(g) for g in json.loads((out / "duplicates.json").read_text())["groups"])
    mirrored = next(copy for copy in planted if copy.endswith("copy_mirror"))
    assert sorted([mirrored, planted[mirrored]]) in groups
    if runtime == "onnx":  # fp32: the very groups of torch eager; int8 may differ slightly
        assert groups == _groups(reference)


def test_blurred_global_pass_keeps_local_features_and_mirror_invariance(ckpt_at_test_size):
    sharp = CopyDescriptor.from_checkpoint(ckpt_at_test_size, DescriptorConfig(blur=0.0))
    blurred = CopyDescriptor.from_checkpoint(ckpt_at_test_size, DescriptorConfig(blur=2.0))
    x = np.random.default_rng(0).standard_normal((2, *sharp.transform.shape)).astype(np.float32)
    a, b = sharp.describe_tensors(x), blurred.describe_tensors(x)
    np.testing.assert_array_equal(a.local, b.local)
    assert np.abs(a.global_ - b.global_).max() > 1e-3  # the global pass saw other pixels
    mirrored = blurred.describe_tensors(np.ascontiguousarray(x[..., ::-1]))
    np.testing.assert_allclose(mirrored.global_, b.global_, atol=1e-4)


def test_blurred_global_pass_brings_a_noisy_copy_closer_to_its_original(ckpt_at_test_size):
    """Pixel noise (moire, sensor grain, re-encoding) moves the blurred descriptor less."""
    from scipy.ndimage import zoom

    sharp = CopyDescriptor.from_checkpoint(ckpt_at_test_size, DescriptorConfig(blur=0.0))
    blurred = CopyDescriptor.from_checkpoint(ckpt_at_test_size, DescriptorConfig(blur=2.0))
    rng = np.random.default_rng(1)
    side = sharp.transform.shape[-1]
    # Smooth originals (a coarse pattern upsampled) and copies with strong pixel noise.
    coarse = rng.standard_normal((4, 3, side // 8, side // 8)).astype(np.float32)
    original = zoom(coarse, (1, 1, 8, 8), order=1)
    noisy = original + 1.5 * rng.standard_normal(original.shape).astype(np.float32)

    def similarity(descriptor: CopyDescriptor) -> np.ndarray:
        a = descriptor.describe_tensors(original).global_
        b = descriptor.describe_tensors(noisy).global_
        return (a * b).sum(axis=1)

    assert (similarity(blurred) > similarity(sharp)).all()
