"""The flags of the catalog-aware predictions and rankings shared by ``phonesim evaluate`` and
``phonesim serve`` (kNN fusion, class re-rank, text cues): one spelling, one set of defaults
(from :mod:`embedder.knn_vote`, :mod:`embedder.class_rerank` and :mod:`embedder.text_cues`),
one range check."""

from __future__ import annotations

import argparse

from common.argtypes import non_negative_float, positive_float, positive_int, probability
from common.errors import UserError
from common.extras import install_hint
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
from embedder.text_cues import DEFAULT_GATE as TEXT_GATE
from embedder.text_cues import DEFAULT_WEIGHT as TEXT_WEIGHT
from embedder.text_cues import check_gate
from embedder.text_reader import DEFAULT_ROTATIONS, ROTATIONS, TextOptions, check_rotations


def add_knn_fusion_options(parser: argparse.ArgumentParser, neighbours: str) -> None:
    """``--knn-fusion/--no-knn-fusion``, ``--knn-k``, ``--knn-weight``, ``--knn-temperature``;
    ``neighbours`` says in the help where the voting neighbours come from."""
    parser.add_argument(
        "--knn-fusion",
        action=argparse.BooleanOptionalAction,
        default=FUSE_BY_DEFAULT,
        help="predict the class from the classifier's probabilities fused with a "
        f"similarity-weighted vote of the labels of the nearest {neighbours} (default: "
        + ("on; --no-knn-fusion for the classifier alone)" if FUSE_BY_DEFAULT else "off)"),
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


def rotations(text: str) -> tuple[int, ...]:
    """``--text-rotations``: comma-separated degrees, each one of ROTATIONS."""
    try:
        return check_rotations([int(v) for v in text.split(",") if v.strip()])
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected some of {', '.join(map(str, ROTATIONS))} separated by commas, got {text!r}"
        ) from None


def gate(text: str) -> float:
    """``--text-gate``: a number above 0 and at most 1."""
    try:
        value = float(text)
        check_gate(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number above 0 and at most 1, got {text!r}"
        ) from None
    return value


def add_text_cue_options(parser: argparse.ArgumentParser, cost: str) -> None:
    """``--read-text``, ``--text-cues FILE``, ``--text-weight``, ``--text-rotations``,
    ``--text-gate``; ``cost`` says in the help what reading costs where the command runs it."""
    parser.add_argument(
        "--read-text",
        action="store_true",
        help="read the text on each photo predicted below --text-gate (RapidOCR: "
        f"{install_hint('ocr')}) and add the classes it names (their labels, and the --text-cues "
        "words) to the prediction, so a "
        f"photo whose text names a class leans to it whatever its backdrop looks like; {cost}",
    )
    parser.add_argument(
        "--text-cues",
        metavar="FILE",
        help='JSON {"label": ["word", ...]} of words that name a class besides its label '
        '(sub-brands, product lines, slogans: {"xiaomi": ["redmi", "poco"]}), or a file from '
        "phonesim learn-text, which adds examples of text read on each class's photos; implies "
        "--read-text",
    )
    parser.add_argument(
        "--text-weight",
        type=non_negative_float,
        metavar="WEIGHT",
        help="how much the classes the text names add to the prediction's probabilities "
        f"(they sum to 1; at 1 or more a cue naming one class decides) (default {TEXT_WEIGHT:g})",
    )
    parser.add_argument(
        "--text-rotations",
        type=rotations,
        metavar="DEGREES",
        help="read each photo turned by these angles, each one a full OCR pass: a logo along a "
        "phone's back reads sideways "
        f"(default {','.join(map(str, DEFAULT_ROTATIONS))}; 0 alone is a third of the cost)",
    )
    parser.add_argument(
        "--text-gate",
        type=gate,
        metavar="P",
        help="read only the photos whose prediction without the text gives its top class less "
        "than P: a sure prediction is rarely changed by the text, so much of the reading is "
        f"saved; 1 reads every photo (default {TEXT_GATE:g})",
    )


def check_text_cue_options(args: argparse.Namespace) -> None:
    """--text-cues implies --read-text; the other text flags without it are a usage error."""
    if args.text_cues is not None:
        if not args.text_cues.strip():  # `--text-cues ""`: no file, said as such
            raise UserError("--text-cues needs a file name")
        args.read_text = True
    # Not given is None (the default value given explicitly had passed, while any other
    # value was refused): then the defaults are filled in.
    defaults = {
        "text_weight": TEXT_WEIGHT,
        "text_rotations": DEFAULT_ROTATIONS,
        "text_gate": TEXT_GATE,
    }
    # Remembered: a second check of the same flags must not take the filled-in defaults for
    # given ones.
    if not hasattr(args, "text_flags_given"):
        args.text_flags_given = [n for n in defaults if getattr(args, n, None) is not None]
    given = args.text_flags_given
    if given and not args.read_text:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        raise UserError(f"{flags}: reading text options, they need --read-text (or --text-cues)")
    for name, value in defaults.items():
        if getattr(args, name, None) is None:
            setattr(args, name, value)


def text_options_from_args(args: argparse.Namespace) -> TextOptions | None:
    """The text reading the flags ask for, or None (checked by :func:`check_text_cue_options`)."""
    check_text_cue_options(args)
    if not args.read_text:
        return None
    return TextOptions(args.text_cues, args.text_weight, args.text_rotations, args.text_gate)
