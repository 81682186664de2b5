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


def test_the_held_out_images_are_readable_and_each_class_keeps_one_to_train(tmp_path):
    """Unreadable images drawn for validation left none to score on some seeds ("none of the
    2 validation images could be read") while other seeds trained fine."""
    from PIL import Image

    from embedder.data import Sample
    from embedder.train_data import is_readable

    samples = []
    for label in ("a", "b"):
        (tmp_path / label).mkdir()
        for i in range(6):
            path = tmp_path / label / f"{i}.jpg"
            if i < 4:  # four of six unreadable, as in the report
                path.write_bytes(b"" if i % 2 else b"not an image")
            else:
                Image.new("RGB", (16, 16), (i, 0, 0)).save(path)
            samples.append(Sample(f"{label}{i}", str(path), label))
    checked = []

    def readable(s: Sample) -> bool:
        checked.append(s.id)
        return is_readable(s)

    for seed in range(8):
        checked.clear()
        train_part, val_part = stratified_split(samples, 0.34, seed, readable=readable)
        assert sorted(s.id for s in train_part + val_part) == sorted(s.id for s in samples)
        assert val_part and all(is_readable(s) for s in val_part)
        for label in ("a", "b"):
            assert any(is_readable(s) for s in train_part if s.label == label)
        assert len(checked) == len(set(checked))  # each image decoded once at most
    # All readable: the split is the one made without the check, from a fraction of decodes.
    fine = [Sample(s.id, samples[4].path, s.label) for s in samples]
    checked.clear()
    assert stratified_split(fine, 0.34, 3, readable=readable) == stratified_split(fine, 0.34, 3)
    assert len(checked) == 6  # the 2 held out and the first kept, per class
