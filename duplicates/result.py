"""What a duplicate search found: groups with a keeper, label conflicts, failures, a summary."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from embedder.batch import Failure
from embedder.errors import DataError

SOURCE_INPUT = "input"
SOURCE_CATALOG = "catalog"


@dataclass(frozen=True)
class Member:
    """One image in a duplicate group."""

    id: str
    path: str
    label: str
    width: int
    height: int
    file_size: int
    similarity: float = 1.0  # to the group's keeper (1.0 for the keeper itself)
    source: str = SOURCE_INPUT  # "catalog" for items of an --against index

    @property
    def pixels(self) -> int:
        return self.width * self.height


@dataclass(frozen=True)
class DuplicateGroup:
    """Images showing the same photo; ``members[0]`` is the one to keep."""

    group_id: int
    members: list[Member]
    label_conflict: bool

    @property
    def keeper(self) -> Member:
        return self.members[0]

    @property
    def labels(self) -> list[str]:
        return sorted({m.label for m in self.members if m.label})


@dataclass
class DuplicateResult:
    """All groups plus the counts the one-line summary reports."""

    groups: list[DuplicateGroup]
    listed: int
    failures: list[Failure]
    threshold: float
    # Catalog candidates (--index) that could not be compared: no image path, or unreadable.
    catalog_failures: list[Failure] = field(default_factory=list)
    mode: str = "within"  # or "against"
    score: str = "agreement"  # what the threshold applies to: "agreement" or "pair model"
    catalog: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def read(self) -> int:
        return self.listed - len(self.failures)

    @property
    def duplicates(self) -> int:
        """Images that could be removed: every input member except each group's keeper."""
        if self.mode == "against":
            return sum(sum(1 for m in g.members if m.source == SOURCE_INPUT) for g in self.groups)
        return sum(len(g.members) - 1 for g in self.groups)

    @property
    def label_conflicts(self) -> int:
        return sum(1 for g in self.groups if g.label_conflict)

    def summary(self) -> str:
        what = "new listings matching the catalog" if self.mode == "against" else "duplicates"
        unread = f", catalog items not compared {len(self.catalog_failures)}"
        return (
            f"images {self.listed}, read {self.read}, failed {len(self.failures)}, "
            f"groups {len(self.groups)}, {what} {self.duplicates}, "
            f"label conflicts {self.label_conflicts}{unread if self.catalog_failures else ''} "
            f"(threshold {self.threshold:.3f}, {self.score} score)"
        )


# Keeper rules: a key per criterion, larger is better; the id breaks remaining ties.
KEEP_RULES: dict[str, Callable[[Member], float]] = {
    "resolution": lambda m: float(m.pixels),
    "filesize": lambda m: float(m.file_size),
    "catalog": lambda m: 1.0 if m.source == SOURCE_CATALOG else 0.0,
}
DEFAULT_KEEP = ("resolution", "filesize")


def parse_keep(text: str | Sequence[str]) -> tuple[str, ...]:
    """``"resolution,filesize"`` -> validated rule names, in priority order."""
    names = [t.strip() for t in (text.split(",") if isinstance(text, str) else text) if t.strip()]
    unknown = [n for n in names if n not in KEEP_RULES]
    if unknown or not names:
        raise DataError(
            f"unknown keep rule(s) {', '.join(unknown) or '(none given)'}; "
            f"choose from {', '.join(KEEP_RULES)}"
        )
    return tuple(names)


def order_members(members: Sequence[Member], keep: Sequence[str] = DEFAULT_KEEP) -> list[Member]:
    """Members best-first by the keep rules (e.g. highest resolution, then largest file),
    then a file before a symbolic link (a link and its target tie on every rule, and a link
    kept by its id had its target marked for removal: deleting it left the link dangling),
    then by id so the choice is deterministic."""
    return sorted(
        members, key=lambda m: (*(-KEEP_RULES[r](m) for r in keep), os.path.islink(m.path), m.id)
    )


def has_label_conflict(members: Sequence[Member]) -> bool:
    """True when members carry two or more different non-empty labels."""
    return len({m.label for m in members if m.label}) > 1
