"""``phonesim evaluate``: classification and retrieval quality of a checkpoint."""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

from common.fsutil import atomic_write, atomic_write_text
from common.plotting import pyplot
from common.text import display_width, pad_to
from embedder.batch import embed_samples
from embedder.checkpoint import check_outside_inputs, read_config
from embedder.class_rerank import ClassRerank, reranked_labels
from embedder.data import Catalog, load_catalog, nfc, shared_images
from embedder.engine_options import EngineOptions
from embedder.errors import DataError
from embedder.inference import Embedder
from embedder.knn_vote import KnnFusion, fuse, vote_classes
from embedder.metrics import label_recall_at_k, macro_f1, nearest_neighbours
from embedder.text_cues import apply_text_cues
from embedder.text_reader import TextOptions

# What evaluate writes into its --out folder (and all it may find there).
REPORT_JSON, CONFUSION_PNG = "report.json", "confusion_matrix.png"
REPORT_FILES = (REPORT_JSON, CONFUSION_PNG)

log = logging.getLogger(__name__)


def plot_confusion(cm: np.ndarray, labels: list[str], path: Path) -> None:
    """Save the confusion matrix as a PNG heat map with counts in the cells."""
    # A class name in a script the plot's font lacks (CJK, say) made matplotlib warn once per
    # character, several lines each; it is drawn as boxes, so one line says so instead.
    with pyplot(path.parent) as plt, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _draw_confusion(plt, cm, labels, path)
    missing = [w for w in caught if "missing from font" in str(w.message)]
    if missing:
        log.warning(
            "confusion_matrix.png: class names with characters the plot font lacks are drawn "
            "as boxes (%d characters); report.json names them",
            len({str(w.message) for w in missing}),
        )
    for w in caught:
        if w not in missing:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def _draw_confusion(plt: Any, cm: np.ndarray, labels: list[str], path: Path) -> None:
    size = max(4.0, 0.6 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    threshold = cm.max() / 2 if cm.size else 0
    for (i, j), value in np.ndenumerate(cm):
        ax.text(
            j,
            i,
            str(value),
            ha="center",
            va="center",
            color="white" if value > threshold else "black",
        )
    fig.tight_layout()
    fig.savefig(path, dpi=100, format="png")  # the path may be a temporary name
    plt.close(fig)


def evaluate(
    checkpoint: str | Path,
    data: str | Path,
    gallery: str | Path | None = None,
    out: str | Path | None = None,
    batch_size: int = 32,
    progress: bool = True,
    engine: EngineOptions | None = None,
    fusion: KnnFusion | None = None,
    rerank: ClassRerank | None = None,
    text: TextOptions | None = None,
) -> dict[str, Any]:
    """Evaluate and (when ``out`` is given) write report.json and confusion_matrix.png there.

    ``engine``: runtime, device and threads of the model (default: auto on the best device).
    ``fusion``: also predict with the classifier fused with a kNN vote of the nearest gallery
    images (leave-one-out within ``data`` without a gallery); the fused prediction is then the
    headline accuracy, macro-F1, per-class scores and confusion matrix, and the classifier's
    own accuracy and macro-F1 stay under ``classifier``. None: the classifier alone.
    ``rerank``: also report Recall@1/@5 with each image's nearest gallery images re-ranked by
    its class probabilities, as the server ranks an uploaded photo's neighbours.
    ``text``: also read the text on each evaluated image whose prediction is less sure than the
    gate and add the classes it names to the prediction (after the fusion) and to the
    re-rank's probabilities, as the server does; the headline is then that prediction.
    """
    if out is not None:
        out = Path(out)
        if out.exists() and not out.is_dir():  # checked before the work, not after it
            raise DataError(f"{out}: exists and is not a folder (--out needs a folder)")
        # Its PNG would be read as a photo of a class "<out>" by the next run on that folder.
        check_outside_inputs(out, {"--data": data, "--gallery": gallery})
    # The data is checked against the classes config.json names before the model is loaded:
    # loading may export its ONNX graph first (seconds to minutes), for a typo'd --data.
    names = list(read_config(checkpoint).label_names)
    # A bad cue file or a missing OCR package fails now, not after the embedding.
    evidence = text.build(names) if text is not None else None
    catalog = load_catalog(data, require_labels=True, min_classes=1)
    _check_known_classes(data, catalog, names)
    g_catalog = None if gallery is None else _gallery_catalog(gallery, catalog, names)
    embedder = Embedder.from_checkpoint(checkpoint, **asdict(engine or EngineOptions()))
    if embedder.label_names != names:  # the checkpoint was replaced meanwhile (a training)
        names = embedder.label_names
        _check_known_classes(data, catalog, names)
    idx, batch, failures = embed_samples(embedder, catalog.samples, batch_size, progress=progress)
    if len(idx) == 0:
        raise DataError(f"{data}: none of the images could be read")
    y_true = np.array([names.index(catalog.samples[i].label) for i in idx])
    y_classifier = batch.probabilities.argmax(1)
    g_vectors: np.ndarray | None = None
    g_classes = y_true  # leave-one-out: the evaluated images are their own gallery
    g_failures: list = []
    if g_catalog is not None:
        g_idx, g_batch, g_failures = embed_samples(
            embedder, g_catalog.samples, batch_size, progress=progress
        )
        if len(g_idx) == 0:
            raise DataError(f"{gallery}: none of the gallery images could be read")
        g_labels = [g_catalog.samples[i].label for i in g_idx]
        g_vectors = g_batch.embeddings
        # Gallery classes the checkpoint does not know take their share of the vote back to
        # the probabilities (knn_vote.UNKNOWN_CLASS); a blank label does not vote.
        g_classes = vote_classes(g_labels, names)
        retrieval = label_recall_at_k(
            batch.embeddings, [catalog.samples[i].label for i in idx], g_vectors, g_labels
        )
    else:
        retrieval = label_recall_at_k(batch.embeddings, y_true)
    knn_block: dict[str, Any] | None = None
    predicted = batch.probabilities
    y_pred = y_classifier
    if fusion is not None:
        scores, neighbours = nearest_neighbours(batch.embeddings, g_vectors, fusion.k)
        predicted = fuse(batch.probabilities, scores, g_classes[neighbours], fusion)
        y_pred = predicted.argmax(1)
        knn_block = {
            "k": fusion.k,
            "temperature": fusion.temperature,
            "weight": fusion.weight,
            "neighbours": "gallery" if gallery is not None else "leave-one-out",
            "accuracy": float(accuracy_score(y_true, y_pred)),
            "macro_f1": macro_f1(y_true, y_pred),
        }
    text_block: dict[str, Any] | None = None
    belief = batch.probabilities  # what the class re-rank believes each image shows
    if evidence is not None:
        # As the server: only the images whose prediction is unsure are read.
        paths = [catalog.samples[i].path for i in idx]
        cues, read, found = evidence.read_unsure(predicted, paths, embedder.decode_side, progress)
        y_pred = apply_text_cues(predicted, cues, evidence.weight).argmax(1)
        belief = apply_text_cues(belief, cues, evidence.weight)  # as the server re-ranks
        text_block = {
            **evidence.describe(),
            "images_read": int(read.sum()),
            "images_with_cue": int((cues.sum(axis=1) > 0).sum()),
            # per evaluated image, the ones left unread included: what reading costs on average
            "seconds_per_image": round(found.seconds / max(1, len(idx)), 4),
            "accuracy": float(accuracy_score(y_true, y_pred)),
            "macro_f1": macro_f1(y_true, y_pred),
        }
    rerank_block: dict[str, Any] | None = None
    if rerank is not None:
        recall = reranked_recall(batch.embeddings, belief, y_true, g_vectors, g_classes, rerank)
        rerank_block = {"weight": rerank.weight, "pool": rerank.pool, **recall}
    classes = np.arange(len(names))
    cm = confusion_matrix(y_true, y_pred, labels=classes)
    per_class = ("precision", "recall", "f1", "support")
    by_class = dict(
        zip(
            per_class,
            precision_recall_fscore_support(y_true, y_pred, labels=classes, zero_division=0),
            strict=True,
        )
    )
    report: dict[str, Any] = {
        "checkpoint": str(checkpoint),
        # Which weights were measured: the path alone named whatever trained there since.
        "checkpoint_hash": embedder.checkpoint_hash,
        "model_name": embedder.model_name,
        "data": str(data),
        "gallery": str(gallery) if gallery else "leave-one-out",
        "runtime": embedder.runtime,
        "count": int(len(idx)),
        "failed": len(failures),
        "gallery_failed": len(g_failures),
        # Which prediction the headline accuracy, macro-F1, per-class scores and confusion
        # matrix are of; the classifier's own figures are always kept below.
        "prediction": "classifier"
        + ("+knn" if fusion is not None else "")
        + ("+text" if text is not None else ""),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": macro_f1(y_true, y_pred),
        "classifier": {
            "accuracy": float(accuracy_score(y_true, y_classifier)),
            "macro_f1": macro_f1(y_true, y_classifier),
        },
        "knn_fusion": knn_block,
        "text_cues": text_block,
        "recall_at_1": retrieval[1],
        "recall_at_5": retrieval[5],
        "class_rerank": rerank_block,
        "per_class": {
            name: {k: float(by_class[k][i]) for k in per_class} for i, name in enumerate(names)
        },
        "labels": names,
        "confusion_matrix": cm.tolist(),
        "failed_images": [f"{f.id}: {f.reason}" for f in failures],
        "gallery_failed_images": [f"{f.id}: {f.reason}" for f in g_failures],
    }
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write(out / CONFUSION_PNG, lambda tmp: plot_confusion(cm, names, tmp))
        atomic_write_text(out / REPORT_JSON, json.dumps(report, indent=2) + "\n")
        report["report_dir"] = str(out)
    return report


def _check_known_classes(data: str | Path, catalog: Catalog, names: list[str]) -> None:
    unknown = sorted(set(catalog.label_names) - set(names))
    if unknown:
        composed = {nfc(n) for n in names}
        forms = (
            " (the checkpoint names them in another Unicode form: decomposed, as a catalog made "
            "on macOS was read before names were composed; train it again)"
            if all(nfc(u) in composed for u in unknown)
            else ""
        )
        raise DataError(
            f"{data}: classes the checkpoint does not know: {', '.join(unknown)}{forms}"
        )


def _gallery_catalog(gallery: str | Path, data: Catalog, names: list[str]) -> Catalog:
    """The gallery, checked before any image is embedded: it must share a class with the
    evaluated data, or every retrieval would miss by construction. What would only bias the
    scores is said in warnings: evaluated images in the gallery (each finds itself), classes
    of the data it lacks, classes the checkpoint does not know."""
    g_catalog = load_catalog(gallery, require_labels=True, min_classes=1)
    data_labels = data.label_names
    if not set(g_catalog.label_names) & set(data_labels):
        raise DataError(
            f"{gallery}: the gallery shares no class with the evaluated data "
            f"(gallery: {', '.join(g_catalog.label_names)}; data: {', '.join(data_labels)})"
        )
    shared = shared_images(data.samples, g_catalog.samples)
    if shared:
        log.warning(
            "%s: %d of the %d evaluated images are in the gallery too (the same files or "
            "byte-identical copies); each finds itself "
            "first, so the fused accuracy and Recall@k read too high (give a gallery without "
            "them, or none: leave-one-out)",
            gallery,
            len(shared),
            len(data.samples),
        )
    for what, classes in (
        ("has no image of the evaluated class(es)", set(data_labels) - set(g_catalog.label_names)),
        ("holds class(es) the checkpoint does not know", set(g_catalog.label_names) - set(names)),
    ):
        if classes:
            log.warning("%s: the gallery %s: %s", gallery, what, ", ".join(sorted(classes)))
    return g_catalog


def reranked_recall(
    embeddings: np.ndarray,
    probabilities: np.ndarray,
    classes: np.ndarray,
    gallery: np.ndarray | None,
    gallery_classes: np.ndarray,
    rerank: ClassRerank,
) -> dict[str, float]:
    """Recall@1 and @5 of the nearest gallery images (leave-one-out when ``gallery`` is None)
    after the class re-rank; gallery classes of -1 never match."""
    scores, neighbours = nearest_neighbours(embeddings, gallery, max(5, rerank.pool))
    if neighbours.shape[1] == 0:
        return {"recall_at_1": 0.0, "recall_at_5": 0.0}
    ranked = reranked_labels(scores, gallery_classes[neighbours], probabilities, rerank)
    hit = ranked == classes[:, None]
    return {
        "recall_at_1": float(hit[:, 0].mean()),
        "recall_at_5": float(hit[:, :5].any(axis=1).mean()),
    }


def format_report(report: dict[str, Any]) -> str:
    """Human-readable summary table of an evaluation report."""
    lines = [
        f"images: {report['count']} evaluated, {report['failed']} unreadable"
        + (
            f"; gallery: {report['gallery_failed']} unreadable"
            if report.get("gallery_failed")
            else ""
        ),
        f"prediction: {report['prediction']}",
        f"accuracy {report['accuracy']:.4f}  macro-F1 {report['macro_f1']:.4f}  "
        f"Recall@1 {report['recall_at_1']:.4f}  Recall@5 {report['recall_at_5']:.4f} "
        f"(gallery: {report['gallery']})",
        f"classifier alone: accuracy {report['classifier']['accuracy']:.4f}  "
        f"macro-F1 {report['classifier']['macro_f1']:.4f}",
    ]
    knn = report.get("knn_fusion")
    if knn:
        lines.append(
            f"classifier+knn (k {knn['k']}, weight {knn['weight']:g}, temperature "
            f"{knn['temperature']:g}, neighbours: {knn['neighbours']}): "
            f"accuracy {knn['accuracy']:.4f}  macro-F1 {knn['macro_f1']:.4f}"
        )
    read = report.get("text_cues")
    if read:
        lines.append(
            f"with text cues (weight {read['weight']:g}, rotations "
            f"{','.join(map(str, read['rotations']))}, gate {read['gate']:g}; "
            f"{read['images_read']} of {report['count']} images read, "
            f"{read['images_with_cue']} named a class, {read['seconds_per_image']:.2f} s per "
            "image): "
            f"accuracy {read['accuracy']:.4f}  macro-F1 {read['macro_f1']:.4f}"
        )
    ranked = report.get("class_rerank")
    if ranked:
        lines.append(
            f"class re-rank (weight {ranked['weight']:g} over the first {ranked['pool']}): "
            f"Recall@1 {ranked['recall_at_1']:.4f}  Recall@5 {ranked['recall_at_5']:.4f}"
        )
    # As wide as the widest name as a terminal shows it (CJK takes two columns a character).
    first = max([20, *(display_width(n) + 2 for n in report["per_class"])])
    lines += [
        "",
        f"{pad_to('class', first)}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}",
    ]
    for name, s in report["per_class"].items():
        lines.append(
            f"{pad_to(name, first)}{s['precision']:>10.3f}{s['recall']:>10.3f}{s['f1']:>10.3f}"
            f"{int(s['support']):>10d}"
        )
    if "report_dir" in report:
        lines += ["", f"report.json and confusion_matrix.png in {report['report_dir']}"]
    return "\n".join(lines)
