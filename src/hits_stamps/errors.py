"""Errors that the command line reports as one line, without a traceback."""


class HitsStampsError(Exception):
    """Base class for user-facing errors (bad input, bad arguments, refused operations)."""


class StampFileError(HitsStampsError, ValueError):
    """A stamp, sequence or model file is missing, malformed, or of the wrong kind.

    The message names the file, the field, what was expected and what was found.
    """

    def __init__(self, path, field: str | None, expected: str, found: str):
        self.path = str(path)
        self.field = field
        self.expected = expected
        self.found = found
        where = f"{self.path}" + (f" [{field}]" if field else "")
        super().__init__(f"{where}: expected {expected}; found {found}")


class NotFittedError(HitsStampsError, RuntimeError):
    """An estimator was used before `fit`."""


class ParameterError(HitsStampsError, ValueError):
    """An estimator or config got a parameter it does not have (a ValueError, as scikit-learn expects)."""
