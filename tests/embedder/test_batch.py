"""Batch embedding: decode threads hand the model the rows it would compute itself, failures
are counted, and a consumer that stops early leaves no thread behind."""

from __future__ import annotations

import threading

import numpy as np

from embedder.batch import decode_batch, decoded_batches, embed_samples, iter_embeddings
from embedder.data import Sample, load_catalog
from embedder.images import load_image
from embedder.inference import Embedder


def test_decoding_threads_give_the_rows_of_the_main_thread(tiny_checkpoint, tiny_catalog):
    embedder = Embedder.from_checkpoint(tiny_checkpoint, runtime="torch", device="cpu")
    samples = load_catalog(tiny_catalog).samples
    idx, here, _ = embed_samples(embedder, samples, 5, workers=0, progress=False)
    idx_w, there, _ = embed_samples(embedder, samples, 5, workers=2, progress=False)
    np.testing.assert_array_equal(idx, idx_w)
    assert list(idx) == list(range(len(samples)))
    np.testing.assert_array_equal(here.embeddings, there.embeddings)


def test_a_batch_is_decoded_into_contiguous_rows_around_failures(
    tiny_checkpoint, tiny_catalog, tmp_path
):
    embedder = Embedder.from_checkpoint(tiny_checkpoint, runtime="torch", device="cpu")
    samples = load_catalog(tiny_catalog).samples[:3]
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8 not a jpeg")
    samples = [samples[0], Sample("bad", bad, ""), samples[1], samples[2]]
    indices, x, failed = decode_batch(samples, range(4), embedder.transform)
    assert indices == [0, 2, 3] and [i for i, _ in failed] == [1]
    assert "bad.jpg" in failed[0][1]
    assert x.shape == (3, 3, 64, 64) and x.flags.c_contiguous and x.dtype == np.float32
    np.testing.assert_array_equal(x[1], embedder.transform(load_image(samples[2].path)))


def test_failures_are_reported_and_the_rest_embedded(tiny_checkpoint, tiny_catalog, tmp_path):
    embedder = Embedder.from_checkpoint(tiny_checkpoint, runtime="torch", device="cpu")
    good = load_catalog(tiny_catalog).samples[:4]
    (tmp_path / "empty.png").write_bytes(b"")
    samples = [*good[:2], Sample("empty", tmp_path / "empty.png", ""), *good[2:]]
    idx, batch, failures = embed_samples(embedder, samples, 2, workers=1, progress=False)
    assert list(idx) == [0, 1, 3, 4] and len(batch) == 4
    assert [(f.index, f.id) for f in failures] == [(2, "empty")]


def test_a_consumer_that_stops_early_leaves_no_decode_thread(tiny_checkpoint, tiny_catalog):
    embedder = Embedder.from_checkpoint(tiny_checkpoint, runtime="torch", device="cpu")
    samples = load_catalog(tiny_catalog).samples * 4
    batches = iter_embeddings(embedder, samples, 2, workers=2, progress=False)
    first, _, _ = next(batches)
    assert first == [0, 1]
    batches.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("decode")]
    # And nothing is decoded ahead without a consumer: a fresh iterator starts at the top.
    again = decoded_batches(samples, embedder.transform, 3, 2)
    assert next(again)[0] == [0, 1, 2]
    again.close()
