"""Errors raised by the embedder on bad user input (reported as one line by the CLI)."""

from common.errors import UserError


class EmbedderError(UserError):
    """Base class for embedder errors a user can fix."""


class DataError(EmbedderError):
    """A dataset path or manifest is missing, empty or malformed."""


class ImageError(EmbedderError):
    """An image cannot be decoded: corrupt, truncated, unsupported or a decompression bomb."""


class CheckpointError(EmbedderError):
    """A checkpoint folder is missing, incomplete or incompatible."""


class WeightsError(EmbedderError):
    """Pretrained weights cannot be obtained or do not fit the model."""


class EngineError(EmbedderError):
    """An inference runtime is unavailable here, or its graph is missing, stale or unusable."""
