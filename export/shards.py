"""Writer stage 1: crash-safe progress as immutable shard files in ``<out>.partial/``.

An HDF5 file that is killed mid-write can be left unreadable, so progress is never kept in one
growing file. Each shard (the results of ``shard_size`` consecutive inputs) is written to a
temporary name, fsynced and renamed (``common.fsutil.atomic_write``); a rename either happened
or did not. A re-run checks that
the checkpoint and the input list are the same, and that no image file of a committed shard
changed since it was embedded (each shard records its inputs' size and modification time),
deletes torn temporary files and continues after the last shard, so every input ends up in
exactly one shard.
"""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import h5py
import numpy as np

from common.fsutil import (
    TMP_SUFFIX,
    atomic_write,
    atomic_write_text,
    discard_folder,
    fsync_dir,
    is_temporary,
    remove_discarded,
)
from embedder.data import Sample
from export.errors import ExportError, ResumeError
from export.mapper import FeatureBatch
from export.reader import file_stamps
from export.schema import STR

log = logging.getLogger(__name__)

PARTIAL_FORMAT = "phonesim-features-partial"
PARTIAL_VERSION = 1
MANIFEST = "progress.json"
SHARD_GLOB = "shard-*.h5"
#: Per input of a shard: its file's (size, mtime_ns) when it was embedded.
STAMPS = "file_stamps"
_SHARD_NAME = re.compile(r"shard-\d{12}\.h5")
_SHARD_TMP = re.compile(r"\.shard-\d{12}\.h5\..+" + re.escape(TMP_SUFFIX))


@dataclass(frozen=True)
class JobIdentity:
    """What the shards were computed from; a resume must match it exactly."""

    checkpoint_hash: str
    model_name: str
    dim: int
    num_classes: int
    inputs_fingerprint: str
    inputs_count: int
    #: "fp32" or "int8" (runtime onnx-int8): the two must not mix in one file.
    precision: str = "fp32"
    #: The text reading the probabilities include (JSON of its setting and words), "" for none.
    text: str = ""


def partial_path(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


@dataclass(frozen=True)
class ShardInfo:
    path: Path
    input_start: int
    input_end: int
    rows: int
    failed: int
    #: The runtime that embedded the shard ("" in shards written before it was recorded).
    runtime: str = ""
    #: Widths of its embeddings and probabilities (checked against the job on resume).
    dim: int = 0
    classes: int = 0


def _width(array: h5py.Dataset | np.ndarray) -> int:
    """The columns of a 2-D dataset or array (0 for any other shape)."""
    return int(array.shape[1]) if len(array.shape) == 2 else 0


def _read_shard_info(path: Path) -> ShardInfo:
    try:
        with h5py.File(path, "r") as h5:
            return ShardInfo(
                path,
                int(h5.attrs["input_start"]),
                int(h5.attrs["input_end"]),
                int(h5["embeddings"].shape[0]),
                int(h5["failed/ids"].shape[0]),
                str(h5.attrs.get("runtime", "")),
                *(_width(h5[name]) for name in ("embeddings", "probabilities")),
            )
    except (OSError, KeyError) as exc:
        raise ResumeError(
            f"{path}: unreadable shard ({exc}); delete {path.parent} (or pass --restart) "
            "to start the export over"
        ) from exc


class PartialDir:
    """The ``<out>.partial`` folder: a manifest naming the job plus the committed shards."""

    def __init__(self, path: Path, identity: JobIdentity, shards: list[ShardInfo]) -> None:
        self.path = path
        self.identity = identity
        self.shards = shards

    @property
    def cursor(self) -> int:
        """Inputs already committed: the next run starts at this position."""
        return self.shards[-1].input_end if self.shards else 0

    @classmethod
    def open(cls, out: Path, identity: JobIdentity, restart: bool = False) -> PartialDir:
        """Create the folder, or reopen it to resume after checking it belongs to this job."""
        path = partial_path(out)
        manifest = path / MANIFEST
        remove_discarded(path)  # what a run killed while deleting its progress left
        if path.exists() and not manifest.is_file():
            _refuse_unless_own_leftovers(path, out.name, restart)
        if path.exists() and restart:
            log.info("discarding previous progress in %s", path)
            discard_folder(path)
        if not path.exists():
            path.mkdir()
            try:
                _write_json(
                    manifest,
                    {"format": PARTIAL_FORMAT, "version": PARTIAL_VERSION, **asdict(identity)},
                )
            except BaseException:  # a full disk: an empty folder had blocked the next run
                path.rmdir()
                raise
            fsync_dir(path.parent)
            return cls(path, identity, [])
        _check_manifest(manifest, identity)
        for tmp in path.glob(f"*{TMP_SUFFIX}"):
            log.info("removing torn file %s from an interrupted run", tmp.name)
            tmp.unlink()
        shards = [_read_shard_info(p) for p in sorted(path.glob(SHARD_GLOB))]
        expected = 0
        for shard in shards:
            widths = (shard.dim, shard.classes)
            if shard.rows and widths != (identity.dim, identity.num_classes):
                raise ResumeError(
                    f"{shard.path}: holds {shard.dim}-d embeddings and {shard.classes} class "
                    f"probabilities where the job makes {identity.dim} and "
                    f"{identity.num_classes}; pass --restart to start over"
                )
            if shard.input_start != expected:
                raise ResumeError(
                    f"{shard.path}: starts at input {shard.input_start}, expected {expected}; "
                    f"progress in {path} is inconsistent, pass --restart to start over"
                )
            expected = shard.input_end
        if shards:
            log.info(
                "resuming: %d of %d inputs already exported in %d shard(s)",
                expected,
                identity.inputs_count,
                len(shards),
            )
        return cls(path, identity, shards)

    def commit(
        self,
        input_start: int,
        input_end: int,
        ids: list[str],
        labels: list[str],
        embeddings: np.ndarray,
        probabilities: np.ndarray,
        failures: list[tuple[str, str]],
        runtime: str = "",
        stamps: np.ndarray | None = None,
    ) -> ShardInfo:
        """Write one shard atomically (temp name, fsync, rename, fsync folder).

        ``stamps``: (size, mtime_ns) of every input's file in ``[input_start, input_end)``,
        which a resume compares with the files then (None: not recorded)."""
        if input_start != self.cursor:
            raise RuntimeError(f"shard starts at {input_start}, cursor is {self.cursor}")
        final = self.path / f"shard-{input_start:012d}.h5"
        image = _shard_bytes(
            {"input_start": input_start, "input_end": input_end, "runtime": runtime},
            ids,
            labels,
            embeddings,
            probabilities,
            failures,
            stamps,
        )
        try:
            atomic_write(final, lambda tmp: tmp.write_bytes(image))
        except OSError as exc:  # a full disk: name the shard, not its random temporary name
            raise OSError(exc.errno, exc.strerror, str(final)) from None
        info = ShardInfo(
            final,
            input_start,
            input_end,
            len(ids),
            len(failures),
            runtime,
            _width(embeddings),
            _width(probabilities),
        )
        self.shards.append(info)
        return info

    def runtime(self) -> str:
        """The runtime that embedded the committed shards ("torch+onnx" where a resume
        changed it; "" where no shard recorded one)."""
        return "+".join(dict.fromkeys(s.runtime for s in self.shards if s.runtime))

    def check_files_unchanged(self, samples: Sequence[Sample]) -> None:
        """Refuse to resume when an image file of a committed shard changed (size or
        modification time) since it was embedded: its row would keep the old image's embedding.
        Shards written before the files were recorded cannot be checked."""
        changed: list[int] = []
        unrecorded = 0
        for shard in self.shards:
            recorded = _read_stamps(shard)
            if recorded is None:
                unrecorded += 1
                continue
            now = file_stamps(samples[shard.input_start : shard.input_end])
            differ = np.flatnonzero((recorded != now).any(axis=1))
            changed.extend(int(i) + shard.input_start for i in differ)
        if unrecorded:
            log.warning(
                "%s: %d shard(s) from an older phonesim do not record their image files; a "
                "file changed since then is not noticed (--restart embeds everything again)",
                self.path,
                unrecorded,
            )
        if changed:
            first = samples[changed[0]]
            files = len({samples[i].path for i in changed})  # rows may share a file
            raise ResumeError(
                f"{self.path}: {files} image file(s) changed since the export that "
                "embedded them read them (size or modification time), such as "
                f"{first.id!r} ({first.path}); pass --restart to embed everything again, or "
                "put the files back to resume"
            )

    def remove(self) -> None:
        """Delete the folder: renamed away in one step first, so that a kill while its files
        are deleted cannot leave shards without their progress.json (which blocked re-runs)."""
        discard_folder(self.path)


def _shard_bytes(
    attrs: dict[str, object],
    ids: list[str],
    labels: list[str],
    embeddings: np.ndarray,
    probabilities: np.ndarray,
    failures: list[tuple[str, str]],
    stamps: np.ndarray | None,
) -> bytes:
    """One shard as HDF5 bytes, made in memory. h5py never writes a shard to disk: on a full
    disk its close failed, and closing the file's datasets again then crashed the process
    (segmentation fault, h5py 3.16); a plain write of these bytes fails with a clean OSError."""
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as h5:
        h5.attrs.update(attrs)
        h5.create_dataset("ids", data=np.array(ids, dtype=object), dtype=STR)
        # Kept for older versions; the file takes the labels of the inputs it is assembled for.
        h5.create_dataset("labels", data=np.array(labels, dtype=object), dtype=STR)
        h5.create_dataset("embeddings", data=embeddings, dtype="f4")
        h5.create_dataset("probabilities", data=probabilities, dtype="f4")
        for name, column in (("failed/ids", 0), ("failed/reasons", 1)):
            values = np.array([f[column] for f in failures], dtype=object)
            h5.create_dataset(name, data=values, dtype=STR)
        if stamps is not None:
            h5.create_dataset(STAMPS, data=stamps, dtype="i8")
    return buffer.getvalue()


def _read_stamps(shard: ShardInfo) -> np.ndarray | None:
    """The (size, mtime_ns) a shard recorded per input, None where it recorded none."""
    try:
        with h5py.File(shard.path, "r") as h5:
            if STAMPS not in h5:
                return None
            stamps = h5[STAMPS][()]
    except OSError as exc:
        raise ResumeError(
            f"{shard.path}: unreadable shard ({exc}); pass --restart to start the export over"
        ) from exc
    if stamps.shape != (shard.input_end - shard.input_start, 2):
        raise ResumeError(
            f"{shard.path}: records {stamps.shape[0]} image files for "
            f"{shard.input_end - shard.input_start} inputs; pass --restart to start over"
        )
    return stamps


def is_export_file(name: str, out_name: str) -> bool:
    """Whether a file named ``name`` in ``<out>.partial/`` is one an export writes there: its
    manifest, a shard, or the temporary file of either or of the assembled output."""
    if name == MANIFEST or _SHARD_NAME.fullmatch(name):
        return True
    if _SHARD_TMP.fullmatch(name):
        return True
    return is_temporary(name, MANIFEST) or is_temporary(name, out_name)


def _is_own_file(entry: Path, out_name: str) -> bool:
    plain_file = entry.is_file() and not entry.is_symlink()
    return plain_file and is_export_file(entry.name, out_name)


def _refuse_unless_own_leftovers(path: Path, out_name: str, restart: bool) -> None:
    """A progress folder without its manifest: ``--restart`` may clear it when it holds only
    files an export writes (a run stopped while deleting it, or before naming its job);
    anything else may be someone's, and is never deleted."""
    if not path.is_dir() or path.is_symlink():
        raise ExportError(f"{path}: exists but is not an export in progress; move it away first")
    entries = list(path.iterdir())
    if not entries:  # a run whose first write failed (a full disk) left it: start afresh
        path.rmdir()
        return
    foreign = [e.name for e in entries if not _is_own_file(e, out_name)]
    if foreign:
        raise ExportError(
            f"{path}: exists but is not an export in progress (it holds {foreign[0]!r}, which "
            "no export writes); move it away first"
        )
    if not restart:
        raise ExportError(
            f"{path}: is not an export in progress: no {MANIFEST}, only {len(entries)} file(s) "
            "an export writes (left by a run stopped while deleting it); pass --restart to "
            "clear it"
        )


def _write_json(path: Path, data: dict) -> None:
    atomic_write_text(path, json.dumps(data, indent=2))


def _check_manifest(manifest: Path, identity: JobIdentity) -> None:
    try:
        data = json.loads(manifest.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ResumeError(f"{manifest}: unreadable ({exc}); pass --restart to start over") from exc
    if data.get("format") != PARTIAL_FORMAT or data.get("version") != PARTIAL_VERSION:
        raise ResumeError(f"{manifest}: written by another phonesim version; pass --restart")
    what = {
        "checkpoint_hash": "checkpoint",
        "inputs_fingerprint": "input list (ids or image paths)",
        "inputs_count": "number of inputs",
        "dim": "embedding dimension",
        "num_classes": "number of classes",
        "precision": "embedding precision (--runtime onnx-int8 or not)",
        "text": "text reading (--read-text and its settings)",
    }
    data.setdefault("precision", "fp32")  # unfinished exports from before runtimes existed
    data.setdefault("text", "")  # and from before the export read text
    for key, name in what.items():
        if data.get(key) != getattr(identity, key):
            raise ResumeError(
                f"{manifest.parent}: an unfinished export with a different {name} is there; "
                "rerun with the same --checkpoint and inputs to resume it, or pass --restart "
                "to discard it"
            )


class ShardWriter:
    """Buffers :class:`FeatureBatch` results and commits a shard every ``shard_size`` inputs.

    Memory is bounded by one shard, whatever the catalog size.
    """

    def __init__(self, partial: PartialDir, samples: list[Sample], shard_size: int) -> None:
        self.partial = partial
        self.samples = samples
        self.shard_size = shard_size
        self._start = partial.cursor
        self._end = partial.cursor
        self._indices: list[np.ndarray] = []
        self._emb: list[np.ndarray] = []
        self._probs: list[np.ndarray] = []
        self._failures: list[tuple[int, str]] = []
        # Taken before any input is read: a file replaced while its batch was read and
        # embedded (stamped after, it had recorded the new file beside the old photo's
        # embedding) then differs on a resume, which refuses it; one replaced before it was
        # read is refused as well, the safe side.
        self._first = partial.cursor
        self._before = file_stamps(samples[partial.cursor :])
        self.embedded = 0
        self.failed = 0
        self.runtime = ""  # the runtime embedding the batches: set once it is known

    def write(self, batch: FeatureBatch) -> None:
        if batch.start != self._end:
            raise RuntimeError(f"batch starts at input {batch.start}, expected {self._end}")
        self._indices.append(batch.indices)
        self._emb.append(batch.embeddings)
        self._probs.append(batch.probabilities)
        self._failures.extend(batch.failures)
        self._end = batch.end
        if self._end - self._start >= self.shard_size:
            self.flush()

    def flush(self) -> None:
        """Commit whatever is buffered as one shard."""
        if self._end == self._start:
            return
        indices = np.concatenate(self._indices) if self._indices else np.zeros(0, np.int64)
        dim, classes = self.partial.identity.dim, self.partial.identity.num_classes
        emb = np.concatenate(self._emb) if self._emb else np.zeros((0, dim), np.float32)
        probs = np.concatenate(self._probs) if self._probs else np.zeros((0, classes), np.float32)
        self.partial.commit(
            self._start,
            self._end,
            [self.samples[i].id for i in indices],
            [self.samples[i].label for i in indices],
            emb,
            probs,
            [(self.samples[i].id, reason) for i, reason in self._failures],
            self.runtime,
            self._before[self._start - self._first : self._end - self._first],
        )
        self.embedded += len(indices)
        self.failed += len(self._failures)
        self._start = self._end
        self._indices, self._emb, self._probs, self._failures = [], [], [], []
