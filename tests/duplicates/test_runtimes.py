"""The duplicate finder on every fp32 runtime: the descriptor's named engine outputs give the
same features and the same groups as torch eager, and the run reports its speed."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from duplicates.descriptor import CopyDescriptor, DescriptorConfig
from duplicates.finder import FinderConfig, find_duplicates
from embedder.engine_options import EngineOptions
from embedder.errors import EngineError
from tests.duplicates.conftest import TEST_SIZE


@pytest.fixture(scope="module")
def ckpt_at_test_size(tiny_checkpoint, tmp_path_factory):
    """The tiny checkpoint with a TEST_SIZE input, so its ONNX graph takes the descriptor's
    size (an exported graph has one input size)."""
    from embedder.checkpoint import load_checkpoint, save_checkpoint

    model, config = load_checkpoint(tiny_checkpoint)
    size = [3, TEST_SIZE, TEST_SIZE]
    config = replace(config, data_config={**config.data_config, "input_size": size})
    return save_checkpoint(model, config, tmp_path_factory.mktemp("dup-size") / "ckpt")


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
