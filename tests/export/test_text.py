"""``phonesim export --read-text``: the classes a photo's text names are added to the
probabilities written, the file says so, a resume must read the same way, and the flags are
checked."""

from __future__ import annotations

import csv
import importlib.util
import io
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from embedder.text_cues import GENERIC_WORDS
from embedder.text_reader import TextOptions
from export import ResumeError, export_features
from export import cli as export_cli
from export.shards import ShardWriter
from tests.export.conftest import _config, _read, _write_manifest

pytest.importorskip("rapidocr", reason="phonesim[ocr] not installed")

WORD = "Zephyrphone"  # a product line no class is called, named by the cue file only


@pytest.fixture(scope="module")
def catalog(demo, ckpt, tmp_path_factory):
    """The demo's first six photos and a banner naming WORD; the cue file gives WORD to the
    class the classifier finds least likely for the banner, so only its text can win."""
    from embedder.inference import Embedder

    root = tmp_path_factory.mktemp("text-export")
    banner = Image.new("RGB", (360, 120), (250, 250, 250))
    ImageDraw.Draw(banner).text((12, 35), WORD, fill=(20, 20, 20), font=ImageFont.load_default(44))
    buf = io.BytesIO()
    banner.save(buf, format="JPEG", quality=92)
    (root / "banner.jpg").write_bytes(buf.getvalue())
    rows = list(csv.DictReader((demo / "with_bad.csv").open(newline="", encoding="utf-8")))[:6]
    rows = [{**r, "image": str(demo / r["image"])} for r in rows if r["image"] != "broken.jpg"]
    rows.append({**rows[0], "id": "banner-1", "image": str(root / "banner.jpg"), "label": ""})
    _write_manifest(root / "catalog.csv", rows)
    embedder = Embedder.from_checkpoint(ckpt)
    probabilities = embedder.embed_paths([root / "banner.jpg"]).probabilities[0]
    outsider = embedder.label_names[int(np.argmin(probabilities))]
    (root / "cues.json").write_text(json.dumps({outsider: [WORD]}))
    return root, outsider, embedder.label_names


def test_the_named_class_is_written_into_the_probabilities(ckpt, catalog, tmp_path) -> None:
    root, outsider, names = catalog
    plain = _read_export(ckpt, root, tmp_path / "plain.h5")
    read_all = TextOptions(str(root / "cues.json"), rotations=(0,), gate=1.0)
    summary = export_features(
        _config(ckpt, root / "catalog.csv", tmp_path / "text.h5", text=read_all)
    )
    data = _read(tmp_path / "text.h5")
    banner = data["ids"].index("banner-1")
    assert names[data["pred"][banner]] == outsider != names[plain["pred"][banner]]
    np.testing.assert_allclose(data["probs"].sum(axis=1), 1.0, atol=1e-5)
    assert summary.text_read == len(data["ids"])  # gate 1: every photo
    named = ~np.isclose(data["probs"], plain["probs"], atol=1e-6).all(axis=1)
    assert summary.text_named == int(named.sum()) >= 1 and named[banner]
    np.testing.assert_array_equal(data["emb"], plain["emb"])  # the text changes no embedding
    attrs = data["attrs"]
    assert attrs["prediction"] == "classifier+text" and plain["attrs"]["prediction"] == "classifier"
    setting = json.loads(attrs["text_cues"])
    assert setting["gate"] == 1.0 and setting["rotations"] == [0]
    assert WORD.lower() in setting["words"][names.index(outsider)]
    assert setting["generic"] == sorted(GENERIC_WORDS)  # matching passes over these
    assert plain["attrs"]["text_cues"] == ""


def test_a_sure_classifier_reads_nothing(ckpt, catalog, tmp_path) -> None:
    """Below the gate only: at a gate under every top probability nothing is read."""
    root, _, _ = catalog
    plain = _read_export(ckpt, root, tmp_path / "plain.h5")
    sure = TextOptions(str(root / "cues.json"), rotations=(0,), gate=0.01)
    summary = export_features(_config(ckpt, root / "catalog.csv", tmp_path / "t.h5", text=sure))
    assert summary.text_read == summary.text_named == 0
    np.testing.assert_allclose(_read(tmp_path / "t.h5")["probs"], plain["probs"], atol=1e-6)


def test_a_resume_must_read_the_same_way(ckpt, catalog, tmp_path, monkeypatch) -> None:
    root, _, _ = catalog
    out = tmp_path / "features.h5"
    real_write = ShardWriter.write

    def stop(self, batch):
        real_write(self, batch)
        raise KeyboardInterrupt

    monkeypatch.setattr(ShardWriter, "write", stop)
    text = TextOptions(str(root / "cues.json"), rotations=(0,), gate=1.0)
    with pytest.raises(KeyboardInterrupt):
        export_features(_config(ckpt, root / "catalog.csv", out, shard_size=2, text=text))
    monkeypatch.setattr(ShardWriter, "write", real_write)
    # The same words with examples of read text (phonesim learn-text) vote too: another reading.
    words = json.loads((root / "cues.json").read_text())
    learned = {k: {"words": v, "examples": ["zephyrphome"]} for k, v in words.items()}
    (tmp_path / "learned.json").write_text(json.dumps(learned))
    others = (
        None,
        TextOptions(str(root / "cues.json"), rotations=(0,), gate=0.5),
        TextOptions(str(tmp_path / "learned.json"), rotations=(0,), gate=1.0),
    )
    for other in others:
        with pytest.raises(ResumeError, match="text reading"):
            export_features(_config(ckpt, root / "catalog.csv", out, shard_size=2, text=other))
    summary = export_features(_config(ckpt, root / "catalog.csv", out, shard_size=2, text=text))
    assert summary.resumed_from > 0 and summary.count == 7
    # The rows committed before the interruption and those after were read alike.
    whole = tmp_path / "whole.h5"
    export_features(_config(ckpt, root / "catalog.csv", whole, shard_size=2, text=text))
    np.testing.assert_allclose(_read(out)["probs"], _read(whole)["probs"], atol=1e-6)
    banner = _read(out)["ids"].index("banner-1")
    assert banner >= summary.resumed_from  # read by the resumed run, not the first one


def test_a_failed_reading_costs_the_cue_not_the_export(ckpt, catalog, tmp_path, monkeypatch):
    from embedder.text_reader import TextEvidence

    root, _, _ = catalog
    plain = _read_export(ckpt, root, tmp_path / "plain.h5")

    def broken(self, image):
        raise RuntimeError("the OCR engine fell over")

    monkeypatch.setattr(TextEvidence, "read", broken)
    text = TextOptions(str(root / "cues.json"), rotations=(0,), gate=1.0)
    summary = export_features(_config(ckpt, root / "catalog.csv", tmp_path / "t.h5", text=text))
    assert summary.text_failed == summary.text_read == summary.count == 7
    assert summary.text_named == 0
    np.testing.assert_allclose(_read(tmp_path / "t.h5")["probs"], plain["probs"], atol=1e-6)


def test_the_text_flags_are_checked(ckpt, catalog, tmp_path, capsys) -> None:
    root, _, _ = catalog
    base = ["--checkpoint", str(ckpt), "--data", str(root / "catalog.csv"), "--no-progress"]
    code = export_cli.main([*base, "--out", str(tmp_path / "a.h5"), "--text-gate", "0.5"])
    assert code == 2 and "--read-text" in capsys.readouterr().err
    code = export_cli.main([*base, "--out", str(tmp_path / "b.h5"), "--text-cues", "nope.json"])
    assert code != 0 and "nope.json" in capsys.readouterr().err
    assert not (tmp_path / "b.h5").exists()
    args = ["--out", str(tmp_path / "c.h5"), "--text-cues", str(root / "cues.json")]
    assert export_cli.main([*base, *args, "--text-rotations", "0"]) == 0
    assert "text read on" in capsys.readouterr().out


def test_embed_reads_text_too(ckpt, catalog, tmp_path, capsys) -> None:
    """``phonesim embed`` (the export without neighbours) takes the same text flags."""
    from phonesim.cli import main

    root, outsider, names = catalog
    out = tmp_path / "embedded.h5"
    argv = ["embed", "--checkpoint", str(ckpt), "--data", str(root / "catalog.csv")]
    argv += ["--out", str(out), "--workers", "0", "--no-progress"]
    argv += ["--text-cues", str(root / "cues.json"), "--text-rotations", "0", "--text-gate", "1"]
    assert main(argv) == 0
    assert "text read on 7 images" in capsys.readouterr().out
    data = _read(out)
    assert data["attrs"]["prediction"] == "classifier+text"
    assert names[data["pred"][data["ids"].index("banner-1")]] == outsider


def test_a_worker_reads_the_unsure_images_of_its_batch(ckpt, catalog, monkeypatch) -> None:
    """What an export's Ray actor does with a batch: the unsure images' text read, its cues
    added, and a code per row saying what happened, a failed reading included."""
    from embedder.inference import Embedder
    from embedder.text_reader import TextEvidence
    from export.mapper import (
        TEXT_FAILED,
        TEXT_NAMED,
        TEXT_NOT_READ,
        embed_records,
        read_text,
        records_to_batch,
    )

    root, outsider, names = catalog
    photo = next(csv.DictReader((root / "catalog.csv").open(newline="", encoding="utf-8")))
    paths = [root / "banner.jpg", root / "missing.jpg", Path(photo["image"])]
    records = {"index": np.arange(3), "path": np.array([str(p) for p in paths])}
    embedder = Embedder.from_checkpoint(ckpt)
    evidence = TextOptions(str(root / "cues.json"), rotations=(0,), gate=1.0).build(names)
    real_read = TextEvidence.read

    def flaky(self, image):
        if image.size != (360, 120):  # every photo but the banner
            raise RuntimeError("the OCR engine fell over")
        return real_read(self, image)

    monkeypatch.setattr(TextEvidence, "read", flaky)
    batch = records_to_batch(embed_records(embedder, records, evidence))
    assert batch.indices.tolist() == [0, 2] and batch.failures[0][0] == 1
    assert batch.text.tolist() == [TEXT_NAMED, TEXT_FAILED]
    assert names[int(batch.probabilities[0].argmax())] == outsider
    plain = records_to_batch(embed_records(embedder, records))
    assert plain.text is None
    np.testing.assert_allclose(batch.probabilities[1], plain.probabilities[1], atol=1e-6)

    # Behind the gate: only the unsure rows are read, and codes land on their own rows.
    gated = TextOptions(str(root / "cues.json"), rotations=(0,), gate=0.5).build(names)
    sure, unsure = np.eye(len(names))[0], np.full(len(names), 1 / len(names))
    probabilities = np.array([sure, unsure, sure, unsure], np.float32)
    rows = [paths[2], paths[0], paths[0], paths[2]]
    written, status = read_text(gated, probabilities, rows, embedder.decode_side)
    assert status.tolist() == [TEXT_NOT_READ, TEXT_NAMED, TEXT_NOT_READ, TEXT_FAILED]
    assert names[int(written[1].argmax())] == outsider
    np.testing.assert_array_equal(written[[0, 2, 3]], probabilities[[0, 2, 3]])


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray is not installed")
def test_ray_actors_read_the_text_as_the_single_process_export(
    ckpt, catalog, tmp_path, monkeypatch
) -> None:
    """Under --ray the actors read the images they decoded; the driver reads none, and the
    file and counts are those of the single-process export."""
    import ray

    from embedder.text_reader import TextEvidence

    root, _, _ = catalog
    text = TextOptions(str(root / "cues.json"), rotations=(0,), gate=1.0)
    local = export_features(_config(ckpt, root / "catalog.csv", tmp_path / "local.h5", text=text))

    def not_here(*args, **kwargs):
        raise AssertionError("the driver read an image's text")

    monkeypatch.setattr(TextEvidence, "read_files", not_here)  # this process only
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        config = _config(ckpt, root / "catalog.csv", tmp_path / "ray.h5", text=text)
        summary = export_features(replace(config, ray="local", ray_actors=2, batch_size=3))
    finally:
        if started:
            ray.shutdown()
    assert summary.runner == "ray"
    counts = ("text_read", "text_named", "text_failed", "count")
    assert [getattr(summary, c) for c in counts] == [getattr(local, c) for c in counts]
    assert summary.text_read == 7 and summary.text_named >= 1
    ray_data, local_data = _read(tmp_path / "ray.h5"), _read(tmp_path / "local.h5")
    assert ray_data["ids"] == local_data["ids"]
    np.testing.assert_allclose(ray_data["probs"], local_data["probs"], atol=1e-5)
    np.testing.assert_array_equal(ray_data["pred"], local_data["pred"])
    for key in ("prediction", "text_cues"):
        assert ray_data["attrs"][key] == local_data["attrs"][key]


def _read_export(ckpt, root, out) -> dict:
    export_features(_config(ckpt, root / "catalog.csv", out))
    return _read(out)


def test_a_resume_must_vote_with_the_same_examples(catalog, tmp_path) -> None:
    """Two learned cue files with as many examples and the same words: still two readings."""
    from export.job import text_identity

    root, outsider, names = catalog
    identities = set()
    for i, example in enumerate(("zephyrphome", "quartzphone")):
        path = tmp_path / f"learned{i}.json"
        path.write_text(json.dumps({outsider: {"words": [WORD], "examples": [example]}}))
        identities.add(text_identity(TextOptions(str(path), rotations=(0,)).build(names)))
    assert len(identities) == 2
    setting = json.loads(identities.pop())
    assert setting["examples"] == 1 and len(setting["examples_sha256"]) == 64
