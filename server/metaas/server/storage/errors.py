"""Domain errors every backend translates its driver's errors into, and the
one way a backend translates them (:class:`Translator`)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import TracebackType
from typing import Final


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


class Corrupt(StorageError):
    """A stored item cannot be decoded (damaged, truncated, or not written by
    metaas); reading it again will not help. The item codec raises it, so it
    is the same error on every backend."""


# A driver error to its domain error, or None when it is no driver error
# (a programming error, which passes unchanged).
Classify = Callable[[Exception], StorageError | None]


class Translator:
    """A backend's one error translation: ``with translated:`` around every
    driver call (``translated = Translator(NAME, classify)``, once per
    backend). On an error, in this order:

    1. cancellation passes unchanged, and so does any error while the task
       is being cancelled (its deadline passed): raised as cancellation,
       never blamed on storage;
    2. a domain error passes unchanged, with the backend named;
    3. ``classify`` maps a driver error to a domain error;
    4. anything else (a programming error) passes unchanged.

    It holds no state: one instance serves every call, nested or concurrent.
    """

    __slots__ = ("_classify", "backend")

    def __init__(self, backend: str, classify: Classify) -> None:
        self.backend: Final = backend
        self._classify = classify

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if error is None or not isinstance(error, Exception):
            return  # success, cancellation, interrupts: unchanged
        if _cancelling():
            raise asyncio.CancelledError() from error
        if isinstance(error, StorageError):
            if not error.backend:
                error.backend = self.backend
            return
        translated = self._classify(error)
        if translated is not None:
            translated.backend = self.backend
            raise translated from error


def _cancelling() -> bool:
    """Whether the running task is being cancelled (a caller's deadline or
    cancellation is on its way); False outside a task."""
    try:
        task = asyncio.current_task()
    except RuntimeError:  # no running loop: a worker thread
        return False
    return task is not None and task.cancelling() > 0
