"""Reader stage: inputs in a fixed order, in blocks."""

from __future__ import annotations

import os

from export.reader import read_inputs, record_blocks


def test_reader_blocks_and_duplicate_ids(demo, tmp_path):
    inputs = read_inputs(demo / "with_bad.csv", "manifest")
    blocks = list(record_blocks(inputs.samples, 5, 6))
    assert [b["index"].tolist() for b in blocks] == [
        list(range(5, 11)),
        list(range(11, 17)),
        list(range(17, 19)),
    ]
    assert blocks[0]["path"][0] == os.path.abspath(inputs.samples[5].path)
    assert read_inputs(demo / "with_bad.csv").fingerprint == inputs.fingerprint
    flat = tmp_path / "flat"
    flat.mkdir()
    img = next(demo.rglob("*.jpg")).read_bytes()
    (flat / "a.jpg").write_bytes(img)
    (flat / "a.png").write_bytes(img)
    # Files differing only by suffix keep it in their ids, so each row maps back to one file.
    assert [s.id for s in read_inputs(flat, "images").samples] == ["a.jpg", "a.png"]


def test_the_fingerprint_takes_a_file_name_that_is_not_utf8():
    """Under a non-UTF-8 locale a path decodes to surrogates, and the fingerprint's
    ``str.encode()`` ended `embed` with a traceback."""
    import os
    from pathlib import Path

    from embedder.data import Sample
    from export.reader import fingerprint

    odd = Sample(id="a", path=Path(os.fsdecode(b"/photos/\xe9.jpg")), label="")
    plain = Sample(id="a", path=Path("/photos/e.jpg"), label="")
    assert fingerprint([odd]) != fingerprint([plain])
    assert len(fingerprint([odd])) == 64
