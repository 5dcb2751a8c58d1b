"""Write samples to the Kafka topic that ``metaas serve --kafka-brokers``
consumes, instead of calling Write over gRPC.

Needs the ``kafka`` extra (``pip install 'metaas-client[kafka]'``), which
brings confluent-kafka. Only this module imports it: ``import
metaas.client`` keeps the gRPC client's small set of dependencies.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, Final

try:
    from confluent_kafka import KafkaError, KafkaException, Message, Producer
except ImportError as missing:
    raise ImportError(
        "metaas.client.kafka needs confluent-kafka: install metaas-client[kafka]"
    ) from missing

from metaas.client._convert import write_request
from metaas.client._types import Series

__all__ = [
    "DEFAULT_TOPIC",
    "PRODUCER_DEFAULTS",
    "KafkaWriteError",
    "KafkaWriter",
    "MessageLimits",
]

DEFAULT_TOPIC: Final = "metaas.observations"

PRODUCER_DEFAULTS: Final[Mapping[str, Any]] = {
    # A message counts as delivered once every in-sync replica has it, and
    # retries never duplicate or reorder an app's messages.
    "acks": "all",
    "enable.idempotence": True,
    "compression.type": "zstd",
    # Messages produced within a few milliseconds share a compressed batch.
    "linger.ms": 5,
}
"""The librdkafka settings a :class:`KafkaWriter` starts from."""

# The most one sample adds to a message: a packed double (8 bytes) and a
# time as a varint (at most 10 bytes).
_SAMPLE_BYTES: Final = 18
# The most a series adds besides its samples and names: the field tags and
# length prefixes of the series, its app, metric and two packed lists.
_SERIES_BYTES: Final = 36
# The same for each label: an entry's tags and three length prefixes.
_LABEL_BYTES: Final = 18

# Failures that sending again cannot fix: the message or the topic has to change.
_REFUSED: Final = frozenset(
    {
        KafkaError.MSG_SIZE_TOO_LARGE,
        KafkaError.RECORD_LIST_TOO_LARGE,
        KafkaError.INVALID_RECORD,
        KafkaError._INVALID_ARG,
        KafkaError.TOPIC_EXCEPTION,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError._UNKNOWN_TOPIC,
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.CLUSTER_AUTHORIZATION_FAILED,
    }
)

# librdkafka logs through this logger; it stays silent unless the
# application configures logging.
_log = logging.getLogger(__name__)
_log.addHandler(logging.NullHandler())


@dataclasses.dataclass(frozen=True, slots=True)
class MessageLimits:
    """How much one message holds at most: series, samples, and bytes
    before compression.

    The defaults are well under what the server accepts in one WriteRequest
    (10,000 series, 500,000 samples and 16 MiB by default) and what Kafka
    accepts in one message (about 1 MB by default)."""

    max_series: int = 1_000
    max_samples: int = 50_000
    max_bytes: int = 512 * 1024

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            limit = getattr(self, field.name)
            if limit < 1:
                raise ValueError(f"MessageLimits.{field.name} is {limit}: give 1 or more")


class KafkaWriteError(Exception):
    """Messages the broker did not take: how many, with how many samples,
    and why.

    ``is_retryable`` is false when sending the same messages again cannot
    help (a message too large, an unknown topic, a refused authorization),
    and true when they may go through later (no broker reachable, a delivery
    timeout)."""

    def __init__(
        self,
        topic: str,
        messages: int,
        samples: int,
        reasons: Sequence[str],
        *,
        is_retryable: bool,
        broker_error: str | None = None,
    ) -> None:
        text = (
            f"{_count(messages, 'message')} ({_count(samples, 'sample')}) not delivered to "
            f"topic {topic}: {'; '.join(reasons)}"
        )
        if broker_error is not None:
            text += f" (last broker error: {broker_error})"
        super().__init__(text)
        self.topic = topic
        self.messages = messages
        self.samples = samples
        self.reasons = tuple(reasons)
        self.is_retryable = is_retryable
        self.broker_error = broker_error


@dataclasses.dataclass(slots=True)
class _Failures:
    """Messages that failed since they were last reported."""

    messages: int = 0
    samples: int = 0
    reasons: dict[str, None] = dataclasses.field(default_factory=dict)
    codes: set[int] = dataclasses.field(default_factory=set)


class KafkaWriter:
    """Produces samples to a Kafka topic as ``metaas.v1.WriteRequest``
    messages, for ``metaas serve --kafka-brokers`` to consume.

    :meth:`write` takes what :meth:`Client.write <metaas.client.Client.write>`
    takes. It groups the series by app and packs each app's series into
    messages of one app each, split so that every message stays well under
    the server's request limits. Each message is keyed by its app (utf-8),
    so an app's messages land on one partition in the order written; they
    are compressed with zstd, and delivered in the background.

    The consumer validates each message as Write validates a request, and
    applies all of a message or none of it (an invalid one goes to the
    dead-letter topic, whole). A write split over several messages is
    applied message by message.

    :meth:`flush` waits for every message written so far, and raises
    :class:`KafkaWriteError` when some were not delivered; :meth:`close`
    flushes, and so does leaving a ``with`` block. Its methods may be
    called from several threads.

    Example::

        with KafkaWriter("127.0.0.1:9092") as writer:
            writer.write([Series("shop", "router.latency_ms", [now_ms], [12.5])])
    """

    def __init__(
        self,
        brokers: str | Sequence[str],
        topic: str = DEFAULT_TOPIC,
        *,
        limits: MessageLimits = MessageLimits(),
        delivery_timeout: float = 120.0,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        """Create the producer; it connects in the background.

        Args:
            brokers: ``HOST:PORT``, several of them comma-separated or as a
                sequence: where the client first asks for the cluster.
            topic: the topic ``metaas serve`` consumes (``--kafka-topic``).
            limits: how much one message holds at most.
            delivery_timeout: seconds a message may wait for the broker,
                retries included, before it counts as not delivered.
            config: more librdkafka settings (security, ``client.id``...),
                over :data:`PRODUCER_DEFAULTS`.

        Raises:
            ValueError: a delivery timeout not above 0.
            confluent_kafka.KafkaException: a setting librdkafka refuses.
        """
        if not delivery_timeout > 0:
            raise ValueError(f"delivery_timeout is {delivery_timeout}: give seconds above 0")
        self.topic = topic
        self.limits = limits
        self._lock = threading.Lock()
        self._failures = _Failures()
        self._broker_error: str | None = None
        self._delivered_samples = 0
        self._delivered_messages = 0
        self._closed = False
        servers = brokers if isinstance(brokers, str) else ",".join(brokers)
        self._producer = Producer(
            {
                **PRODUCER_DEFAULTS,
                "message.timeout.ms": int(delivery_timeout * 1000),
                **(config or {}),
                "bootstrap.servers": servers,
                "error_cb": self._on_error,
                "logger": _log,
            }
        )

    @property
    def delivered_samples(self) -> int:
        """Samples in messages the broker has acknowledged."""
        return self._delivered_samples

    @property
    def delivered_messages(self) -> int:
        """Messages the broker has acknowledged."""
        return self._delivered_messages

    def write(self, series: Iterable[Series]) -> int:
        """Queue samples for delivery, one message per app at least.

        Args:
            series: the samples, one :class:`Series` per (app, metric,
                labels); the same series may appear more than once. Times
                are Unix epoch milliseconds, within the server's retention
                and at most a few minutes ahead of its clock; values are
                finite.

        Returns:
            How many samples were queued. They are delivered in the
            background; :meth:`flush` says whether they all were.

        Raises:
            KafkaWriteError: librdkafka refused a message before sending it
                (the messages before it stay queued).
            RuntimeError: the writer is closed.
        """
        if self._closed:
            raise RuntimeError("this KafkaWriter is closed")
        queued = 0
        for app, chunk, samples in _messages(series, self.limits):
            value = write_request(chunk, "").SerializeToString()
            on_delivery = functools.partial(self._on_delivery, samples)
            self._produce(app.encode(), value, on_delivery, samples)
            queued += samples
        self._producer.poll(0)
        return queued

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every message written so far is delivered or has
        failed.

        Args:
            timeout: seconds to wait at most; None waits as long as
                delivery may take (the delivery timeout).

        Raises:
            KafkaWriteError: messages failed since the last error raised;
                each failure is reported once.
            TimeoutError: ``timeout`` passed with messages still waiting.
        """
        waiting = self._producer.flush(-1 if timeout is None else timeout)
        self._raise_failures()
        if waiting:
            raise TimeoutError(f"{_count(waiting, 'message')} still waiting after {timeout} s")

    def close(self) -> None:
        """Flush; writing afterwards raises.

        Raises:
            KafkaWriteError: as :meth:`flush` does.
        """
        if self._closed:
            return
        self._closed = True
        # Producer.close() is newer than some confluent-kafka versions the
        # extra allows; the producer's threads end when it is collected.
        self.flush()

    def __enter__(self) -> KafkaWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _produce(
        self,
        key: bytes,
        value: bytes,
        on_delivery: Callable[[KafkaError | None, Message], None],
        samples: int,
    ) -> None:
        while True:
            try:
                self._producer.produce(self.topic, value, key, on_delivery=on_delivery)
            except BufferError:
                # librdkafka's queue is full: serve deliveries until it has room.
                self._producer.poll(0.1)
                continue
            except KafkaException as error:
                failure: KafkaError = error.args[0]
                raise KafkaWriteError(
                    self.topic,
                    1,
                    samples,
                    [failure.str()],
                    is_retryable=failure.code() not in _REFUSED,
                ) from error
            return

    def _on_delivery(self, samples: int, error: KafkaError | None, message: Message) -> None:
        with self._lock:
            if error is None:
                self._delivered_samples += samples
                self._delivered_messages += 1
                self._broker_error = None
                return
            self._failures.messages += 1
            self._failures.samples += samples
            self._failures.reasons[error.str()] = None
            self._failures.codes.add(error.code())

    def _on_error(self, error: KafkaError) -> None:
        with self._lock:
            self._broker_error = error.str()

    def _raise_failures(self) -> None:
        with self._lock:
            failures, self._failures = self._failures, _Failures()
            broker_error = self._broker_error
        if failures.messages:
            raise KafkaWriteError(
                self.topic,
                failures.messages,
                failures.samples,
                list(failures.reasons),
                is_retryable=not failures.codes & _REFUSED,
                broker_error=broker_error,
            )


def _messages(
    series: Iterable[Series], limits: MessageLimits
) -> Iterator[tuple[str, list[Series], int]]:
    """Each message's app, series and sample count: the series grouped
    by app in the order given, split where a message would overflow."""
    by_app: dict[str, list[Series]] = {}
    for item in series:
        by_app.setdefault(item.app, []).append(item)
    for app, group in by_app.items():
        for chunk, samples in _split(group, limits):
            yield app, chunk, samples


def _split(group: Iterable[Series], limits: MessageLimits) -> Iterator[tuple[list[Series], int]]:
    chunk: list[Series] = []
    samples = size = 0
    for item in group:
        overhead = _series_bytes(item)
        total = len(item.times_ms)
        # Times and values that do not align go whole: the consumer
        # refuses the message as Write would refuse the request.
        whole = total != len(item.values)
        start = 0
        while True:
            left = total - start
            room = min(
                limits.max_samples - samples,
                (limits.max_bytes - size - overhead) // _SAMPLE_BYTES,
            )
            take = left if whole else min(left, room)
            full = len(chunk) >= limits.max_series or take > room or take < min(left, 1)
            if chunk and full:
                yield chunk, samples
                chunk, samples, size = [], 0, 0
                continue
            # An empty message has room for one sample at least.
            take = max(take, min(left, 1))
            if take == total:
                chunk.append(item)
            else:
                end = start + take
                part = dataclasses.replace(
                    item, times_ms=item.times_ms[start:end], values=item.values[start:end]
                )
                chunk.append(part)
            samples += take
            size += overhead + take * _SAMPLE_BYTES
            start += take
            if start >= total:
                break
    if chunk:
        yield chunk, samples


def _series_bytes(series: Series) -> int:
    """The most a series adds to a message besides its samples."""
    names = len(series.app.encode()) + len(series.metric.encode())
    labels = sum(
        _LABEL_BYTES + len(name.encode()) + len(value.encode())
        for name, value in series.labels.items()
    )
    return _SERIES_BYTES + names + labels


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"
