"""User-facing errors: the CLI prints these as one line and exits non-zero, never a traceback."""


class FpnstreamError(Exception):
    """An error caused by input or environment that the user can fix."""

    exit_code = 2


class ConfigError(FpnstreamError):
    pass


class SourceError(FpnstreamError):
    pass


class ModelError(FpnstreamError):
    pass


class SinkError(FpnstreamError):
    pass


class StreamUnwritable(SinkError):
    """One of a stream's Redis keys holds another type (someone wrote over it): its frames
    can never be written there. That stream fails; retrying would not help."""


class JobConflict(FpnstreamError):
    """Another job is running on the same Redis prefix."""
