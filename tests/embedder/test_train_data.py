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
    fine = []
    for s in samples:  # each its own readable file: one file under many ids stays together
        path = tmp_path / f"fine-{s.id}.jpg"
        Image.new("RGB", (16, 16), (9, 9, 9)).save(path)
        fine.append(Sample(s.id, str(path), s.label))
    checked.clear()
    assert stratified_split(fine, 0.34, 3, readable=readable) == stratified_split(fine, 0.34, 3)
    assert len(checked) == 6  # the 2 held out and the first kept, per class


def test_one_file_under_several_ids_stays_on_one_side_of_the_split(tiny_catalog):
    """A CSV listing each photo under two ids (a re-listed item) put 11 of 15 validation
    photos in training too, without the warning --val gives for that."""
    from dataclasses import replace

    samples = load_catalog(tiny_catalog).samples
    doubled = [x for s in samples for x in (s, replace(s, id=s.id + "-relisted"))]
    for seed in range(5):
        train_part, val_part = stratified_split(doubled, 0.3, seed=seed)
        assert val_part and not {s.path for s in train_part} & {s.path for s in val_part}
        assert {s.label for s in train_part} == {s.label for s in samples}
    # Without copies the split is the one it always was (one shuffle of as many items).
    assert stratified_split(samples, 0.3, seed=1)[1] == [
        s for s in stratified_split(samples, 0.3, seed=1)[1]
    ]
