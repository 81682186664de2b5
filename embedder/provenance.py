"""What a checkpoint records about how it was made, so that a result can be reproduced or a
change explained: the data it saw (content fingerprints of the training and validation
images), the software, and the machine settings that change the weights.

Two trainings with equal fingerprints, versions, ``workers_used`` and ``threads`` and the same
seed give the same weights (README § Training recipe); the settings as typed (``workers:
null``, ``device: null``) had not said which values a run resolved them to.
"""

from __future__ import annotations

import hashlib
import platform
from collections.abc import Sequence
from pathlib import Path

from common.fsutil import file_sha256
from common.stamps import package_versions
from embedder.data import Sample

#: Packages whose version changes what training computes.
PACKAGES = ("phonesim", "torch", "timm", "numpy", "pillow", "pytorch-metric-learning")


def training_versions() -> dict[str, str]:
    """Installed versions of :data:`PACKAGES` (absent ones left out), Python's and the CPU
    architecture's."""
    return {
        "python": platform.python_version(),
        "machine": platform.machine(),
        **package_versions(PACKAGES),
    }


def _file_digest(path: Path) -> str:
    try:
        return file_sha256(path)
    except OSError:
        return "unreadable"


def samples_fingerprint(samples: Sequence[Sample]) -> str:
    """SHA-256 over each image's id, label and content, in the catalog's order: equal for the
    same photos under the same labels wherever the folder lies; an edited, added, removed or
    relabelled photo changes it."""
    digest = hashlib.sha256()
    for s in samples:
        digest.update(f"{s.id}\t{s.label}\t{_file_digest(s.path)}\n".encode())
    return digest.hexdigest()


def data_record(train: Sequence[Sample], val: Sequence[Sample]) -> dict[str, object]:
    """The training and validation sets as counts and fingerprints (the split included: a
    removed row that moves photos between them changes both)."""
    return {
        "train_images": len(train),
        "train_fingerprint": samples_fingerprint(train),
        "val_images": len(val),
        "val_fingerprint": samples_fingerprint(val),
    }
