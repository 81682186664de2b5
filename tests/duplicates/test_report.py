"""The duplicate report files: CSV, JSON, HTML gallery, summary."""

from __future__ import annotations

import csv
import dataclasses
import io
import json

from duplicates.result import DuplicateGroup, DuplicateResult
from tests.duplicates.conftest import member


def test_report_files(planted_run, tmp_path) -> None:
    from duplicates.report import CSV_COLUMNS, write_report

    _, planted, _, result = planted_run
    paths = write_report(result, tmp_path / "report")
    rows = list(csv.DictReader(io.StringIO(paths["csv"].read_text())))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert sum(r["keep"] == "1" for r in rows) == len(result.groups)
    assert {r["id"] for r in rows} >= set(planted)
    data = json.loads(paths["json"].read_text())
    assert (data["format"], data["format_version"]) == ("phonesim-duplicates", 1)
    assert all(len(g) >= 2 for g in data["groups"]) and len(data["groups"]) == len(planted)
    # label_conflicts names groups by the CSV's group_id, which group_ids gives per group.
    by_id = dict(zip(data["group_ids"], data["groups"], strict=True))
    csv_ids = {r["group_id"] for r in rows if r["label_conflict"] == "1"}
    assert {str(g) for g in data["label_conflicts"]} == csv_ids and len(csv_ids) == 1
    conflicted = by_id[data["label_conflicts"][0]]
    assert {r["id"] for r in rows if r["label_conflict"] == "1"} == set(conflicted)
    html = paths["html"].read_text()
    assert html.count("<div class='group") == len(result.groups)
    assert "data:image/jpeg;base64," in html
    assert paths["summary"].read_text().strip() == result.summary()


def test_a_report_stopped_while_rendering_leaves_the_previous_one_whole(
    planted_run, tmp_path, monkeypatch
) -> None:
    """The files were replaced one by one: a Ctrl-C while the HTML page (thumbnails) was
    rendered left a new CSV beside the previous run's JSON and page."""
    import pytest

    from duplicates import report

    _, _, _, result = planted_run
    paths = report.write_report(result, tmp_path / "report")
    before = {key: path.read_bytes() for key, path in paths.items()}
    fewer = dataclasses.replace(result, groups=result.groups[:1])

    def interrupted(_result):  # noqa: ANN001, ANN202
        raise KeyboardInterrupt

    monkeypatch.setattr(report, "to_html", interrupted)
    with pytest.raises(KeyboardInterrupt):
        report.write_report(fewer, tmp_path / "report")
    assert {key: path.read_bytes() for key, path in paths.items()} == before


def test_a_report_stopped_while_its_files_are_written_leaves_the_previous_one_whole(
    planted_run, tmp_path, monkeypatch
) -> None:
    """The files were written one by one into the report folder: a kill -9 after the first
    left the new CSV beside the previous run's JSON, page and summary, read as one report.
    They are written into a new folder, swapped in whole; one holding other files too (given
    from Python) is still written file by file, and those files stay."""
    import pytest

    from duplicates import report

    _, _, _, result = planted_run
    paths = report.write_report(result, tmp_path / "report")
    before = {key: path.read_bytes() for key, path in paths.items()}
    fewer = dataclasses.replace(result, groups=result.groups[:1])
    real, calls = report.atomic_write_text, []

    def killed_after_one(path, text):  # noqa: ANN001, ANN202
        calls.append(path)
        if len(calls) == 2:
            raise SystemExit("killed")
        real(path, text)

    monkeypatch.setattr(report, "atomic_write_text", killed_after_one)
    with pytest.raises(SystemExit):
        report.write_report(fewer, tmp_path / "report")
    assert {key: path.read_bytes() for key, path in paths.items()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["report"]  # nothing left beside it
    monkeypatch.setattr(report, "atomic_write_text", real)
    report.write_report(fewer, tmp_path / "report")
    assert paths["summary"].read_text().strip() == fewer.summary() != result.summary()
    (tmp_path / "report" / "notes.txt").write_text("mine")
    report.write_report(result, tmp_path / "report")
    assert (tmp_path / "report" / "notes.txt").read_text() == "mine"
    assert paths["summary"].read_text().strip() == result.summary()


def test_html_escapes_user_text(tmp_path) -> None:
    from duplicates.report import to_html

    evil = "<script>alert(1)</script>"
    group = DuplicateGroup(1, [member(evil, 2, 2, 3, label=evil), member("b", 1, 1, 1, "x")], True)
    html = to_html(DuplicateResult([group], 2, [], 0.9))
    assert evil not in html and "&lt;script&gt;" in html


def test_csv_cells_a_spreadsheet_would_run_as_formulas_are_quoted_text() -> None:
    """A photo named '=HYPERLINK("http://x";"open").jpg' was written as is: a spreadsheet
    opening duplicates.csv ran it."""
    from duplicates.report import to_csv

    evil = '=HYPERLINK("http://x.example";"open")'
    group = DuplicateGroup(
        1, [member(evil, 2, 2, 3, label="+1+2"), member("@b", 1, 1, 1, "-x")], False
    )
    rows = list(csv.DictReader(io.StringIO(to_csv(DuplicateResult([group], 2, [], 0.9)))))
    assert [r["id"] for r in rows] == ["'" + evil, "'@b"]
    assert rows[0]["label"] == "'+1+2" and rows[1]["label"] == "'-x"
    plain = DuplicateGroup(2, [member("a", 2, 2, 3), member("b", 1, 1, 1)], False)
    assert [
        r["id"] for r in csv.DictReader(io.StringIO(to_csv(DuplicateResult([plain], 2, [], 0.9))))
    ] == ["a", "b"]


def test_a_report_folder_that_cannot_be_swapped_is_written_file_by_file(
    planted_run, tmp_path, monkeypatch
) -> None:
    """`--out .` failed after the work (the working folder cannot be renamed), and so did a
    mount point (EBUSY): nothing was written."""
    import errno

    from duplicates import report

    _, _, _, result = planted_run
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    paths = report.write_report(result, ".")
    assert paths["summary"].read_text().strip() == result.summary()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["here"]  # no folder left beside it

    def busy(*args):  # noqa: ANN002, ANN202
        raise OSError(errno.EBUSY, "Device or resource busy")

    monkeypatch.setattr(report, "swap_folder", busy)
    fewer = dataclasses.replace(result, groups=result.groups[:1])
    paths = report.write_report(fewer, tmp_path / "mounted")
    assert paths["summary"].read_text().strip() == fewer.summary()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["here", "mounted"]


def test_the_gallery_page_is_bounded_and_names_the_csv_for_the_rest() -> None:
    """One group of 1,000 reposts made a page of every photo, each decoded for a thumbnail."""
    from duplicates.report import CSV_NAME, FAILED_NAME, to_html
    from embedder.batch import Failure

    big = DuplicateGroup(1, [member(f"big-{i}", 2, 2, 3) for i in range(1000)], False)
    pairs = [
        DuplicateGroup(2 + g, [member(f"p{g}a", 1, 1, 1), member(f"p{g}b", 1, 1, 1)], False)
        for g in range(40)
    ]
    failures = [Failure(i, f"bad-{i}", "cannot decode") for i in range(30)]
    page = to_html(
        DuplicateResult([big, *pairs], 1080, failures, 0.9),
        max_members=50,
        max_images=100,
        max_failures=10,
    )
    assert page.count("<figure") == 100  # 50 of the big group, then 25 pairs
    assert "big-49<" in page and "big-50<" not in page
    assert f"950 more images of this group are listed in {CSV_NAME}" in page
    assert f"15 more groups are listed in {CSV_NAME}" in page
    assert page.count("<li>") == 10 and f"20 more are listed in {FAILED_NAME}" in page


def test_a_full_disk_while_the_report_is_written_leaves_the_previous_one_whole(
    planted_run, tmp_path, monkeypatch
) -> None:
    """Writing the new folder failed with ENOSPC, which was taken for a folder that cannot be
    swapped: the report was written file by file, and the disk took the new CSV and JSON
    beside the previous run's page and summary."""
    import errno

    import pytest

    from duplicates import report

    _, _, _, result = planted_run
    paths = report.write_report(result, tmp_path / "report")
    before = {key: path.read_bytes() for key, path in paths.items()}
    fewer = dataclasses.replace(result, groups=result.groups[:1])
    real_write = report.atomic_write_text
    page = len(report.to_html(fewer))  # the disk still takes the small files, not the page

    def disk_fills(path, text):  # noqa: ANN001, ANN202
        if len(text) >= page:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real_write(path, text)

    monkeypatch.setattr(report, "atomic_write_text", disk_fills)
    with pytest.raises(OSError, match="No space left"):
        report.write_report(fewer, tmp_path / "report")
    assert {key: path.read_bytes() for key, path in paths.items()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]  # no temporary folder


def test_a_thumbnail_the_machine_cannot_decode_is_left_out(tmp_path, monkeypatch) -> None:
    """Out of memory while decoding one photo for the report's thumbnail lost the whole run
    once that became a machine failure: a thumbnail is not worth it."""
    from common.errors import OutOfResourcesError
    from duplicates import report

    def exhausted(path):  # noqa: ANN001, ANN202
        raise OutOfResourcesError(f"{path}: the machine ran out of resources while reading it")

    monkeypatch.setattr(report, "load_image", exhausted)
    assert report._thumbnail_uri(str(tmp_path / "x.jpg"), 64) is None
