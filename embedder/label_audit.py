"""A label audit: what a person saw in photos whose folder label was in doubt.

Benchmark photos scraped from listings carry labels no classifier can match (a Realme phone
filed under samsung, a logo filed under iphone) and products that are not phones (watches,
tablets). An audit file records, per photo, what the photo shows, so that a benchmark can report
its headline beside the same figure over the photos whose label names the product shown. It is
a CSV with the columns ``photo`` (the benchmark's photo id, e.g. ``train/xiaomi/xiaomi_12ab``),
``filed`` (its folder label), ``verdict`` (one of ``VERDICTS``) and ``shows`` (free text).

numpy and the standard library only.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

VERDICTS = {
    "ok": "a phone of the filed brand",
    "no_evidence": "a phone front that shows no brand mark; the label may be right",
    "unsure": "a phone whose brand could not be read",
    "device": "a watch, tablet or other product of the filed brand, not a phone",
    "other_brand": "another brand's product",
    "not_product": "no product of the filed brand at all (a logo, another brand's laptop)",
}
# Verdicts whose folder label names something other than what the photo shows.
WRONG_LABEL = ("other_brand", "not_product")
COLUMNS = ("photo", "filed", "verdict", "shows")


class AuditError(ValueError):
    """The audit file is malformed or does not describe this dataset."""


@dataclass(frozen=True)
class LabelAudit:
    """Per-photo masks (in the dataset's photo order) from an audit file."""

    audited: np.ndarray
    wrong_label: np.ndarray
    not_phone: np.ndarray

    @property
    def kept(self) -> np.ndarray:
        """Photos whose label may name the product shown (not audited as wrong)."""
        return ~self.wrong_label

    @property
    def phones(self) -> np.ndarray:
        """Photos kept that are also phones (watches and tablets left out)."""
        return ~self.wrong_label & ~self.not_phone


def load_label_audit(path: Path, ids: Sequence[str], labels: Sequence[str]) -> LabelAudit:
    """Read ``path`` against the dataset's photo ``ids`` and folder ``labels``.

    Raises AuditError when a row names a photo the dataset lacks, files it under another label
    (another dataset, or one relabelled since), repeats a photo or has an unknown verdict.
    """
    position = {photo: i for i, photo in enumerate(ids)}
    n = len(ids)
    audited, wrong, not_phone = np.zeros(n, bool), np.zeros(n, bool), np.zeros(n, bool)
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or tuple(reader.fieldnames[:4]) != COLUMNS:
            raise AuditError(f"{path}: the header must be {','.join(COLUMNS)}")
        for line, row in enumerate(reader, start=2):
            photo, verdict = row["photo"], row["verdict"]
            if verdict not in VERDICTS:
                raise AuditError(f"{path}:{line}: unknown verdict {verdict!r}")
            i = position.get(photo)
            if i is None:
                raise AuditError(f"{path}:{line}: no photo {photo!r} in this dataset")
            if labels[i] != row["filed"]:
                raise AuditError(
                    f"{path}:{line}: {photo} is filed under {labels[i]!r}, "
                    f"the audit says {row['filed']!r}"
                )
            if audited[i]:
                raise AuditError(f"{path}:{line}: {photo} is audited twice")
            audited[i] = True
            wrong[i] = verdict in WRONG_LABEL
            not_phone[i] = verdict == "device"
    return LabelAudit(audited, wrong, not_phone)
