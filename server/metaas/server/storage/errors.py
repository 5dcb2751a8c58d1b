"""Domain errors every backend translates its driver's errors into."""

from __future__ import annotations


class StorageError(Exception):
    """A backend call failed. ``is_retryable`` says whether trying again later
    can succeed."""

    is_retryable = False

    def __init__(self, message: str, *, backend: str = "") -> None:
        super().__init__(message)
        self.backend = backend


class Unavailable(StorageError):
    """The backend cannot be reached or timed out."""

    is_retryable = True


class Throttled(StorageError):
    """The backend refused the call for capacity; retry with backoff."""

    is_retryable = True


class Invalid(StorageError):
    """The backend rejected the call as malformed; retrying will not help."""
