"""Errors that reach the user as one clear sentence instead of a traceback.

Every message names the file, record, option or step at fault and what was expected;
the CLI catches these and prints them without a stack trace.
"""


class FaceQueueError(Exception):
    """Base class for every error the CLI reports as a plain message."""


class DataError(FaceQueueError):
    """Input data is missing, malformed or inconsistent (names the file or record)."""


class ConfigError(FaceQueueError):
    """An option or config key is unknown or out of range (names the option)."""


class TrainingError(FaceQueueError):
    """Training cannot go on (names the step), e.g. a non-finite loss."""
