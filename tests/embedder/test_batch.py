"""Batch embedding: decoding workers hand the model the rows it would compute itself, stacked
straight into shared memory."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader

from embedder.batch import DecodedImages, _collate, embed_samples
from embedder.data import load_catalog
from embedder.images import load_image
from embedder.inference import Embedder


def test_decoding_workers_give_the_rows_of_the_main_process(tiny_checkpoint, tiny_catalog):
    embedder = Embedder.from_checkpoint(tiny_checkpoint, runtime="torch", device="cpu")
    samples = load_catalog(tiny_catalog).samples
    idx, here, _ = embed_samples(embedder, samples, 5, workers=0, progress=False)
    idx_w, there, _ = embed_samples(embedder, samples, 5, workers=2, progress=False)
    np.testing.assert_array_equal(idx, idx_w)
    np.testing.assert_array_equal(here.embeddings, there.embeddings)


def test_a_worker_stacks_its_batch_into_shared_memory(tiny_checkpoint, tiny_catalog):
    embedder = Embedder.from_checkpoint(tiny_checkpoint, runtime="torch", device="cpu")
    samples = load_catalog(tiny_catalog).samples[:4]
    dataset = DecodedImages(samples, embedder.transform, embedder.decode_side)
    for workers, shared in ((0, False), (1, True)):
        loader = DataLoader(dataset, batch_size=4, num_workers=workers, collate_fn=_collate)
        indices, x, failed = next(iter(loader))
        assert indices == [0, 1, 2, 3] and failed == [] and x.is_shared() == shared
        torch.testing.assert_close(x[2], embedder.transform(load_image(samples[2].path)))
