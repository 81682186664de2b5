"""``phonesim index query``: an image embedded by a checkpoint, against the index built with it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from common.errors import UserError
from index.errors import IndexMismatchError, InvalidFilterError, InvalidParamsError
from phonesim.cli import build_parser, main


@pytest.fixture(scope="module")
def catalog_index(tiny_checkpoint, tiny_catalog, tmp_path_factory) -> tuple[Path, dict]:
    """The tiny catalog embedded by the tiny checkpoint, as an index; and its rows."""
    from embedder.inference import Embedder
    from index import build_index, read_catalog_csv

    embedder = Embedder.from_checkpoint(tiny_checkpoint)
    rows = read_catalog_csv(tiny_catalog / "catalog.csv")
    ids = list(rows)
    batch = embedder.embed_paths([rows[i]["image"] for i in ids])
    out = tmp_path_factory.mktemp("query-index") / "index"
    build_index(
        out,
        ids,
        batch.embeddings,
        [rows[i] for i in ids],
        model_name=embedder.model_name,
        checkpoint_hash=embedder.checkpoint_hash,
    )
    return out, rows


def cli(argv: list[str]) -> int:
    """Run ``phonesim index ...`` without the one-line error reporting, to see the errors."""
    args = build_parser().parse_args(["index", *argv])
    return args.func(args)


def test_query_a_postgresql_store(catalog_index, tiny_checkpoint, pg_url, capsys):
    from index.pg_admin import push_folder

    index, rows = catalog_index
    push_folder(index, pg_url)
    item_id = list(rows)[3]
    argv = ["query", "--store", pg_url, "--checkpoint", str(tiny_checkpoint)]
    assert cli([*argv, "--image", rows[item_id]["image"], "-k", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["hits"][0]["id"] == item_id


def test_query_prints_neighbours_and_json(catalog_index, tiny_checkpoint, capsys):
    from embedder.checkpoint import read_config

    index, rows = catalog_index
    item_id = list(rows)[7]
    image, label = rows[item_id]["image"], rows[item_id]["label"]
    names = read_config(tiny_checkpoint).label_names
    base = ["query", str(index), "--checkpoint", str(tiny_checkpoint), "--image", image]
    assert cli([*base, "-k", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("predicted class: ") and lines[0].split()[2] in names
    assert lines[1].split()[:3] == ["1", "1.0000", item_id]  # the image is in the catalog
    assert len(lines) == 4 and f"label={label}" in lines[1]
    with pytest.raises(InvalidParamsError, match="k_factor"):
        cli([*base, "--param", "k_factor=1"])
    with pytest.raises(UserError, match="image file is a folder, not a file"):
        cli([*base[:-1], str(index)])
    assert cli([*base, "-k", "4", "--json", "--filter", f"label={label}"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["image"] == image and result["predicted"]["label"] in names
    assert 0 < result["predicted"]["probability"] <= 1
    assert result["hits"][0]["id"] == item_id and len(result["hits"]) == 4
    assert all(h["metadata"]["label"] == label for h in result["hits"])
    with pytest.raises(InvalidFilterError, match="FIELD=VALUE"):
        cli([*base, "--filter", "label"])


def test_query_with_another_model_is_refused(catalog_index, tiny_checkpoint, tmp_path):
    index, rows = catalog_index
    other = tmp_path / "other"
    shutil.copytree(index, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["model_name"] = "other_net"
    (other / "manifest.json").write_text(json.dumps(manifest))
    image = next(iter(rows.values()))["image"]
    with pytest.raises(IndexMismatchError, match="other_net"):
        cli(["query", str(other), "--checkpoint", str(tiny_checkpoint), "--image", image])


def test_query_errors_are_one_line(catalog_index, tiny_checkpoint, tmp_path, capsys):
    index, _ = catalog_index
    argv = ["index", "query", str(index), "--checkpoint", str(tiny_checkpoint)]
    assert main([*argv, "--image", str(tmp_path / "absent.jpg")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("phonesim: error:") and "does not exist" in err and "\n" not in err
    (tmp_path / "text.jpg").write_text("not an image")
    assert main([*argv, "--image", str(tmp_path / "text.jpg")]) == 2
    assert "\n" not in capsys.readouterr().err.strip()


def test_query_with_a_json_range_filter(catalog_index, tiny_checkpoint, capsys):
    index, rows = catalog_index
    prices = sorted({float(r["price"]) for r in rows.values()})
    assert len(prices) > 1
    limit = prices[-1]  # every item but the dearest model's
    image = next(iter(rows.values()))["image"]
    base = ["query", str(index), "--checkpoint", str(tiny_checkpoint), "--image", image]
    flt = json.dumps({"price": {"lt": limit}})
    assert cli([*base, "-k", "100", "--json", "--filter", flt]) == 0
    hits = json.loads(capsys.readouterr().out)["hits"]
    expected = {i for i, r in rows.items() if float(r["price"]) < limit}
    assert {h["id"] for h in hits} == expected and expected
    label = hits[0]["metadata"]["label"]  # JSON and FIELD=VALUE arguments combine with AND
    assert cli([*base, "-k", "100", "--json", "--filter", flt, "--filter", f"label={label}"]) == 0
    both = json.loads(capsys.readouterr().out)["hits"]
    assert {h["id"] for h in both} == {i for i in expected if rows[i]["label"] == label}
    with pytest.raises(InvalidFilterError, match="'label' is a text field"):
        cli([*base, "--filter", '{"label": {"gte": 3}}'])
    with pytest.raises(InvalidFilterError, match="not valid JSON"):
        cli([*base, "--filter", '{"price": {"lt": 300}'])
    with pytest.raises(InvalidFilterError, match="unknown operator 'below'"):
        cli([*base, "--filter", '{"price": {"below": 300}}'])
    with pytest.raises(InvalidFilterError, match="'price' is given twice"):
        cli([*base, "--filter", flt, "--filter", "price=1"])


def test_parse_filter_merges_arguments():
    from phonesim.query import parse_filter

    assert parse_filter([]) is None
    assert parse_filter(["label=a", "label=b", '{"price": {"gte": 1}}']) == {
        "price": {"gte": 1},
        "label": ["a", "b"],
    }
    with pytest.raises(InvalidFilterError, match="non-empty JSON object"):
        parse_filter(["{}"])
    # An operator after "=" had been equality with its text: no item, no word why.
    for value in ('{"lt": 300}', "[1, 2]"):
        with pytest.raises(InvalidFilterError, match="FIELD=VALUE takes a plain value"):
            parse_filter([f"price={value}"])
    assert parse_filter(["title=[refurbished]", "tag={x"]) == {
        "title": "[refurbished]",
        "tag": "{x",
    }


def test_the_prediction_is_the_one_serve_makes(catalog_index, tiny_checkpoint, capsys):
    """It was the classifier alone, where serve (and evaluate) fuse the nearest items' vote:
    the same photo was predicted two ways by the same checkpoint and catalog."""
    from embedder.inference import Embedder
    from index import open_index
    from server.config import ServerConfig
    from server.metrics import Metrics
    from server.service import Embedded, LookupService

    index, rows = catalog_index
    image = rows[list(rows)[5]]["image"]
    argv = ["query", "--index", str(index), "--checkpoint", str(tiny_checkpoint)]
    argv += ["--image", image, "-k", "3", "--json"]
    predictions = {}
    for extra in ([], ["--no-knn-fusion"]):
        assert cli([*argv, *extra]) == 0
        predictions[bool(extra)] = json.loads(capsys.readouterr().out)["predicted"]
    embedder = Embedder.from_checkpoint(tiny_checkpoint)
    batch = embedder.embed_paths([image])
    with open_index(index, readonly=True) as ix:
        svc = LookupService(ServerConfig(sync_interval_s=None), embedder, ix, Metrics())
        try:
            served = svc.predict(Embedded(batch.embeddings[0], batch.probabilities[0], {}))
        finally:
            svc.close()
    fused, alone = predictions[False], predictions[True]
    assert fused["source"] == served["source"] == "classifier+knn"
    assert fused["label"] == served["label"]
    assert fused["probability"] == pytest.approx(served["score"], abs=1e-5)
    assert alone["source"] == "classifier"
    top = int(batch.probabilities[0].argmax())
    assert alone["probability"] == pytest.approx(float(batch.probabilities[0][top]), abs=1e-5)
