"""The storage contract: small Protocols split by role.

Callers depend on these Protocols, never on a driver. Every backend lives in
its own subpackage, translates its driver's errors into
:mod:`metaas.server.storage.errors` with one ``Translator`` (``with
translated:`` around each driver call), and passes the conformance suite in
``tests/conformance``. What is the same for every backend is applied once,
around it: the retention (``retention.Retained``), spans and metrics
(``instrumented``), and the item codec's one ``Corrupt`` error.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Protocol

from metaas.server.model import Labels, Partial, PartialKey, Resolution, SeriesKey


class PartialWriter(Protocol):
    async def write_partials(self, partials: Sequence[Partial]) -> None:
        """Upsert each partial by its key (which includes its resolution).
        Idempotent: writing the same partials again changes nothing. All are
        written when it returns."""
        ...


class PartialReader(Protocol):
    async def read_partials(
        self,
        app: str,
        metric: str,
        start_ms: int,
        end_ms: int,
        resolution: Resolution = Resolution.MINUTE,
        series: Collection[SeriesKey] | None = None,
    ) -> Sequence[Partial]:
        """Every partial of the metric at ``resolution`` whose bucket starts
        in ``[start_ms, end_ms)``, from every writer, in any order; only
        those of ``series`` (of this app and metric) when it is given, which
        narrows the read before anything is decoded."""
        ...

    async def find_series(
        self, app: str, metric: str, start_ms: int, end_ms: int, matchers: Labels
    ) -> Sequence[SeriesKey]:
        """The metric's series whose labels hold every matcher (a name with
        that value) and that may have data in ``[start_ms, end_ms)``: every
        one that has, and maybe some that have not (an index knows hours, or
        the retention, not minutes). ``matchers`` is not empty. Reads an
        index, never a distribution."""
        ...

    async def get_partials(self, keys: Sequence[PartialKey]) -> Mapping[PartialKey, Partial]:
        """The stored partials among ``keys``; absent keys are left out."""
        ...

    async def list_series(
        self, app: str, start_ms: int, end_ms: int, metric: str | None = None
    ) -> Sequence[SeriesKey]:
        """Distinct series of the app with data in a minute of
        ``[start_ms, end_ms)``."""
        ...


class Storage(PartialReader, PartialWriter, Protocol):
    """A backend: reader and writer, with a name and a lifecycle."""

    @property
    def name(self) -> str:
        """Short backend name reported as ``served_by``, e.g. ``sqlite``."""
        ...

    async def close(self) -> None:
        """Release connections; the storage is unusable afterwards."""
        ...
