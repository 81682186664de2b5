"""Writing a duplicate search to a report folder: CSV, JSON, an HTML gallery and a summary.

The gallery is self-contained (thumbnails inlined as base64 JPEG) so it can be mailed or opened
from anywhere; every text in it is HTML-escaped, since ids, paths and labels come from users.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import logging
import os
import shutil
import uuid
from pathlib import Path

from common.errors import OutOfResourcesError
from common.fsutil import (
    atomic_write_text,
    fsync_dir,
    is_temporary,
    replaced_path,
    swap_folder,
    temporary_folder,
)
from common.text import spreadsheet_cell
from duplicates.result import DuplicateResult
from embedder.batch import Failure
from embedder.errors import ImageError
from embedder.images import load_image

log = logging.getLogger(__name__)

CSV_NAME = "duplicates.csv"
JSON_NAME = "duplicates.json"
HTML_NAME = "duplicates.html"
FAILED_NAME = "failed.csv"
CATALOG_FAILED_NAME = "catalog_failed.csv"  # with --index: catalog items not compared
SUMMARY_NAME = "summary.txt"
# duplicates.json's schema (duplicates/README.md), raised when a key changes meaning or goes.
JSON_FORMAT = "phonesim-duplicates"
JSON_VERSION = 1
# Every file find writes into its --out folder (and all it may find there).
REPORT_FILES = (CSV_NAME, JSON_NAME, HTML_NAME, FAILED_NAME, CATALOG_FAILED_NAME, SUMMARY_NAME)
CSV_COLUMNS = (
    "group_id",
    "id",
    "path",
    "keep",
    "similarity",
    "label",
    "label_conflict",
    "source",
    "width",
    "height",
    "file_size",
)


def to_csv(result: DuplicateResult) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for g in result.groups:
        for k, m in enumerate(g.members):
            writer.writerow(
                [
                    g.group_id,
                    spreadsheet_cell(m.id),
                    spreadsheet_cell(str(m.path)),
                    int(k == 0),
                    f"{m.similarity:.4f}",
                    spreadsheet_cell(m.label),
                    int(g.label_conflict),
                    spreadsheet_cell(m.source),
                    m.width,
                    m.height,
                    m.file_size,
                ]
            )
    return buf.getvalue()


def to_json(result: DuplicateResult) -> dict:
    data: dict = {
        "format": JSON_FORMAT,
        "format_version": JSON_VERSION,
        "groups": [[m.id for m in g.members] for g in result.groups],
        # The CSV's group_id of each group: label_conflicts names groups by it, not by place.
        "group_ids": [g.group_id for g in result.groups],
        "keepers": [g.keeper.id for g in result.groups],
        "label_conflicts": [g.group_id for g in result.groups if g.label_conflict],
        "threshold": result.threshold,
        "score": result.score,
        "mode": result.mode,
        "summary": result.summary(),
        "failed": [{"id": f.id, "reason": f.reason} for f in result.failures],
    }
    if result.mode == "against":  # catalog candidates that could not be compared
        data["catalog_failed"] = [{"id": f.id, "reason": f.reason} for f in result.catalog_failures]
    if "timing" in result.extra:  # images/s of the descriptor stage, pairs/s of verification
        data["timing"] = result.extra["timing"]
    if "made_with" in result.extra:  # checkpoint, data, threshold source (the CLI's runs)
        data["made_with"] = result.extra["made_with"]
    if result.mode == "against":
        data["catalog"] = result.catalog
        data["matches"] = {
            m.id: [c.id for c in g.members if c.source == "catalog"]
            for g in result.groups
            for m in g.members
            if m.source == "input"
        }
    return data


def _thumbnail_uri(path: str, side: int) -> str | None:
    try:
        img = load_image(path)
    except ImageError as exc:
        log.debug("no thumbnail for %s: %s", path, exc)
        return None
    except OutOfResourcesError as exc:  # a thumbnail is not worth the run, but it is said
        log.warning("no thumbnail for %s in the report: %s", path, exc)
        return None
    img.thumbnail((side, side))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
.group{border:1px solid #ccc;border-radius:6px;margin:0 0 1em;padding:.6em}
.conflict{border-color:#d33;background:#fff6f6}
.members{display:flex;flex-wrap:wrap;gap:.6em}
figure{margin:0;width:170px;font-size:12px;word-break:break-all}
figure img{max-width:160px;max-height:160px;display:block;border:1px solid #ddd}
.keep img{border:3px solid #2a2}
.tag{display:inline-block;padding:0 .4em;border-radius:3px;background:#eee;margin-right:.3em}
.bad{background:#fdd}
"""


def to_html(
    result: DuplicateResult,
    thumb_side: int = 160,
    max_groups: int = 1000,
    max_members: int = 50,
    max_images: int = 5000,
    max_failures: int = 1000,
) -> str:
    """The gallery page. It shows at most ``max_members`` photos of a group, ``max_images``
    in all and ``max_failures`` of each failure list; the CSV files list everything. Without
    those bounds one group of a thousand reposts made a page of hundreds of MB, each photo
    decoded again for its thumbnail."""
    esc = html.escape
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>Duplicate listings</title>",
        f"<style>{_STYLE}</style></head><body>",
        "<h1>Duplicate listings</h1>",
        f"<p>{esc(result.summary())}</p>",
    ]
    if result.mode == "against":
        parts.append(f"<p>Checked against catalog index <code>{esc(result.catalog)}</code>.</p>")
    shown_groups = shown_images = 0
    for g in result.groups[:max_groups]:
        if shown_images >= max_images:
            break
        shown_groups += 1
        cls = "group conflict" if g.label_conflict else "group"
        head = f"Group {g.group_id}: {len(g.members)} images"
        if g.label_conflict:
            head += " - <span class='tag bad'>label conflict: " + esc(", ".join(g.labels))
            head += "</span>"
        parts.append(f"<div class='{cls}'><div>{head}</div><div class='members'>")
        members = g.members[: min(max_members, max_images - shown_images)]
        shown_images += len(members)
        for k, m in enumerate(members):
            uri = _thumbnail_uri(m.path, thumb_side) if m.path else None
            img = f"<img src='{uri}' alt='{esc(m.id)}'>" if uri else "<div>(no preview)</div>"
            role = "keep" if k == 0 else f"similarity {m.similarity:.3f}"
            parts.append(
                f"<figure class='{'keep' if k == 0 else ''}'>{img}<figcaption>"
                f"<span class='tag'>{esc(role)}</span><span class='tag'>{esc(m.source)}</span>"
                f"<br>{esc(m.id)}<br>label: {esc(m.label or '-')}<br>"
                f"{m.width}x{m.height}, {m.file_size:,} bytes</figcaption></figure>"
            )
        parts.append("</div>")
        if len(g.members) > len(members):
            more = len(g.members) - len(members)
            parts.append(f"<p>{more} more images of this group are listed in {CSV_NAME}.</p>")
        parts.append("</div>")
    if len(result.groups) > shown_groups:
        rest = len(result.groups) - shown_groups
        parts.append(f"<p>{rest} more groups are listed in {CSV_NAME}.</p>")
    if result.failures:
        parts.append(f"<h2>Unreadable images ({len(result.failures)})</h2><ul>")
        parts.extend(_failure_items(result.failures, max_failures, FAILED_NAME))
    if result.catalog_failures:
        parts.append(
            f"<h2>Catalog items not compared ({len(result.catalog_failures)})</h2>"
            "<p>These nearest catalog items could not be read, so a new listing may duplicate "
            "one of them unnoticed.</p><ul>"
        )
        parts.extend(_failure_items(result.catalog_failures, max_failures, CATALOG_FAILED_NAME))
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _failure_items(failures: list[Failure], limit: int, csv_name: str) -> list[str]:
    """The first ``limit`` failures as list items, a line naming the CSV for the rest, and
    the list's end."""
    items = [f"<li>{html.escape(f.id)}: {html.escape(f.reason)}</li>" for f in failures[:limit]]
    items.append("</ul>")
    if len(failures) > limit:
        items.append(f"<p>{len(failures) - limit} more are listed in {csv_name}.</p>")
    return items


def write_report(result: DuplicateResult, out: str | Path) -> dict[str, Path]:
    """Write every report file under ``out`` (created if needed); returns their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "csv": out / CSV_NAME,
        "json": out / JSON_NAME,
        "html": out / HTML_NAME,
        "failed": out / FAILED_NAME,
        "summary": out / SUMMARY_NAME,
    }
    # Every file is rendered before any is replaced: a failure or Ctrl-C while rendering (the
    # HTML page is the slow one) leaves the previous report whole, not half old, half new.
    texts = {
        "csv": to_csv(result),
        "json": json.dumps(to_json(result), indent=2) + "\n",
        "html": to_html(result),
        "failed": _failures_csv(result.failures),
        "summary": result.summary() + "\n",
    }
    if result.mode == "against":
        paths["catalog_failed"] = out / CATALOG_FAILED_NAME
        texts["catalog_failed"] = _failures_csv(result.catalog_failures)
    # Replaced in one step: a kill between two files had left the new CSV beside the old
    # JSON, HTML and summary, read as one report.
    if _holds_only_a_report(out) and _swap_in(out, {paths[k].name: t for k, t in texts.items()}):
        return paths
    # A folder holding other files too (given from Python), or one that cannot be swapped (the
    # working folder, a mount point): file by file.
    if result.mode != "against":  # an earlier --index report's list would read as this one's
        (out / CATALOG_FAILED_NAME).unlink(missing_ok=True)
    for key, text in texts.items():
        atomic_write_text(paths[key], text)
    return paths


def _holds_only_a_report(out: Path) -> bool:
    """Whether ``out`` holds report files alone (and temporaries of them), or nothing."""
    return all(
        p.name in REPORT_FILES or any(is_temporary(p.name, name) for name in REPORT_FILES)
        for p in out.iterdir()
    )


def _swap_in(out: Path, texts: dict[str, str]) -> bool:
    """Write the report's files into a new folder and exchange it with ``out``; False (and
    nothing changed) where ``out`` cannot be replaced: the working folder or one holding it
    (``--out .`` had failed after the work, and a shell would be left in a deleted folder), a
    mount point (a container's volume), or a rename the system refuses."""
    dest = replaced_path(out).resolve()  # a link: the folder it names
    cwd = Path.cwd().resolve()
    if cwd == dest or dest in cwd.parents or os.path.ismount(dest):
        return False
    tmp = temporary_folder(dest, "writing-")
    try:
        # A write failing here (a full disk) is an error: written file by file instead, it
        # left a report of new CSV/JSON beside the old run's HTML and summary.
        for name, text in texts.items():
            atomic_write_text(tmp / name, text)
        fsync_dir(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        swap_folder(tmp, dest, dest.parent / f".{dest.name}.old-{uuid.uuid4().hex[:12]}")
    except OSError as exc:  # EBUSY, EXDEV...: swap_folder left the old folder in place
        log.info("%s: written file by file (the folder cannot be swapped: %s)", out, exc)
        shutil.rmtree(tmp, ignore_errors=True)
        return False
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return True


def _failures_csv(failures: list) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["id", "reason"])
    writer.writerows([spreadsheet_cell(f.id), spreadsheet_cell(f.reason)] for f in failures)
    return buf.getvalue()
