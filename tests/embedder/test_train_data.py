"""Training data: the per-class validation split."""

from __future__ import annotations

from embedder.data import load_catalog
from embedder.train_data import stratified_split


def test_stratified_split_keeps_every_class_in_training(tiny_catalog):
    samples = load_catalog(tiny_catalog).samples
    train_part, val_part = stratified_split(samples, 0.5, seed=3)
    assert {s.label for s in train_part} == {s.label for s in samples}
    assert len(train_part) + len(val_part) == len(samples)
    assert stratified_split(samples, 0.5, seed=3) == (train_part, val_part)
