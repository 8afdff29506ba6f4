"""Errors shared across layers."""


class StageError(Exception):
    """An expected failure of a stage with a message a human can act on (missing data, a bad suite,
    a model that cannot be loaded, ...): the stage exits with exit_codes.FAILED (4) and the
    message, never a traceback."""
