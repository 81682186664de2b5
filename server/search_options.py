"""The options of a search (``k``, ``filter``, ``score_threshold``, ``offset``, ``ranking``,
``read_text``) from a JSON body, a batch entry or the query string, each checked (400 naming the
option)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from werkzeug.datastructures import MultiDict

from server.errors import ApiError
from server.filters import check_filter, merge_filters
from server.inputs import (
    check_query_params,
    parse_k,
    parse_offset,
    parse_ranking,
    parse_read_text,
    parse_threshold,
)
from server.limits import parse_json
from server.service import LookupService

OPTION_FIELDS = ("k", "filter", "score_threshold", "offset", "ranking", "read_text")
# Query parameters of the search endpoints besides the filters.
QUERY_OPTIONS = ("k", "score_threshold", "offset", "ranking", "read_text")
# Those of a catalog item's neighbours: no photo to read.
ITEM_QUERY_OPTIONS = tuple(o for o in QUERY_OPTIONS if o != "read_text")


@dataclass(frozen=True)
class SearchOptions:
    k: int
    flt: dict[str, Any] | None = None
    offset: int = 0
    threshold: float | None = None
    ranking: str | None = None  # asked for; None: the server's (see ``applied``)
    # An uploaded photo's text reading, asked for; None: "auto" (see ``text_mode``).
    read_text: str | None = None

    @property
    def text_mode(self) -> str:
        """When an uploaded photo's text is read: "auto" (below the server's gate), "always"
        or "never"; a server that does not read text reads none whatever the mode."""
        return self.read_text or "auto"

    def applied(self, classes: bool, svc: LookupService) -> SearchOptions:
        """These options with the ranking the query gets: "class" only for a query whose
        classes are known (an uploaded photo's probabilities, a catalog item's label: see
        :meth:`LookupService.item_classes`) on a server that re-ranks (``--class-rerank``
        above 0), unless "similarity" was asked for; every other query is in similarity order
        (the answer says which)."""
        reranks = classes and svc.config.rerank is not None and self.ranking != "similarity"
        return replace(self, ranking="class" if reranks else "similarity")

    def echo(self) -> dict[str, Any]:
        """The options as an answer repeats them."""
        return {
            "k": self.k,
            "filter": self.flt,
            "offset": self.offset,
            "score_threshold": self.threshold,
            "ranking": self.ranking,
        }


def reject_unknown_fields(
    fields: Mapping[str, Any], allowed: tuple[str, ...], what: str = "field"
) -> None:
    """A misspelt field ("filters") must not be silently ignored."""
    unknown = sorted(set(fields) - set(allowed))
    if unknown:
        takes = ", ".join(map(repr, allowed)) or "no fields besides 'image'"
        raise ApiError(
            400,
            "invalid_request",
            f"unknown {what}(s) {', '.join(map(repr, unknown))}; this endpoint takes {takes}",
        )


def form_options(fields: Mapping[str, Any]) -> dict[str, Any]:
    """A multipart form's options as a JSON body has them: its ``filter`` field is the text
    of a JSON object (as the add's ``metadata`` is); the other fields parse from text."""
    out = dict(fields)
    if "filter" in out:
        out["filter"] = parse_json(out["filter"], "'filter'", code="invalid_filter")
    return out


def _no_nulls(body: Mapping[str, Any]) -> None:
    for key in OPTION_FIELDS:
        if key in body and body[key] is None:
            raise ApiError(400, f"invalid_{key}", f"'{key}' must not be null; leave it out")


def checked_read_text(svc: LookupService, value: Any) -> str | None:
    """``read_text`` parsed, and refused as "always" by a server that cannot read text: the
    client asked for something it will not get (auto and never need no reader)."""
    mode = parse_read_text(value)
    if mode == "always" and svc.text is None:
        raise ApiError(
            400,
            "text_reading_off",
            "read_text 'always' needs a server that reads text (phonesim serve --read-text); "
            "this one does not (GET /v1/info: prediction.read_text)",
        )
    return mode


def requested_read_text(svc: LookupService, body: Mapping[str, Any], args: Mapping) -> str | None:
    """``read_text`` of a request: the body's (JSON or form), then the query string's, which
    wins; the body's is checked even then, and null is refused."""
    if "read_text" in body and body["read_text"] is None:
        raise ApiError(400, "invalid_read_text", "'read_text' must not be null; leave it out")
    mode = checked_read_text(svc, body.get("read_text"))
    return checked_read_text(svc, args["read_text"]) if "read_text" in args else mode


def request_options(
    svc: LookupService,
    body: Mapping[str, Any],
    args: MultiDict,
    query_options: tuple[str, ...] = QUERY_OPTIONS,
) -> SearchOptions:
    """Options of a single search: JSON body fields, then the query string (which wins; a
    filter field may be given in one of them only); ``query_options``: the parameters the
    endpoint takes besides the filters."""
    check_query_params(args, query_options, filters=True)
    _no_nulls(body)
    cfg = svc.config
    # Body values are checked even when the query string overrides them.
    body_k = parse_k(body.get("k"), cfg.default_k, cfg.max_k)
    body_offset = parse_offset(body.get("offset"))
    body_threshold = parse_threshold(body.get("score_threshold"))
    body_ranking = parse_ranking(body.get("ranking"))
    read_text = requested_read_text(svc, body, args)
    return SearchOptions(
        k=parse_k(args.get("k"), body_k, cfg.max_k),
        flt=merge_filters(args.lists(), body.get("filter"), svc.filterable_fields),
        offset=parse_offset(args.get("offset")) if "offset" in args else body_offset,
        threshold=(
            parse_threshold(args.get("score_threshold"))
            if "score_threshold" in args
            else body_threshold
        ),
        ranking=parse_ranking(args.get("ranking")) if "ranking" in args else body_ranking,
        read_text=read_text,
    )


def entry_options(
    svc: LookupService, entry: Mapping[str, Any], defaults: SearchOptions
) -> SearchOptions:
    """Options of one batch entry: its own fields, else the batch's (an entry's filter
    replaces the batch's)."""
    _no_nulls(entry)
    flt = defaults.flt
    if "filter" in entry:
        flt = check_filter(entry["filter"], svc.filterable_fields) or None
    return SearchOptions(
        k=parse_k(entry.get("k"), defaults.k, svc.config.max_k),
        flt=flt,
        offset=parse_offset(entry["offset"]) if "offset" in entry else defaults.offset,
        threshold=(
            parse_threshold(entry["score_threshold"])
            if "score_threshold" in entry
            else defaults.threshold
        ),
        ranking=parse_ranking(entry["ranking"]) if "ranking" in entry else defaults.ranking,
        read_text=(
            checked_read_text(svc, entry["read_text"])
            if "read_text" in entry
            else defaults.read_text
        ),
    )


def search_with(
    svc: LookupService,
    vector: Any,
    opts: SearchOptions,
    exclude_ids: list[str] | None = None,
    probabilities: Any = None,
) -> tuple[list, float]:
    """The search ``opts`` ask for (ranking applied: :meth:`SearchOptions.applied`);
    ``probabilities``: the query's classes (an uploaded photo's, a catalog item's), which
    re-rank its first hits when the ranking is "class" (see :meth:`LookupService.search`)."""
    if opts.ranking != "class":
        probabilities = None
    return svc.search(
        vector,
        opts.k,
        opts.flt,
        exclude_ids,
        offset=opts.offset,
        threshold=opts.threshold,
        probabilities=probabilities,
    )
