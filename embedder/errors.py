"""Errors raised by the embedder on bad user input (reported as one line by the CLI)."""

from collections.abc import Collection
from pathlib import Path

from common.errors import UserError, message_line
from common.fsutil import folder_write_problem


class EmbedderError(UserError):
    """Base class for embedder errors a user can fix."""


class DataError(EmbedderError):
    """A dataset path or manifest is missing, empty or malformed."""


class ImageError(EmbedderError):
    """An image cannot be decoded: corrupt, truncated, unsupported or a decompression bomb."""


class TrainingDivergedError(EmbedderError):
    """Training made the loss or the weights non-finite (a learning rate far too high)."""


class CheckpointError(EmbedderError):
    """A checkpoint folder is missing, incomplete or incompatible."""


class WeightsError(EmbedderError):
    """Pretrained weights cannot be obtained or do not fit the model."""


class EngineError(EmbedderError):
    """An inference runtime is unavailable here, or its graph is missing, stale or unusable."""


class NonFiniteOutputError(EngineError):
    """The model's outputs hold NaN or infinity: its weights are broken (or, while training,
    the run diverged)."""


def first_line(exc: BaseException) -> str:
    """``Type: first line of the message``: what a one-line error says of a library's error
    (timm, torch and ONNX Runtime messages run over many lines)."""
    named = type(exc).__name__
    return f"{named}: {message_line(exc)}" if str(exc).strip() else named


def check_output_folder(
    path: str | Path, owns: Collection[str] | None = None, files: Collection[str] = ()
) -> None:
    """:class:`DataError` now, not after minutes of work, when ``path`` cannot become (or stay)
    the output folder a command fills. ``owns``: the names the command writes there; a folder
    holding anything else (a data folder given as --out by mistake) is refused, since the
    command would mix its files into it, or replace one of the same name. ``files``: the
    names it writes as files (a folder of that name is refused)."""
    if Path(path).exists() and not Path(path).is_dir():
        raise DataError(f"{path}: exists and is not a folder")
    if owns is not None and Path(path).is_dir():
        foreign = sorted(
            p.name
            for p in Path(path).iterdir()
            if p.name not in owns and not p.name.startswith(".")  # hidden: temporaries too
        )
        if foreign:
            more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
            raise DataError(
                f"{path}: holds {foreign[0]!r}{more}, which this command does not write; give "
                "it a new or empty folder, or one of its earlier outputs"
            )
    folder = next((n for n in files if (Path(path) / n).is_dir()), None)
    if folder is not None:  # it would fail at the end, when the file replaces it
        raise DataError(f"{path}: {folder!r} is a folder where this command writes a file")
    problem = folder_write_problem(path, created=True)
    if problem:
        raise DataError(f"{path}: cannot write there: {problem}")
