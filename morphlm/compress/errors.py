"""The one error type of the compression verbs (a ValueError, so the CLI prints it as a clear one-liner)."""


class CompressionError(ValueError):
    """Bad input to a compression verb: the message names the problem and the fix."""
