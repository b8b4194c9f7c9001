"""Domain errors. Servers map them to gRPC status codes in one place (`sentiment.rpc.map_errors`)."""


class SentimentError(Exception):
    """Base of the errors whose message is safe to show to a caller."""


class InvalidInput(SentimentError):
    """The caller sent something unusable (empty text, bad parameter): INVALID_ARGUMENT."""


class NotFound(SentimentError):
    """A named job, model version or object does not exist: NOT_FOUND."""


class ModelNotReady(SentimentError):
    """No model is loaded yet, or the server is shutting down: UNAVAILABLE."""


class Overloaded(SentimentError):
    """The server's queue is full; retry later: RESOURCE_EXHAUSTED."""


class DeadlineExpired(SentimentError):
    """The caller's deadline passed before its work was computed, so it was not computed: DEADLINE_EXCEEDED."""


class FailedPrecondition(SentimentError):
    """The request is valid but the state does not allow it (cancel a finished job): FAILED_PRECONDITION."""


class Unauthenticated(SentimentError):
    """Missing or wrong credentials: UNAUTHENTICATED."""


class TooLarge(InvalidInput):
    """An object, file or field holds more than the limit set for it (INVALID_ARGUMENT when a caller sent it)."""


class InvalidDataset(SentimentError):
    """A dataset that cannot be read as Sentiment140 (not CSV, not gzip, no usable rows)."""


class BundleError(SentimentError):
    """A model bundle that must not be loaded: unknown format version, bad checksum, missing file."""


class ConfigError(SentimentError):
    """A missing or malformed configuration variable; the message names it."""
