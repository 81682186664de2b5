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


def test_library_images_are_turned_upright_by_their_exif_orientation(tiny_checkpoint, tmp_path):
    """Phone photos store their rotation as an EXIF tag: embed_paths applied it and
    embed_images did not, so an integrator's query of an opened photo matched the catalog's
    copy at cosine 0.73 on the demo model."""
    upright = Image.new("RGB", (64, 40), (240, 240, 240))
    upright.paste((200, 20, 20), (0, 0, 20, 40))  # a feature a rotation moves
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned; viewers rotate it back
    upright.transpose(Image.Transpose.ROTATE_90).save(tmp_path / "r.png", exif=exif)
    embedder = Embedder.from_checkpoint(tiny_checkpoint)
    opened = embedder.embed_images([Image.open(tmp_path / "r.png")]).embeddings
    np.testing.assert_allclose(opened, embedder.embed_paths([tmp_path / "r.png"]).embeddings)
    np.testing.assert_allclose(opened, embedder.embed_images([upright]).embeddings, atol=1e-6)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        ("embed_images", TypeError, "images: expected a sequence, got one ndarray"),
        ("embed_images_row", TypeError, "image 0: expected a PIL image, got ndarray"),
        ("embed_images_none", TypeError, "image 1: expected a PIL image, got NoneType"),
        ("embed_paths", TypeError, "paths: expected a sequence, got one str"),
        ("closed", "ImageError", "image 0: cannot decode image .*closed"),
        ("truncated", "ImageError", "image 0: cannot decode image .*truncated"),
        ("empty", "ImageError", r"image 0: the image is empty \(0x0\)"),
        ("nan", ValueError, "input batch holds NaN"),
    ],
)
def test_library_inputs_it_cannot_embed_are_named_errors(
    tiny_checkpoint, tmp_path, call, error, match
):
    """These had been a numpy "truth value is ambiguous", attribute errors, an empty
    AssertionError, Pillow's OSError, a path read letter by letter and, for a NaN input, an
    error blaming the model's weights."""
    from embedder.errors import ImageError

    error = ImageError if error == "ImageError" else error
    embedder = Embedder.from_checkpoint(tiny_checkpoint)
    noise = np.random.default_rng(0).integers(0, 255, (128, 128, 3), dtype=np.uint8)
    good = Image.fromarray(noise)
    good.save(tmp_path / "g.jpg")  # noise: half the file is past its header
    data = (tmp_path / "g.jpg").read_bytes()
    (tmp_path / "t.jpg").write_bytes(data[: len(data) // 2])
    with Image.open(tmp_path / "g.jpg") as closed:
        pass
    calls = {
        "embed_images": lambda: embedder.embed_images(np.zeros((2, 32, 32, 3), np.uint8)),
        "embed_images_row": lambda: embedder.embed_images([np.zeros((32, 32, 3), np.uint8)]),
        "embed_images_none": lambda: embedder.embed_images([good, None]),
        "embed_paths": lambda: embedder.embed_paths(str(tmp_path / "g.jpg")),
        "closed": lambda: embedder.embed_images([closed]),
        "truncated": lambda: embedder.embed_images([Image.open(tmp_path / "t.jpg")]),
        "empty": lambda: embedder.embed_images([Image.new("RGB", (0, 0))]),
        "nan": lambda: embedder.embed_tensors(np.full((1, 3, 32, 32), np.nan, np.float32)),
    }
    with pytest.raises(error, match=match):
        calls[call]()


def test_paths_may_come_as_a_numpy_array(tiny_checkpoint, tiny_catalog):
    """A DataFrame column's values (a 1-D array) are paths, not one path."""
    embedder = Embedder.from_checkpoint(tiny_checkpoint)
    paths = [str(s.path) for s in load_catalog(tiny_catalog).samples[:2]]
    batch = embedder.embed_paths(np.array(paths))
    np.testing.assert_allclose(batch.embeddings, embedder.embed_paths(paths).embeddings)
