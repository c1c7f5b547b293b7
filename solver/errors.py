"""Errors that reach the user as one line and a non-zero exit.

Every problem with user input (configs, microstructure files, stores, models)
raises a subclass of :class:`SlipstreamError` whose message is a single line
naming the problem; the CLI prints it as ``slipstream: error: <message>`` and
exits with status 2. Anything else is a bug and keeps its traceback.
"""


class SlipstreamError(Exception):
    """Base class of all user-facing errors (one-line message)."""


class ConfigError(SlipstreamError, ValueError):
    """A configuration is malformed, incomplete or out of range."""


class InputFileError(SlipstreamError, ValueError):
    """An input file (EBSD map, grid, mesh) is missing, corrupt or unsupported."""


class StoreError(SlipstreamError, ValueError):
    """A Zarr store is missing, of another schema, or does not fit the request."""


class ModelError(SlipstreamError, ValueError):
    """A surrogate model directory or checkpoint is missing, corrupt, or does not fit."""


class SolverError(SlipstreamError, RuntimeError):
    """The solver could not converge even after the allowed load-step cutbacks."""


def finite_number(value, what: str) -> float:
    """``float(value)`` for a finite real number (not a bool), else a one-line :class:`ConfigError`."""
    import math

    if isinstance(value, bool):
        raise ConfigError(f"{what} must be a number, got {value!r}")
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be a number, got {value!r}") from None
    if not math.isfinite(out):
        raise ConfigError(f"{what} must be finite, got {value!r}")
    return out
