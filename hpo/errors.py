"""The exception tree: one root, user errors that stop a command, failures that end one trial."""

from hpo.redact import redact_text


def first_line(exc: BaseException, limit: int | None = 300) -> str:
    """The first line of an exception's message (cut to `limit` characters, passwords masked), or
    its type name."""
    text = redact_text(str(exc)).strip().splitlines()
    return text[0][:limit] if text else type(exc).__name__


class HpoError(Exception):
    """Root of every error this package raises on purpose; the CLI prints it as one line."""


class ConfigError(HpoError, ValueError):
    """A configuration or search space breaks its schema; names the file and the key."""


class DataContractError(HpoError, ValueError):
    """A data file breaks the data contract; names the file and the key."""


class TrackingError(HpoError):
    """The MLflow tracking server or registry cannot be used as asked."""


class TrialFailed(HpoError):
    """One trial cannot finish (NaN loss, out of memory); only that trial is marked FAIL.

    Args:
        kind: what failed, the prefix of the trial's fail_reason: "config" (a point no network
            or split can be made of), "data" (the file changed), "tracking"; None for the
            training itself (NaN loss, out of memory).
    """

    def __init__(self, message: str = "", *, kind: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind
