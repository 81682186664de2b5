"""The flags of the catalog-aware predictions and rankings shared by ``phonesim evaluate`` and
``phonesim serve`` (kNN fusion, class re-rank): one spelling, one set of defaults (from
:mod:`embedder.knn_vote` and :mod:`embedder.class_rerank`), one range check."""

from __future__ import annotations

import argparse

from common.argtypes import non_negative_float, positive_float, positive_int, probability
from embedder.class_rerank import DEFAULT_POOL as RERANK_POOL
from embedder.class_rerank import DEFAULT_WEIGHT as RERANK_WEIGHT
from embedder.class_rerank import ClassRerank, class_rerank
from embedder.knn_vote import (
    DEFAULT_K,
    DEFAULT_TEMPERATURE,
    DEFAULT_WEIGHT,
    FUSE_BY_DEFAULT,
    KnnFusion,
)


def add_knn_fusion_options(parser: argparse.ArgumentParser, neighbours: str) -> None:
    """``--knn-fusion/--no-knn-fusion``, ``--knn-k``, ``--knn-weight``, ``--knn-temperature``;
    ``neighbours`` says in the help where the voting neighbours come from."""
    parser.add_argument(
        "--knn-fusion",
        action=argparse.BooleanOptionalAction,
        default=FUSE_BY_DEFAULT,
        help="predict the class from the classifier's probabilities fused with a "
        f"similarity-weighted vote of the labels of the nearest {neighbours}",
    )
    parser.add_argument(
        "--knn-k",
        type=positive_int,
        default=DEFAULT_K,
        help=f"neighbours that vote under --knn-fusion (default {DEFAULT_K})",
    )
    parser.add_argument(
        "--knn-weight",
        type=probability,
        default=DEFAULT_WEIGHT,
        help="the vote's share of the fused prediction, 0 (classifier only) to 1 (vote only) "
        f"(default {DEFAULT_WEIGHT})",
    )
    parser.add_argument(
        "--knn-temperature",
        type=positive_float,
        default=DEFAULT_TEMPERATURE,
        help="how sharply closer neighbours outvote farther ones: each counts "
        f"exp(similarity / T) (default {DEFAULT_TEMPERATURE})",
    )


def knn_fusion_from_args(args: argparse.Namespace) -> KnnFusion | None:
    """The fusion the flags ask for, or None when ``--no-knn-fusion``."""
    if not args.knn_fusion:
        return None
    return KnnFusion(k=args.knn_k, temperature=args.knn_temperature, weight=args.knn_weight)


def add_class_rerank_option(parser: argparse.ArgumentParser, also: str = "") -> None:
    """``--class-rerank WEIGHT``: how much the classifier re-ranks a photo's first neighbours
    (``also``: what else the command re-ranks, said in the help)."""
    parser.add_argument(
        "--class-rerank",
        type=non_negative_float,
        default=RERANK_WEIGHT,
        metavar="WEIGHT",
        help=f"re-rank a photo's {RERANK_POOL} most similar catalog items by similarity + "
        "WEIGHT x the classifier's probability of the item's label, so that the first hit "
        f"is more often the photo's own brand{also}; 0: similarity order "
        f"(default {RERANK_WEIGHT})",
    )


def class_rerank_from_args(args: argparse.Namespace) -> ClassRerank | None:
    """The re-rank the flag asks for, or None for similarity order."""
    return class_rerank(args.class_rerank)
