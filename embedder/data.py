"""Catalog inputs: a folder with one subfolder per class, or a CSV manifest (id,image,label,...)."""

from __future__ import annotations

import csv
import logging
import os
import stat
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from common.errors import describe_os_error
from common.fsutil import file_sha256
from common.item_ids import ID_RULES, MAX_ID_BYTES, is_catalog_id, is_item_id
from common.text import (
    allow_long_csv_cells,
    csv_rows,
    header_hint,
    is_uri,
    is_utf8,
    name_blank_columns,
    not_utf8_detail,
    repeated_columns,
    unnamed_value,
)
from embedder.errors import DataError

# HEIC/HEIF files are listed even without pillow-heif: load_image then says what to install.
IMAGE_SUFFIXES = frozenset(
    {
        *(".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".bmp", ".gif"),
        *(".tif", ".tiff", ".avif", ".heic", ".heif"),
    }
)
#: The suffixes as messages list them.
IMAGE_SUFFIX_LIST = ", ".join(sorted(IMAGE_SUFFIXES))
REQUIRED_COLUMNS = ("id", "image", "label")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sample:
    """One catalog image: a stable id, where the file is, its label ('' if unknown), metadata."""

    id: str
    path: Path
    label: str
    metadata: dict[str, str] = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class Catalog:
    """Samples in a stable order plus the sorted class names found in them."""

    samples: list[Sample]
    label_names: list[str]
    source: Path

    def __len__(self) -> int:
        return len(self.samples)


def is_image_name(path: Path) -> bool:
    """An image by its suffix, and not a hidden file."""
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def is_image_file(path: Path) -> bool:
    """An image file to read: an image name (:func:`is_image_name`) on a file, or on a broken
    link. Such a link is a listing whose photo is gone: it fails to read where it is read,
    and is listed with the other unreadable images (a training's skipped images, the
    ``failed`` of embed and export), as a catalog CSV row naming a missing file is; it had
    been left out of those with a warning alone."""
    if not is_image_name(path):
        return False
    if path.is_file():
        return True
    if not path.is_symlink():
        return False
    try:
        path.resolve(strict=True)
    except FileNotFoundError:
        return True  # it points nowhere: read as an unreadable image
    except (OSError, RuntimeError):  # a loop (RuntimeError before Python 3.13): no listing
        log.warning("%s: skipped, a link that loops", path)
    return False


def image_files(folder: Path) -> list[Path]:
    """The image files under ``folder``, sorted. Hidden files and folders are passed over. A
    linked folder inside it is not followed but named in a warning (it had been passed over
    without a word): a link back into the catalog would read its photos twice, under another
    label, and which of the two came first would depend on the file system's order. A file
    that looks like a photo but is not read (saved without a suffix, a photo format this
    project refuses) is counted in one warning; other files (a README, a PDF) only in the
    debug log."""
    found, skipped, links, special = [], [], [], []
    unreadable: list[OSError] = []
    for top, folders, names in os.walk(folder, onerror=unreadable.append):
        folders[:] = sorted(f for f in folders if not f.startswith("."))
        links += [Path(top) / f for f in folders if os.path.islink(os.path.join(top, f))]
        _sort_files([Path(top) / name for name in names], found, skipped, special)
    if unreadable:  # os.walk passes over them without a word: their photos were just absent
        log.warning(
            "%s: %d folder(s) could not be read and were skipped, such as %s",
            folder,
            len(unreadable),
            describe_os_error(unreadable[0]),
        )
    _report_special(folder, special)
    if links:
        log.warning(
            "%s: %d linked folder(s) not followed, such as '%s' (a link back into the catalog "
            "would read its photos twice); give the photos' own folder, or copy them in",
            folder,
            len(links),
            links[0].relative_to(folder),
        )
    _report_skipped(folder, sorted(skipped))
    return sorted(found)


def _sort_files(paths: list[Path], found: list, skipped: list, special: list) -> None:
    """Put each of a folder's files in its list: an image to read, a file skipped (warned of
    when it looks like a photo), or a photo name that is no regular file."""
    for path in paths:
        if is_image_file(path):
            found.append(path)
        elif not path.name.startswith(".") and not is_image_name(path) and path.is_file():
            skipped.append(path)
        elif is_image_name(path) and path.exists() and not path.is_file():
            special.append(path)  # a FIFO or a device: a read would wait on it for ever


def _report_special(folder: Path, special: list[Path]) -> None:
    if special:
        log.warning(
            "%s: %d photo name(s) that are not regular files (a FIFO, a device) skipped, such "
            "as '%s'",
            folder,
            len(special),
            special[0].relative_to(folder),
        )


#: Photo formats a listing may hold that this project does not read: warned of when skipped.
UNREAD_PHOTO_SUFFIXES = frozenset(
    {".psd", ".ico", ".dds", ".jp2", ".j2k", ".jxl", ".tga", ".pcx", ".ppm", ".pgm", ".pbm"}
    | {".dng", ".cr2", ".cr3", ".nef", ".arw", ".orf", ".rw2", ".raf"}
)
#: How JPEG, PNG, GIF and WebP files begin: a file without a suffix that starts so is a photo.
_PHOTO_MAGIC = (b"\xff\xd8\xff", b"\x89PNG", b"GIF8")


def _looks_like_photo(path: Path) -> bool:
    if path.suffix:
        return path.suffix.lower() in UNREAD_PHOTO_SUFFIXES
    try:
        with path.open("rb") as fh:
            head = fh.read(12)
    except OSError:
        return False
    return head.startswith(_PHOTO_MAGIC) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")


def _report_skipped(folder: Path, skipped: list[Path]) -> None:
    """Warn of the skipped files that look like photos; log the others for debugging."""
    maybe = [p for p in skipped if _looks_like_photo(p)]
    if maybe:
        log.warning(
            "%s: %d file(s) skipped, not images by name (such as '%s'; an image's name ends in %s)",
            folder,
            len(maybe),
            maybe[0].relative_to(folder),
            IMAGE_SUFFIX_LIST,
        )
    if len(skipped) > len(maybe):
        log.debug("%s: %d other file(s) skipped", folder, len(skipped) - len(maybe))


def path_ids(paths: list[Path], root: Path) -> list[str]:
    """Ids of image files: the path below ``root`` without its suffix (``huawei/p30``), in
    Unicode's composed form (NFC, see :func:`nfc`).

    Where two files differ only by suffix (``x.jpg`` and ``x.png``), both keep their suffix, so
    ids stay unique and every row of an export or index maps back to one file. So does a file
    whose id would be another URL of the API (``xiaomi/image.jpg``, not ``xiaomi/image``, the
    URL of item ``xiaomi``'s thumbnail; see :func:`common.item_ids.is_item_id`).
    """
    stems = [nfc(p.relative_to(root).with_suffix("").as_posix()) for p in paths]
    counts = Counter(stems)
    ids = [
        stem if counts[stem] == 1 and is_item_id(stem) else nfc(p.relative_to(root).as_posix())
        for stem, p in zip(stems, paths, strict=True)
    ]
    # x.jpg, x.png and x.jpg.png would still clash ("x.jpg" twice): refuse rather than guess.
    clash = next((i for i, n in Counter(ids).items() if n > 1), None)
    if clash is not None:
        raw = {
            p.relative_to(root).as_posix() for p, i in zip(paths, ids, strict=True) if i == clash
        }
        forms = (
            " (their names differ only in Unicode form: one composed, one decomposed as "
            "macOS writes names)"
            if len(raw) > 1 and len({nfc(r) for r in raw}) == 1
            else ""
        )
        raise DataError(f"{root}: two images would get the id '{clash}'{forms}; rename one")
    _warn_unindexable(root, ids, "image name(s)", "rename those photos")
    return ids


def nfc(name: str) -> str:
    """A name the file system gave, in Unicode's composed form (NFC), as it is typed: macOS
    writes file names decomposed (NFD), and a catalog made there had read "Café" as another
    class, and "café/1" as another id, than the same names typed or copied elsewhere."""
    return unicodedata.normalize("NFC", name)


def _look_alike_key(label: str) -> str:
    """``label`` without what a reader cannot see: case, Unicode form and compatibility
    variants (NFKC), invisible format characters, outer and repeated spaces."""
    folded = unicodedata.normalize("NFKC", label).casefold()
    visible = "".join(c for c in folded if unicodedata.category(c) != "Cf")
    return " ".join(visible.split())


def _warn_look_alike_labels(source: Path, labels: list[str]) -> None:
    """Classes whose names differ only where a reader cannot tell ("Apple"/"apple", a trailing
    or no-break space, a zero-width character) train as separate classes: said, once."""
    groups: dict[str, set[str]] = {}
    for label in labels:
        groups.setdefault(_look_alike_key(label), set()).add(label)
    alike = [sorted(g) for g in groups.values() if len(g) > 1]
    if alike:
        shown = "; ".join(" / ".join(repr(label) for label in g) for g in alike[:3])
        log.warning(
            "%s: %d set(s) of class names look alike but differ (case, spaces, invisible "
            "characters or Unicode form): %s%s; each trains as a class of its own: give each "
            "class one spelling",
            source, len(alike), shown, "; ..." if len(alike) > 3 else "",
        )  # fmt: skip


def _warn_unindexable(source: Path, ids: list[str], what: str, fix: str) -> None:
    """Say now, not after the whole embedding when `index build` refuses the file, which ids
    cannot be catalog items."""
    bad = [i for i in ids if not is_catalog_id(i)]
    if bad:
        log.warning(
            "%s: %d %s cannot be catalog item ids (%s%s; an id must be %s, at most %d bytes): "
            "`phonesim index build` refuses a file holding them; %s",
            source,
            len(bad),
            what,
            ", ".join(repr(i[:40]) for i in bad[:3]),
            ", ..." if len(bad) > 3 else "",
            ID_RULES,
            MAX_ID_BYTES,
            fix,
        )


def _from_folder(root: Path, require_labels: bool) -> list[Sample]:
    entries = sorted(root.iterdir())
    class_dirs = [
        p for p in entries if p.is_dir() and not p.name.startswith(".") and not _links_back(p, root)
    ]
    # The top level's files are sorted as a class folder's are: those skipped are said too.
    loose: list[Path] = []
    skipped: list[Path] = []
    special: list[Path] = []
    _sort_files([p for p in entries if not p.is_dir()], loose, skipped, special)
    _report_special(root, special)
    _report_skipped(root, skipped)
    if not class_dirs:
        if loose and not require_labels:
            loose = text_named(loose)
            return [
                Sample(id=i, path=p, label="")
                for i, p in zip(path_ids(loose, root), loose, strict=True)
            ]
        if not require_labels:  # a flat folder of images is fine here: say what was missing
            raise DataError(
                f"{root}: no images in it (an image's name ends in {IMAGE_SUFFIX_LIST})"
            )
        raise DataError(
            f"{root}: no class folders found (expected one subfolder of images per class, "
            "or a CSV manifest)"
        )
    if loose and require_labels:
        raise DataError(
            f"{root}: {len(loose)} image(s) beside the class folders (such as "
            f"'{loose[0].name}') have no class; move each into its class folder"
        )
    # Unlabelled reading (embed, export, index) takes every image: the top level's without a
    # label, and an empty subfolder (thumbs/) is no class, just nothing to read.
    images, labels = list(loose), [""] * len(loose)
    forms = Counter(nfc(d.name) for d in class_dirs)
    twins = sorted(name for name, n in forms.items() if n > 1)
    if twins:  # made on macOS and elsewhere, or copied between them
        log.warning(
            "%s: class folder(s) %s appear twice, written in two Unicode forms (composed, and "
            "decomposed as macOS writes names): each pair is read as one class",
            root, ", ".join(repr(t) for t in twins),
        )  # fmt: skip
    for class_dir in class_dirs:
        found = image_files(class_dir)
        if not found and require_labels:
            raise DataError(f"{class_dir}: class '{class_dir.name}' has no images")
        images += found
        labels += [nfc(class_dir.name)] * len(found)
    kept = set(text_named(images))
    labels = [label for p, label in zip(images, labels, strict=True) if p in kept]
    images = [p for p in images if p in kept]
    if not images:
        raise DataError(f"{root}: no images in it or its subfolders")
    return [
        Sample(id=i, path=p, label=label)
        for i, p, label in zip(path_ids(images, root), images, labels, strict=True)
    ]


def _links_back(class_dir: Path, root: Path) -> bool:
    """Whether ``class_dir`` is a link to the catalog folder, into it or above it (skipped,
    with a warning): its photos would be read twice under another label, or a whole parent
    folder read (a link to / walked the file system). A link elsewhere is a class folder."""
    if not class_dir.is_symlink():
        return False
    target, home = class_dir.resolve(), root.resolve()
    inside = home in target.parents
    if inside and any(part.startswith(".") for part in target.relative_to(home).parts):
        return False  # into a hidden folder, which is never read otherwise: no photo twice
    if target == home or target in home.parents or inside:
        log.warning(
            "%s: skipped, a link to %s, %s the catalog folder (its photos would be read "
            "twice); give the photos' own folder, or copy them in",
            class_dir,
            target,
            "inside" if inside else "the same as or above",
        )
        return True
    return False


def shared_images(a: list[Sample], b: list[Sample]) -> set[Path]:
    """The images of ``a`` that ``b`` holds too: the same file, or a byte-identical copy under
    another name (a copied folder finds itself just as well). Only files of a size both lists
    hold are read, so two folders of different photos cost one ``stat`` per file."""
    a_paths = {s.path.resolve() for s in a}
    b_paths = {s.path.resolve() for s in b}
    shared = a_paths & b_paths
    a_sizes, b_sizes = _by_size(a_paths - shared), _by_size(b_paths - shared)
    for size in a_sizes.keys() & b_sizes.keys():
        b_digests = {_digest(p) for p in b_sizes[size]} - {None}
        shared.update(p for p in a_sizes[size] if _digest(p) in b_digests)
    return shared


def _by_size(paths: set[Path]) -> dict[int, list[Path]]:
    """The regular files with content among ``paths``, by size: a FIFO (size 0) would wait
    for a writer for ever when read, and what cannot be read is the embedding's to report."""
    sizes: dict[int, list[Path]] = {}
    for path in paths:
        try:
            info = path.stat()
        except OSError:
            continue
        if stat.S_ISREG(info.st_mode) and info.st_size > 0:
            sizes.setdefault(info.st_size, []).append(path)
    return sizes


def _digest(path: Path) -> str | None:
    try:
        return file_sha256(path)
    except OSError:
        return None


def text_named(paths: list[Path]) -> list[Path]:
    """The ``paths`` whose names are text: a name of bytes that are not UTF-8 (written on
    another system) can be neither an id nor a line of a report, so it is left out, named in
    a warning with its bytes escaped."""
    bad = [p for p in paths if not is_utf8(str(p))]
    if bad:
        shown = ", ".join(repr(os.fsencode(p))[2:-1] for p in bad[:3])  # the bytes: b'..'
        more = ", ..." if len(bad) > 3 else ""
        log.warning(
            "%d image(s) left out: their file names are not UTF-8 text (%s%s); rename them to "
            "read them",
            len(bad),
            shown,
            more,
        )
    return [p for p in paths if is_utf8(str(p))]


def _from_manifest(csv_path: Path, require_labels: bool) -> list[Sample]:
    try:
        with csv_path.open(newline="", encoding="utf-8-sig") as fh:
            allow_long_csv_cells()
            reader = csv.DictReader(fh, strict=True)
            columns = reader.fieldnames or []
            # Unlabelled reading (embed, export, duplicates) needs no label column.
            required = REQUIRED_COLUMNS if require_labels else REQUIRED_COLUMNS[:2]
            missing = [c for c in required if c not in columns]
            if missing:
                raise DataError(
                    f"{csv_path}: manifest is missing column(s) {', '.join(missing)} "
                    f"(needs {','.join(required)}; found {','.join(columns) or 'none'})"
                    + header_hint(list(columns))
                )
            repeated = repeated_columns(list(columns))
            if repeated:
                raise DataError(f"{csv_path}: column(s) {repeated} appear twice in the header")
            reader.fieldnames = name_blank_columns(list(columns))
            rows = list(csv_rows(reader))
    except UnicodeDecodeError as exc:
        detail = not_utf8_detail(csv_path) or exc.reason
        raise DataError(f"{csv_path}: manifest is not UTF-8 text ({detail})") from exc
    except csv.Error as exc:
        raise DataError(f"{csv_path}: malformed CSV ({exc})") from exc
    samples: list[Sample] = []
    seen: set[str] = set()
    urls: list[str] = []
    for line, row in rows:
        if None in row:  # as `index build` reads the same file
            raise DataError(f"{csv_path}:{line}: more fields than the header has")
        unnamed = unnamed_value(row)
        if unnamed is not None:  # as `index build` refuses it, before a long embedding run
            raise DataError(
                f"{csv_path}:{line}: value {unnamed[:40]!r} is in a column without a name"
            )
        sid, image, label = (str(row.get(c) or "").strip() for c in REQUIRED_COLUMNS)
        if not sid or not image:
            raise DataError(f"{csv_path}:{line}: empty id or image")
        if any(c in "\0\r\n" for c in sid + image):
            raise DataError(f"{csv_path}:{line}: NUL or line break in id or image")
        if sid in seen:
            raise DataError(f"{csv_path}:{line}: duplicate id '{sid}'")
        if require_labels and not label:
            raise DataError(f"{csv_path}:{line}: empty label (training needs a label per image)")
        seen.add(sid)
        if is_uri(image):
            urls.append(image)
        meta = {k: (v or "") for k, v in row.items() if k is not None}
        samples.append(Sample(id=sid, path=(csv_path.parent / image), label=label, metadata=meta))
    _warn_unindexable(csv_path, [s.id for s in samples], "id(s)", "change them in the CSV")
    if urls:  # each would fail as "<folder>/https:/...: file not found", the URL mangled
        log.warning(
            "%s: %d image(s) are URLs (such as '%s'), which are not fetched: download the "
            "photos and give their file paths",
            csv_path,
            len(urls),
            urls[0],
        )
    return samples


def load_catalog(path: str | Path, require_labels: bool = True, min_classes: int = 2) -> Catalog:
    """Read a catalog from a class-folder tree or a CSV manifest.

    With ``require_labels=False`` a flat folder of images (no classes) or blank manifest
    labels are accepted, for embedding and duplicate detection. Training data needs two
    classes; evaluation data (``min_classes=1``) may hold one.
    """
    root = Path(path)
    if not root.exists():
        raise DataError(f"{root}: no such file or folder")
    if root.is_dir():
        samples = _from_folder(root, require_labels)
    elif root.suffix.lower() == ".csv":
        samples = _from_manifest(root, require_labels)
    else:
        raise DataError(f"{root}: expected a folder of class subfolders or a .csv manifest")
    if not samples:
        raise DataError(f"{root}: no images found")
    label_names = sorted({s.label for s in samples if s.label})
    _warn_look_alike_labels(root, label_names)
    if require_labels and len(label_names) < min_classes:
        raise DataError(f"{root}: found {len(label_names)} class(es); needs at least {min_classes}")
    return Catalog(samples=samples, label_names=label_names, source=root)
