"""The lookup service: an embedder and a catalog index wired together behind a micro-batcher.

This is the only object the views talk to; it knows nothing about HTTP beyond raising
:class:`~server.errors.ApiError` for conditions a client caused.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from common.fsutil import atomic_write
from common.kept_images import kept_image, new_image_path
from common.stamps import phonesim_version
from common.text import is_uri
from embedder.class_rerank import DEFAULT_POOL as RERANK_POOL
from embedder.class_rerank import ClassRerank, rerank_order
from embedder.images import load_image
from embedder.inference import Embedder
from embedder.knn_vote import KnnFusion, fuse_with_neighbours, neighbour_arrays
from embedder.text_cues import apply_text_cues, unsure
from embedder.text_reader import ReaderBusy, TextEvidence, TextOptions, reading_copy
from index.build import labels_unknown
from index.catalog import CatalogIndex, Hit, Item
from index.errors import DuplicateIdError, StoreOutcomeUnknownError, UnknownIdError
from server.batcher import Arrival, BatchResult, MicroBatcher, OverloadedError, model_result
from server.config import ServerConfig
from server.errors import ApiError
from server.files import declared_pixels
from server.follower import IndexFollower
from server.limits import MAX_METADATA_FIELDS, check_item_id
from server.metrics import Metrics
from server.thumbnails import Thumbnails

log = logging.getLogger(__name__)

# Metadata that holds a server-side file path: never sent to clients nor accepted from them.
PRIVATE_FIELDS = frozenset({"image"})
# Fields the API computes for each answer (a thumbnail URL, a similarity): a client's metadata
# under these names would pass for the server's word (another item's photo, a fake score).
COMPUTED_FIELDS = frozenset({"image_url", "score"})
# Images above this many pixels decode at most LARGE_DECODES at a time: a 36-megapixel 16-bit
# PNG needs ~250 MB while it decodes, and 8 request threads must not need eight times that.
LARGE_PIXELS = 4_000_000
LARGE_DECODES = 2
# A process that reaches the store yet stays this far behind it is not ready (see readiness).
MAX_READY_LAG_S = 10.0
# A request's photos are read for this long in all; later ones are answered without text.
REQUEST_READ_BUDGET_S = 10.0


@dataclass
class Embedded:
    """One image's embedding and class probabilities, with per-stage timings in ms.

    When the server reads text: ``image``, the decoded photo, is kept until its prediction
    decides whether to read it (:meth:`LookupService.predict_many`), which then sets ``cues``,
    the classes its text names (a cue row, see :meth:`TextCues.matrix`; zeros when left
    unread), ``text_read`` and, when not read, ``text_unread``: why (one of
    :data:`server.inputs.TEXT_UNREAD`). ``text_mode`` is the request's say: "auto" (read when the
    prediction is unsure), "always" or "never" (no photo kept). A request's own object:
    nothing else shares it.
    """

    embedding: np.ndarray
    probabilities: np.ndarray
    timing_ms: dict[str, float]
    cues: np.ndarray | None = None
    text_read: bool = False
    text_unread: str | None = None
    text_mode: str = "auto"
    image: Image.Image | None = field(default=None, repr=False)


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)


def _field_budget(metadata: Mapping[str, Any]) -> None:
    """The limit an added item's metadata has, on the fields a merge leaves: merging 32 new
    fields at a time would otherwise grow an item without bound (and every field name is
    filterable)."""
    own = sum(1 for k in metadata if k not in PRIVATE_FIELDS)
    if own > MAX_METADATA_FIELDS:
        raise ApiError(
            400,
            "invalid_metadata",
            f"the item would have {own} metadata fields, more than {MAX_METADATA_FIELDS}; "
            "replace them with merge: false, or set fewer",
        )


class LookupService:
    """Predict, embed, search and update the catalog. Thread-safe."""

    def __init__(
        self,
        config: ServerConfig,
        embedder: Embedder,
        index: CatalogIndex,
        metrics: Metrics,
        *,
        owns_index: bool = False,
    ) -> None:
        if index.dim != embedder.dim:
            raise ValueError(f"index dimension {index.dim} != embedder dimension {embedder.dim}")
        self.config = config
        self.embedder = embedder
        self.index = index
        self.metrics = metrics
        self._owns_index = owns_index
        self.batcher = MicroBatcher(
            embedder.embed_tensors,
            max_batch=config.max_batch,
            max_wait_ms=config.max_wait_ms,
            max_queue=config.max_queue,
            observer=metrics.observe_batch,
        )
        metrics.track_index_size(lambda: len(self.index))
        metrics.track_queue_depth(lambda: self.batcher.queue_depth)
        self._thumbnails = Thumbnails(config, index.manifest)
        self._large_decodes = threading.BoundedSemaphore(LARGE_DECODES)
        # The text reading (reader, cue words, weight, gate), or None when not reading.
        self.text: TextEvidence | None = None
        if config.read_text:  # a bad cue file or a missing OCR package fails the start
            options = TextOptions(
                config.text_cues, config.text_weight, config.text_rotations, config.text_gate
            )
            self.text = options.build(embedder.label_names, threads=config.model_threads)
        self.follower: IndexFollower | None = None
        if config.sync_interval_s is not None and hasattr(index, "sync"):
            self.follower = IndexFollower(
                index,
                config.sync_interval_s,
                on_status=self._observe_sync,
                compact=owns_index and not index.readonly,
            ).start()

    # -- following the store ------------------------------------------------------------------
    def catch_up(self) -> None:
        """Apply the store's changes this process lacks (before answering a request)."""
        if self.follower is not None:
            self.follower.catch_up()

    def _observe_sync(self, status: Any) -> None:
        self.metrics.observe_sync(status)
        self.metrics.refresh_gauges()

    def replica_status(self) -> dict[str, Any] | None:
        """How far this process is behind the store, and why if it cannot reach it (or it
        has stopped answering: see :class:`IndexFollower`)."""
        if self.follower is not None:
            status = self.follower.status
        else:
            status = getattr(self.index, "sync_status", None)
        return None if status is None else status.as_dict()

    # -- lifecycle ------------------------------------------------------------------------------
    def checks(self) -> dict[str, bool]:
        """Readiness of each part: the batcher thread runs, the index is open, and the
        follower runs and keeps up with the store whenever it can reach it."""
        try:
            self.index.info()  # raises once the index is closed
            index_ok = True
        except Exception:
            index_ok = False
        out = {"model": True, "batcher": self.batcher.alive, "index": index_ok}
        if self.follower is not None:
            status = self.follower.status
            out["follower"] = self.follower.alive
            # Store down: every process is equally behind and answers reads from its last
            # state, so none leaves the load balancer; store up yet far behind: this one does.
            out["in_sync"] = bool(status.store_error or status.behind_seconds <= MAX_READY_LAG_S)
            # The store holds a catalog this process cannot serve (another embedder's): it
            # answers from one that no longer exists, so it leaves the load balancer.
            out["catalog"] = status.catalog_error is None
        return out

    @property
    def ready(self) -> bool:
        return all(self.checks().values())

    def close(self) -> None:
        stuck = self.follower is not None and not self.follower.stop()
        self.batcher.close()
        if self._owns_index and stuck:
            # Closing waits for the stuck sync's lock: a SIGTERM would wait out gunicorn's
            # graceful timeout. Nothing is lost: every acknowledged write is in the store.
            log.warning(
                "the store follower did not stop in time (a sync or compaction still waits on "
                "the catalog store); leaving it to the process exit"
            )
        elif self._owns_index:
            self.index.close()

    # -- model ------------------------------------------------------------------------------------
    def decode(self, data: bytes) -> Image.Image:
        """Decode untrusted bytes (raises ImageError on anything that is not a sane image).

        Every image goes through :func:`~embedder.images.load_image` (its format list, pixel
        budget and mode conversions); large ones take one of ``LARGE_DECODES`` slots first.
        """
        if declared_pixels(data) <= LARGE_PIXELS:
            return load_image(data, min_side=self.embedder.decode_side)
        # Waited for as long as the model would be: on a starved CPU a large upload had
        # waited here 58 s, past every timeout, and held a request thread all along.
        if not self._large_decodes.acquire(timeout=self.config.request_timeout_s):
            raise OverloadedError(
                f"too many large images are being decoded (over {LARGE_PIXELS:,} pixels, "
                f"{LARGE_DECODES} at a time); try again"
            )
        try:
            return load_image(data, min_side=self.embedder.decode_side)
        finally:
            self._large_decodes.release()

    def embed_bytes(
        self, data: bytes, arrival: Arrival | None = None, text_mode: str = "auto"
    ) -> Embedded:
        """Decode, preprocess (in this thread) and embed (in a shared batch) one image.

        ``arrival``: the request's batching hint, taken when it started (see
        :meth:`arrival`); it is left here, as the image joins the queue. ``text_mode``: when
        its prediction reads its text (see :class:`Embedded`).
        """
        t0 = time.perf_counter()
        with arrival or self.batcher.arrival() as pending:
            image = self.decode(data)
            x = self.embedder.preprocess_array(image)
            t1 = time.perf_counter()
            future = pending.submit(x)
        result = model_result(future, self.config.request_timeout_s)
        t2 = time.perf_counter()
        self.metrics.decode_seconds.observe(t1 - t0)
        return self.embedded(
            result, decode_s=t1 - t0, total_s=t2 - t0, image=image, text_mode=text_mode
        )

    def read_cues(self, image: Image.Image, wait_s: float | None = None) -> np.ndarray | None:
        """The classes the text on ``image`` names, as a cue row (the server reads text);
        None when reading failed. :class:`ReaderBusy` when the reader, busy with other
        requests' photos, was not free within ``wait_s``."""
        assert self.text is not None
        try:
            texts = self.text.read(image, wait_s=wait_s)
        except ReaderBusy:
            raise
        except Exception:  # the OCR failing on one photo must not fail its search
            log.warning("reading the text on an image failed; predicting without it", exc_info=True)
            return None
        return self.text.cues.matrix([texts])[0]

    def read_where_unsure(self, embedded: Sequence[Embedded], probabilities: np.ndarray) -> None:
        """Read the text on the photos whose ``probabilities`` (their prediction before the
        text, N x C) are less sure than the text gate, and set every photo's ``cues``: a sure
        prediction is rarely changed by its text (bench_quality recipe_text_gated: at the
        default gate half of the photos are read, and no prediction differs from reading all).
        A photo's ``text_mode`` "always" is read whatever its prediction, "never" is not.
        """
        assert self.text is not None
        spent = 0.0  # reading time of this request so far
        for photo, below in zip(embedded, unsure(probabilities, self.text.gate), strict=True):
            if photo.cues is not None:  # read already (a photo is predicted once, but still)
                continue
            worth = photo.text_mode == "always" or (photo.text_mode == "auto" and below)
            photo.text_unread = "never" if photo.text_mode == "never" else "sure"
            if worth and spent >= REQUEST_READ_BUDGET_S:
                # The reader reads one photo at a time for the whole worker: a batch of text
                # walls with read_text=always held it 22 s while other uploads waited.
                # The rest are answered without their text.
                worth, photo.text_unread = False, "budget"
            read_s = 0.0
            if worth and photo.image is not None:
                t0 = time.perf_counter()
                try:
                    photo.cues = self.read_cues(photo.image, REQUEST_READ_BUDGET_S - spent)
                except ReaderBusy as busy:  # the budget went on waiting, or others wait
                    photo.text_unread = "budget" if busy.waited else "busy"
                else:
                    # A failed reading read nothing: text_read says so (export marks it failed).
                    photo.text_read = photo.cues is not None
                    photo.text_unread = None if photo.text_read else "failed"
                read_s = time.perf_counter() - t0
                spent += read_s
                if photo.text_unread == "budget":  # so are the request's other photos
                    spent = max(spent, REQUEST_READ_BUDGET_S)
            if photo.cues is None:
                if worth and photo.image is None:  # every path that predicts keeps the photo
                    log.warning("an unsure photo's pixels were not kept; predicting without text")
                    photo.text_unread = "failed"
                photo.cues = np.zeros(len(self.text.cues.words), dtype=np.float32)
            self.metrics.text_photos.labels(read="yes" if photo.text_read else "no").inc()
            photo.timing_ms["read_text"] = _ms(read_s)
            photo.image = None  # nothing else needs the pixels

    def ranking_probabilities(self, embedded: Embedded) -> np.ndarray:
        """What the class re-rank believes an uploaded photo shows: the classifier's
        probabilities, with the classes its text names added once its prediction has read it
        (bench_quality recipe_text_rerank: Recall@1 +0.013, group bootstrap [+0.006, +0.021])."""
        if embedded.cues is None or self.text is None:
            return embedded.probabilities
        probabilities, cues = embedded.probabilities[None, :], embedded.cues[None, :]
        return apply_text_cues(probabilities, cues, self.text.weight)[0]

    def embedded(
        self,
        result: BatchResult,
        *,
        decode_s: float,
        total_s: float,
        image: Image.Image | None = None,
        text_mode: str = "auto",
    ) -> Embedded:
        """One image's batcher result with its timings; counts its time in the queue. The
        decoded ``image`` is kept only when the server reads text and ``text_mode`` may."""
        self.metrics.queue_seconds.observe(result.queue_s)
        timing = {
            "decode": _ms(decode_s),
            "queue": _ms(result.queue_s),
            "model": _ms(result.model_s),
            "batch_size": result.batch_size,
            "embed_total": _ms(total_s),
        }
        keep = self.kept_for_reading(image, text_mode) if image is not None else None
        return Embedded(
            result.embedding, result.probabilities, timing, text_mode=text_mode, image=keep
        )

    def kept_for_reading(self, image: Image.Image, text_mode: str) -> Image.Image | None:
        """What to keep of a decoded photo until its prediction may read it: nothing when
        this server reads no text or the request says never, else a copy no larger than the
        reader takes (a batch holds its photos until its one forward pass)."""
        if self.text is None or text_mode == "never":
            return None
        return reading_copy(image)

    def arrival(self) -> Arrival:
        """Tell the batcher a request that will embed an image is on its way."""
        return self.batcher.arrival()

    def predict(self, embedded: Embedded, exclude_ids: list[str] | None = None) -> dict[str, Any]:
        """Top class and the ``top_classes`` most probable ones of one image (see
        :meth:`predict_many`)."""
        return self.predict_many([embedded], exclude_ids)[0]

    def predict_many(
        self, embedded: Sequence[Embedded], exclude_ids: list[str] | None = None
    ) -> list[dict[str, Any]]:
        """Top class and the ``top_classes`` most probable ones of each image, and the
        ``source`` of the prediction.

        With kNN fusion configured, the classifier's probabilities are first fused with a vote
        of each image's nearest catalog items (``exclude_ids`` never among them); ``source`` is
        ``classifier+knn`` for an image whose neighbours voted and ``classifier`` otherwise (no
        fusion, or no neighbour with a known label). When the server reads text, the photos
        that prediction is unsure of are read (:meth:`read_where_unsure`) and the classes
        their text names added (``text_read``, ``text_cues``, and ``+text`` in ``source``
        where there are any).
        """
        if not embedded:
            return []
        probabilities = np.stack([e.probabilities for e in embedded]).astype(np.float32)
        voted = np.zeros(len(probabilities), dtype=bool)
        fusion = self.config.fusion
        if fusion is not None:
            embeddings = np.stack([e.embedding for e in embedded])
            probabilities, voted = self._fuse_with_catalog(
                probabilities, embeddings, fusion, exclude_ids
            )
        names = self.embedder.label_names
        cues = None
        if self.text is not None:
            self.read_where_unsure(embedded, probabilities)
            cues = np.stack([e.cues for e in embedded])
            probabilities = apply_text_cues(probabilities, cues, self.text.weight)
        out = []
        for i, (row, knn) in enumerate(zip(probabilities, voted, strict=True)):
            order = np.argsort(-row, kind="stable")[: self.config.top_classes]
            top = [{"label": names[j], "score": round(float(row[j]), 6)} for j in order]
            source = "classifier+knn" if knn else "classifier"
            prediction: dict[str, Any] = {
                "label": top[0]["label"],
                "score": top[0]["score"],
                "top": top,
                "source": source,
            }
            if cues is not None:
                named = [names[j] for j in np.flatnonzero(cues[i])]
                prediction["text_read"] = embedded[i].text_read
                if not embedded[i].text_read:
                    prediction["text_unread"] = embedded[i].text_unread or "sure"
                prediction["text_cues"] = named
                if named:
                    prediction["source"] = f"{source}+text"
            out.append(prediction)
        return out

    def _fuse_with_catalog(
        self,
        probabilities: np.ndarray,
        embeddings: np.ndarray,
        fusion: KnnFusion,
        exclude_ids: list[str] | None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The probabilities fused with the vote of each image's ``fusion.k`` nearest catalog
        items, and which images had a voting neighbour.

        The request's filter, offset and score threshold do not apply: they say what the user
        wants listed, not what the photo shows. The search is :meth:`search_many`, the one
        every read uses, so a replica votes with the catalog it answers from.
        """
        found, _ = self.search_many(embeddings, fusion.k, exclude_ids=exclude_ids)
        neighbours = [[(h.score, h.metadata.get("label")) for h in hits] for hits in found]
        return fuse_with_neighbours(probabilities, neighbours, self.embedder.label_names, fusion)

    # -- index ------------------------------------------------------------------------------------
    @property
    def filterable_fields(self) -> list[str]:
        return sorted(self.index.filterable_fields - PRIVATE_FIELDS)

    @property
    def numeric_fields(self) -> list[str]:
        """Filterable fields whose values are mostly numbers (the ones ranges apply to)."""
        types = self.index.field_types()
        return sorted(
            f for f, kind in types.items() if kind == "number" and f not in PRIVATE_FIELDS
        )

    def search(
        self,
        vector: np.ndarray,
        k: int,
        flt: dict[str, Any] | None = None,
        exclude_ids: list[str] | None = None,
        *,
        offset: int = 0,
        threshold: float | None = None,
        probabilities: np.ndarray | None = None,
    ) -> tuple[list[Hit], float]:
        """Nearest catalog items (the ``offset`` best skipped; none below cosine
        ``threshold``) and the search time in ms; with an uploaded photo's class
        ``probabilities``, the first hits are re-ranked as configured (``class_rerank``)."""
        hits, ms = self.search_many(
            vector[None, :],
            k,
            flt,
            exclude_ids,
            offset,
            threshold,
            probabilities=None if probabilities is None else probabilities[None, :],
        )
        return hits[0], ms

    def search_many(
        self,
        vectors: np.ndarray,
        k: int,
        flt: dict[str, Any] | None = None,
        exclude_ids: list[str] | None = None,
        offset: int = 0,
        threshold: float | None = None,
        probabilities: np.ndarray | None = None,
    ) -> tuple[list[list[Hit]], float]:
        """:meth:`search` for each row of ``vectors`` in one index call (one filter)."""
        t0 = time.perf_counter()
        rerank = self.config.rerank if probabilities is not None else None
        # A re-rank reorders the pool's most similar items, so all of them are fetched even
        # for a smaller page: every page then reads from the same reordered head.
        fetch = k + offset if rerank is None else max(k + offset, rerank.pool)
        found = self.index.search(vectors, fetch, filter=flt, exclude_ids=exclude_ids)
        if rerank is not None:
            found = self._reranked(found, np.asarray(probabilities), rerank)
        out = []
        for hits in found:
            hits = hits[offset : offset + k]
            out.append(hits if threshold is None else [h for h in hits if h.score >= threshold])
        dt = time.perf_counter() - t0
        self.metrics.search_seconds.observe(dt)
        return out, _ms(dt)

    def _reranked(
        self, found: list[list[Hit]], probabilities: np.ndarray, rerank: ClassRerank
    ) -> list[list[Hit]]:
        """Each query's hits with the first ``rerank.pool`` reordered by similarity plus the
        query's probability of the hit's ``label`` (see :mod:`embedder.class_rerank`)."""
        width = max((len(hits) for hits in found), default=0)
        if width == 0:
            return found
        neighbours = [[(h.score, h.metadata.get("label")) for h in hits] for hits in found]
        scores, labels = neighbour_arrays(neighbours, self.embedder.label_names, width)
        order = rerank_order(scores, labels, probabilities, rerank)
        # Missing places (a short list) score -inf and sort last, so they index nothing here.
        return [
            [hits[j] for j in row if j < len(hits)] for hits, row in zip(found, order, strict=True)
        ]

    def item_vector(self, item_id: str) -> np.ndarray:
        """A catalog item's stored unit vector (UnknownIdError if absent)."""
        return self.index.get_vectors([item_id])[0]

    def item_classes(self, item_id: str) -> np.ndarray | None:
        """What a catalog item shows, as class probabilities for the class re-rank of its
        neighbours: all on its ``label`` when that is one of the model's classes, else None
        (similarity order). The index keeps no classifier output for its items, and the
        catalog's own label is its word on what the item is (UnknownIdError if absent)."""
        label = self.item(item_id).get("label")
        names = self.embedder.label_names
        if not isinstance(label, str) or label not in names:
            return None
        classes = np.zeros(len(names), dtype=np.float32)
        classes[names.index(label)] = 1.0
        return classes

    def item(self, item_id: str) -> dict[str, Any]:
        return self.index.get(item_id).metadata

    def list_items(
        self, limit: int, after: str | None = None, flt: dict[str, Any] | None = None
    ) -> tuple[list[Item], str | None]:
        """Up to ``limit`` items (matching ``flt``) in id order after id ``after``, and the id
        to continue after (None on the last page).

        Paging by id, not by position, keeps a later page right while items come and go: it
        neither skips nor repeats an item that stays.
        """
        page = self.index.list_items(after, limit + 1, filter=flt)
        more = len(page) > limit
        page = page[:limit]
        return page, page[-1].id if more and page else None

    @staticmethod
    def public_metadata(metadata: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in metadata.items() if k not in PRIVATE_FIELDS}

    @staticmethod
    def has_image(metadata: dict[str, Any]) -> bool:
        """Whether the item has a photo file to make thumbnails of: a URL (a catalog's CDN
        address) is kept in the store as written, but it is no file of this server's."""
        image = metadata.get("image")
        return bool(image) and not is_uri(image)

    # -- writes -----------------------------------------------------------------------------------
    def add(
        self, item_id: str, data: bytes, metadata: dict[str, Any]
    ) -> tuple[Embedded, dict[str, Any]]:
        """Embed an image and add it durably under ``item_id`` with ``metadata``; the image's
        embedding and the metadata as stored (the server's own fields included)."""
        check_item_id(item_id)
        self.check_new_metadata(metadata)
        if item_id in self.index:
            raise ApiError(409, "item_exists", f"item {item_id!r} already exists; delete it first")
        embedded = self.embed_bytes(data)
        metadata = dict(metadata)
        saved = self.keep_image(item_id, data)
        if saved is not None:
            metadata["image"] = str(saved)
        try:
            self.index.add([item_id], embedded.embedding[None, :], [metadata])
        except DuplicateIdError as exc:
            self.drop_image(saved)
            raise ApiError(409, "item_exists", str(exc)) from exc
        except StoreOutcomeUnknownError:
            raise  # the item may be in the store: its image stays
        except BaseException:
            self.drop_image(saved)
            raise
        log.info("added item %r", item_id)
        return embedded, metadata

    def check_new_metadata(self, metadata: dict[str, Any]) -> None:
        """Fields a client may not set: the server's own and the id."""
        private = sorted((PRIVATE_FIELDS | COMPUTED_FIELDS) & set(metadata))
        if private:
            raise ApiError(400, "invalid_metadata", f"field(s) {private} are set by the server")
        if "id" in metadata:
            raise ApiError(400, "invalid_metadata", "give the id once, outside the metadata")

    def update(self, item_id: str, metadata: dict[str, Any], *, merge: bool = True) -> Item:
        """Change an item's metadata durably, its vector untouched (UnknownIdError if absent).

        ``merge``: fields not given keep their value; otherwise ``metadata`` replaces them all
        (the server's own fields stay).
        """
        self.check_new_metadata(metadata)
        # The server's own fields are read in the write's transaction: read before it, an
        # item removed and added again meanwhile had got its old image path back.
        item = self.index.update_metadata(
            item_id, metadata, merge=merge, check=_field_budget, keep=PRIVATE_FIELDS
        )
        log.info("updated the metadata of item %r", item_id)
        return item

    def remove(self, item_id: str) -> None:
        """Remove an item durably (UnknownIdError if absent) and the image the API kept."""
        try:
            metadata = self.index.get(item_id).metadata
        except UnknownIdError as exc:  # say what was asked: a delete, not a read
            raise UnknownIdError([item_id], "delete") from exc
        self.index.remove([item_id])
        if self.config.image_dir:
            self.drop_image(kept_image(self.config.image_dir, item_id, metadata.get("image")))
        log.info("removed item %r", item_id)

    def keep_image(self, item_id: str, data: bytes) -> Path | None:
        """Store an added item's image durably under a name of its own (see
        :mod:`common.kept_images`)."""
        if not self.config.image_dir:
            return None
        path = new_image_path(self.config.image_dir, item_id)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, lambda tmp: tmp.write_bytes(data))
        except OSError as exc:  # a full disk, a folder gone read-only: a 500 with a traceback
            log.error("cannot keep an added image in --image-dir %s: %s", path.parent, exc)
            raise ApiError(
                507,
                "insufficient_storage",
                f"the server cannot keep the item's image ({exc.strerror or exc}); nothing "
                "was added",
            ) from None
        return path.resolve()

    @staticmethod
    def drop_image(path: Path | None) -> None:
        if path is not None:
            path.unlink(missing_ok=True)

    # -- thumbnails -------------------------------------------------------------------------------
    def thumbnail(self, item_id: str) -> bytes:
        """A JPEG thumbnail of a catalog item's own image (see :class:`Thumbnails`)."""
        return self._thumbnails.make(item_id, self.index.get(item_id).metadata)

    # -- description --------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        e, cfg = self.embedder, self.config
        idx = self.index.info()
        source = self.index.manifest.source
        return {
            "version": phonesim_version(),
            "model": {
                "name": e.model_name,
                "checkpoint_hash": e.checkpoint_hash,
                "dim": e.dim,
                "input_size": list(e.config.data_config.get("input_size", [])),
                "runtime": e.runtime,
                "engine": e.engine.describe(),
            },
            "classes": e.label_names,
            "index": {
                "kind": idx.get("kind"),
                "size": len(self.index),
                "dim": idx.get("dim"),
                "metric": idx.get("metric"),
                "filterable_fields": self.filterable_fields,
                # Which build is served (None for an index built before it was recorded).
                "built": source.get("built"),
                "embedding_precision": source.get("embedding_precision"),
                # On read-only media: opened as an unchanging file, so nothing is followed.
                "read_only_media": bool(idx.get("read_only_media")),
                # Catalog labels the model never predicts (a class renamed or added since it
                # was trained): their items vote for no class. The first 20.
                "labels_unknown_to_model": labels_unknown(
                    self.index.store.field_texts("label"), e.label_names
                )[:20],
            },
            "limits": {
                "default_k": cfg.default_k,
                "max_k": cfg.max_k,
                "max_upload_mb": cfg.max_upload_mb,
            },
            "batching": {
                "max_batch": cfg.max_batch,
                "max_wait_ms": cfg.max_wait_ms,
                "max_batch_entries": cfg.max_batch_entries,
            },
            "writes_enabled": cfg.writes_enabled and not self.index.readonly,
            "prediction": {
                "knn_fusion": cfg.knn_fusion,
                "knn_k": cfg.knn_k,
                "knn_weight": cfg.knn_weight,
                "knn_temperature": cfg.knn_temperature,
                "read_text": cfg.read_text,
                "text_weight": cfg.text_weight if cfg.read_text else None,
                "text_rotations": list(cfg.text_rotations) if cfg.read_text else None,
                "text_gate": cfg.text_gate if cfg.read_text else None,
                # examples of read text from a learned cue file (phonesim learn-text)
                "text_examples": (
                    len(self.text.cues.examples or ()) if self.text is not None else None
                ),
            },
            "ranking": {
                "class_rerank": cfg.class_rerank,
                "class_rerank_pool": RERANK_POOL,
            },
        }
