"""The one base class of mf-harness's user-facing errors.

An `MfHarnessError` is a problem with the user's input (a spec, a dataset row, an
image, a prompt) rather than a bug: the CLIs print its message alone, without a
traceback, and exit non-zero.
"""

__all__ = ["MfHarnessError", "DataError"]


class MfHarnessError(Exception):
    """Bad input: printed as one clear message by the command-line tools."""


class DataError(MfHarnessError, ValueError):
    """A dataset row, file or image that cannot be used (missing image, malformed row, ...)."""
