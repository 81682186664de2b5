"""Errors of the feature export that a user can fix (reported as one line by the CLI)."""

from common.errors import UserError


class ExportError(UserError):
    """Bad export input: an unusable output path, duplicate ids, or nothing readable."""


class ResumeError(ExportError):
    """Partial progress on disk belongs to a different checkpoint or input list."""


class RayUnavailableError(ExportError):
    """``--ray`` was asked for but Ray (with Ray Data) is not installed."""
