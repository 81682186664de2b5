"""Embeddings and class probabilities from a loaded checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from embedder.checkpoint import load_checkpoint
from embedder.data import load_catalog
from embedder.inference import Embedder, forward_embed


def test_embeddings_are_unit_norm_float32_and_probabilities_sum_to_one(
    tiny_checkpoint, tiny_catalog
):
    embedder = Embedder.from_checkpoint(tiny_checkpoint)
    samples = load_catalog(tiny_catalog).samples[:5]
    batch = embedder.embed_paths([s.path for s in samples])
    assert batch.embeddings.dtype == np.float32 and batch.probabilities.dtype == np.float32
    num_features = load_checkpoint(tiny_checkpoint)[0].num_features
    assert batch.embeddings.shape == (5, num_features) == (5, embedder.dim)
    assert batch.probabilities.shape == (5, 3)
    np.testing.assert_allclose(np.linalg.norm(batch.embeddings, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(batch.probabilities.sum(axis=1), 1.0, atol=1e-5)


def test_one_forward_pass_matches_the_model_logits(tiny_checkpoint):
    model, config = load_checkpoint(tiny_checkpoint)
    x = torch.randn(2, *config.data_config["input_size"])
    with torch.no_grad():
        _, probs = forward_embed(model, x)
        expected = model(x).softmax(1)
    torch.testing.assert_close(probs, expected)


def test_library_images_with_transparency_embed_like_files(tiny_checkpoint, tmp_path):
    """embed_images converts RGBA the same way as reading the file (transparent -> white)."""
    rgba = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    rgba.paste((30, 60, 200, 255), (16, 16, 48, 48))
    rgba.save(tmp_path / "t.png")
    embedder = Embedder.from_checkpoint(tiny_checkpoint)
    from_memory = embedder.embed_images([rgba]).embeddings
    from_file = embedder.embed_paths([tmp_path / "t.png"]).embeddings
    np.testing.assert_allclose(from_memory, from_file, atol=1e-6)


def test_a_model_whose_output_is_not_finite_is_an_error_not_a_nan_vector(tiny_checkpoint):
    """A checkpoint with a broken weight (a BatchNorm variance of -1) embedded every image as
    NaN and reported "embedded 3 images (0 failed)"; the vectors went on to the index."""
    from embedder.errors import EngineError

    embedder = Embedder.from_checkpoint(tiny_checkpoint, runtime="torch")
    bn = next(m for m in embedder.engine.model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    bn.running_var[0] = -1.0
    with pytest.raises(EngineError, match="not finite .* for 2 of 2 images"):
        embedder.embed_images([Image.new("RGB", (32, 32), (200, 10, 10))] * 2)


def test_a_premultiplied_la_image_embeds_like_la():
    """Pillow converts "La" to "LA" only: to_rgb took it to RGBA and raised ValueError."""
    from embedder.images import to_rgb

    la = Image.new("LA", (8, 8), (120, 255))
    assert to_rgb(la.convert("La")).getpixel((0, 0)) == to_rgb(la).getpixel((0, 0))
