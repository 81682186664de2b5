"""What to tell a user whose file carries a format version this phonesim does not read.

A newer version means a newer phonesim wrote the file: the fix is to upgrade, never to rebuild
(in a rolling upgrade, "rebuild" would overwrite the newer catalog). A missing or older one
means an older phonesim wrote it, and the caller knows what makes it current.
"""

from __future__ import annotations

from collections.abc import Sequence

#: The feature file of ``phonesim embed`` and ``phonesim export`` (docs/export.md), read by
#: ``phonesim index build/add``; here so that the index need not import the exporter.
FEATURES_FORMAT = "phonesim-features"
FEATURES_VERSION = 1


def version_problem(found: object, readable: Sequence[int], older_fix: str) -> str | None:
    """None when ``found`` is a version in ``readable``; else what is wrong and what to do."""
    if not isinstance(found, bool) and found in readable:
        return None
    reads = ", ".join(map(str, readable))
    if found is None:
        return f"it has no format_version (this phonesim reads {reads}); {older_fix}"
    if isinstance(found, int) and not isinstance(found, bool) and found > max(readable):
        return (
            f"format_version {found} is newer than this phonesim reads ({reads}): a newer "
            "phonesim wrote it; upgrade phonesim to read it"
        )
    return f"unsupported format_version {found!r} (this phonesim reads {reads}); {older_fix}"


#: Every embedding precision a features file or an index may record: ``embedder``'s
#: ``precision(runtime)`` gives one of them.
PRECISIONS = ("fp32", "int8")
