"""The files a calibration run leaves for a person: sweep table, curves, summary JSON, and the
accepted pairs that are not one photo."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from common.plotting import pyplot
from duplicates.calibration import CalibrationResult


def sweep_table(result: CalibrationResult) -> str:
    """CSV of precision, recall and F1 per threshold (ours), plus the baselines' own sweeps."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["method", "threshold", "precision", "recall", "f1", "predicted_pairs"])
    methods = [("copy-descriptor", result.sweep)]
    if result.pair_model is not None:
        methods.append(("agreement-only", result.agreement))
    if result.phash is not None:
        methods.append(("phash", result.phash))
    for name, sw in methods:
        for k in range(len(sw.thresholds)):
            values = (sw.thresholds[k], sw.precision[k], sw.recall[k], sw.f1[k])
            w.writerow([name, *(f"{v:.4f}" for v in values), int(sw.predicted_pairs[k])])
    return buf.getvalue()


def plot_curves(result: CalibrationResult, path: Path) -> None:
    with pyplot(path.parent) as plt:
        _draw_curves(plt, result, path)


def _draw_curves(plt: Any, result: CalibrationResult, path: Path) -> None:
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    sw = result.sweep
    ax1.plot(sw.thresholds, sw.precision, label="precision")
    ax1.plot(sw.thresholds, sw.recall, label="recall")
    ax1.plot(sw.thresholds, sw.f1, label="F1")
    if result.chosen:
        ax1.axvline(result.chosen["threshold"], color="k", ls="--", lw=1, label="default")
    ax1.axhline(result.config.min_precision, color="grey", ls=":", lw=1)
    ax1.set(
        xlabel="threshold (verified score)",
        ylabel="group-level pairwise metric",
        ylim=(0, 1.02),
        title="Copy detector vs threshold",
    )
    ax1.legend(loc="lower left")
    ax2.plot(sw.recall, sw.precision, label="copy detector")
    if result.pair_model is not None:
        ax2.plot(result.agreement.recall, result.agreement.precision, label="agreement alone")
    if result.phash is not None:
        ax2.plot(result.phash.recall, result.phash.precision, label="pHash (baseline)")
    if result.chosen:
        ax2.plot([result.chosen["recall"]], [result.chosen["precision"]], "ko", label="default")
    ax2.set(
        xlabel="recall",
        ylabel="precision",
        xlim=(0, 1.02),
        ylim=(0, 1.02),
        title="Precision-recall",
    )
    ax2.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_calibration(result: CalibrationResult, out: str | Path) -> dict[str, Path]:
    """``calibration.csv`` (sweep table), ``calibration.png`` (curves), ``calibration.json``,
    and ``false_pairs.csv``: the accepted pairs that are not one photo, for a person to audit
    (a pair of source photos that are copies of each other shows up here as many rows)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "table": out / "calibration.csv",
        "plot": out / "calibration.png",
        "json": out / "calibration.json",
        "false_pairs": out / "false_pairs.csv",
    }
    paths["table"].write_text(sweep_table(result))
    with paths["false_pairs"].open("w", newline="") as fh:
        sides = [
            f"{s}_{k}" for s in "ab" for k in ("image", "role", "transform", "strength", "source")
        ]
        writer = csv.DictWriter(fh, fieldnames=["score", *sides])
        writer.writeheader()
        writer.writerows(result.false_pairs)
    plot_curves(result, paths["plot"])
    report = {
        "summary": result.summary(),
        "chosen": result.chosen,
        "agreement_only": result.agreement_chosen,
        "pair_model": result.pair_model.to_json() if result.pair_model else None,
        "phash_best": result.phash_best,
        "images": result.images,
        "originals": result.originals,
        "truth_pairs": result.truth_pairs,
        "per_transform_recall": result.per_transform,
        "source": result.source,
        "benchmark": asdict(result.config.benchmark),
        "min_precision": result.config.min_precision,
    }
    paths["json"].write_text(json.dumps(report, indent=2) + "\n")
    return paths
