"""``metaas write --kafka-brokers``: the samples go to the Kafka topic that
``metaas serve --kafka-brokers`` consumes, instead of over gRPC to --target.

The client library's KafkaWriter produces them; it is imported only when
used, so the other commands never load librdkafka.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import click
from click.core import ParameterSource

from metaas.client import Series
from metaas.server.cli._errors import Refused, Unavailable
from metaas.server.cli._params import UsageError
from metaas.server.config import KafkaConfig, Setting, setting_of

# The rules metaas serve applies to its own --kafka-brokers and --kafka-topic.
_BROKERS: Final = setting_of(KafkaConfig, "brokers")
_TOPIC: Final = setting_of(KafkaConfig, "topic")
# How long a message may wait for a broker: an unreachable one fails the
# command after this long instead of after librdkafka's five minutes.
DELIVERY_TIMEOUT_S: Final = 10.0


class Accepted(click.ParamType[str, Any]):
    """Text that a setting of ``metaas serve`` accepts."""

    def __init__(self, setting: Setting, metavar: str) -> None:
        self.setting = setting
        self.name = metavar

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value).strip()
        accepts = self.setting.accepts
        if accepts is not None and not accepts.test(text):
            self.fail(f"{value!r} is not {accepts.description}", param, ctx)
        return text


@dataclass(frozen=True, slots=True)
class KafkaTarget:
    """Where ``metaas write --kafka-brokers`` produces."""

    brokers: str
    topic: str

    def produce(self, batches: Iterable[Sequence[Series]], series: int) -> str:
        """Produce each batch and wait until all are delivered: the summary
        line. Raises Unavailable (exit 4) when the brokers could not take
        them and Refused (exit 3) when resending cannot help, on one line
        naming the brokers, the messages not delivered and why."""
        from metaas.client.kafka import KafkaWriteError, KafkaWriter

        writer = KafkaWriter(self.brokers, self.topic, delivery_timeout=DELIVERY_TIMEOUT_S)
        try:
            with writer:
                for batch in batches:
                    writer.write(batch)
        except KafkaWriteError as error:
            delivered = writer.delivered_samples
            produced = f"{delivered} samples were produced" if delivered else "nothing was produced"
            kind = Unavailable if error.is_retryable else Refused
            raise kind(f"Kafka at {self.brokers} (--kafka-brokers): {error}; {produced}") from error
        return (
            f"produced {writer.delivered_samples} samples in {series} series to Kafka topic "
            f"{self.topic} ({writer.delivered_messages} messages)"
        )


def kafka_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """--kafka-brokers and --kafka-topic, passed to the command as one
    ``kafka: KafkaTarget | None`` (None: write over gRPC)."""
    options = [
        click.option(
            "--kafka-brokers",
            type=Accepted(_BROKERS, "HOST:PORT[,HOST:PORT]"),
            help="Produce the samples to Kafka through these brokers, for metaas serve "
            "--kafka-brokers to consume, instead of writing them to --target.",
        ),
        click.option(
            "--kafka-topic",
            type=Accepted(_TOPIC, "TOPIC"),
            envvar=_TOPIC.env,
            default=_TOPIC.default,
            help=f"The topic to produce to, with --kafka-brokers. [env {_TOPIC.env}]",
        ),
    ]

    @functools.wraps(command)
    def with_kafka(*args: Any, kafka_brokers: str | None, kafka_topic: str, **kwargs: Any) -> Any:
        # The brokers have no environment variable, unlike the topic: a shell
        # set up for `metaas serve --kafka-brokers` must not turn every write
        # into a Kafka one.
        source = click.get_current_context().get_parameter_source("kafka_topic")
        if kafka_brokers is None and source is ParameterSource.COMMANDLINE:
            raise UsageError("--kafka-topic needs --kafka-brokers: give the brokers to produce to")
        kafka = None if kafka_brokers is None else KafkaTarget(kafka_brokers, kafka_topic)
        return command(*args, kafka=kafka, **kwargs)

    decorated: Callable[..., Any] = with_kafka
    for option in reversed(options):
        decorated = option(decorated)
    return decorated
